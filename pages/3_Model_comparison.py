"""Model comparison page: feature sets × (exact scan, LSH) × (with, without distractors), and the distance
distributions of the paper's Section 4.1."""

from __future__ import annotations

import streamlit as st

from cbir import engine, ui
from cbir.finetune import finished_runs, training_figure

# the same cached functions as the Index tuning page: evaluations and sweeps done there are reused here
evaluate = st.cache_data(show_spinner=False, max_entries=1024)(engine.evaluate_for)
sweep_configs = st.cache_data(show_spinner=False)(engine.sweep_configs_for)
comparison_configs = st.cache_data(show_spinner=False)(engine.comparison_configs_for)
distance_analysis = st.cache_data(show_spinner="Sampling pairwise distances…")(engine.distance_analysis_for)

ui.page_header(
    "pages/3_Model_comparison.py",
    "Model comparison",
    "Every feature set (backbone × weights: ImageNet feature extraction, fine-tuned when present) searched "
    "with the exact scan and with LSH, with and without the distractors, on the validation queries.",
)
choices = ui.require_feature_set_choices()

top = st.columns([3, 1, 1])
selected = top[0].multiselect("Feature sets", list(choices), default=list(choices), key="compare-sets")
metric = top[1].selectbox("Metric", engine.METRICS, key="compare-metric", format_func=engine.METRIC_NAMES.get)
lsh_choice = top[2].radio(
    "LSH setting",
    ["recommended", "default"],
    key="compare-lsh",
    help="recommended: best mAP of the background sweep visiting at most "
    f"{engine.RECOMMEND_BUDGET_FRACTION:.0%} of the index; default: g=7, h=2, data-driven w",
)
if not selected:
    st.info("Select at least one feature set.")
    st.stop()

bar = st.progress(0.0, text="Evaluating…")


def run(configs: list[engine.IndexConfig], path: str, version: int, with_distractors: bool, text: str) -> list:
    results = []
    for done, config_ in enumerate(configs, start=1):
        results.append(evaluate(path, version, config_, with_distractors))
        bar.progress(done / len(configs), text=f"{text}: {done} / {len(configs)}")
    return results


items = []
for label in selected:
    path = choices[label]
    version = engine.file_version(path)
    sweep = None
    if lsh_choice == "recommended":  # the background sweep of the tuning page (cached, shared)
        grid = sweep_configs(path, version, metric)
        sweep = engine.sweep_table(grid, run(grid, path, version, True, f"Sweep of {label}"))
    items.append((label, path, version, tuple(comparison_configs(path, version, metric, sweep))))
jobs = engine.comparison_jobs(items)
results = []
for done, job in enumerate(jobs, start=1):
    results.append(evaluate(job.path, job.version, job.config, job.with_distractors))
    bar.progress(done / len(jobs), text=f"Comparison: {done} / {len(jobs)}")
bar.empty()
comparison = engine.comparison_table(jobs, results)
table = comparison.table

score = "mean distance" if metric == "euclidean" else "mean similarity"
st.subheader("Results")
st.dataframe(
    table,
    width="stretch",
    hide_index=True,
    column_order=[
        "feature_set",
        "index",
        "distractors",
        "map",
        "mean_visited",
        "visited_fraction",
        "mean_score",
        "query_ms",
        "config",
        "n_indexed",
        "n_queries",
    ],
    column_config={
        "feature_set": "feature set",
        "map": st.column_config.NumberColumn("mAP@10", format="%.3f"),
        "mean_score": st.column_config.NumberColumn(score, format="%.3f"),
        "mean_visited": st.column_config.NumberColumn("visited / query", format="%.1f"),
        "visited_fraction": st.column_config.NumberColumn("share visited", format="percent"),
        "query_ms": st.column_config.NumberColumn("ms / query", format="%.3f"),
    },
)
st.download_button("Download as CSV", table.to_csv(index=False), "comparison.csv", "text/csv")

tabs = st.tabs(["mAP@10", "Visited objects", score.capitalize(), "Per-class mAP"])
tabs[0].plotly_chart(engine.fig_comparison(table, "map", "mAP@10"), width="stretch")
tabs[1].plotly_chart(engine.fig_comparison(table, "mean_visited", "Objects visited per query"), width="stretch")
tabs[2].plotly_chart(engine.fig_comparison(table, "mean_score", f"{score.capitalize()} of the top-10"), width="stretch")
with tabs[3]:
    setting = st.radio("Distractors", ["with", "without"], horizontal=True, key="compare-per-class")
    st.plotly_chart(engine.fig_comparison_per_class(comparison.per_class, setting), width="stretch")

st.subheader("Distance distributions (Section 4.1)")
st.caption(
    "Between the index-split images of each feature set: the scale of the distances explains why w must "
    "be chosen per backbone."
)
analyses = {label: distance_analysis(choices[label], engine.file_version(choices[label])) for label in selected}
hist = st.columns(2)
hist[0].plotly_chart(
    engine.fig_distance_histograms({k: a.sample for k, a in analyses.items()}, "euclidean"), width="stretch"
)
hist[1].plotly_chart(
    engine.fig_distance_histograms({k: a.sample for k, a in analyses.items()}, "cosine"), width="stretch"
)
st.dataframe(engine.distance_summary(analyses), width="stretch", hide_index=True)

st.subheader("Fine-tuning (Section 5)")
runs = finished_runs()
if not runs:
    st.info(
        "No fine-tuned model yet. `python -m cbir finetune --backbone efficientnet_lite0 --model 1` trains one; "
        "`python -m cbir extract --weights <run>/model1-dense256.keras` then adds its features to this page."
    )
for run_ in runs:
    m = run_.metrics
    with st.expander(run_.label, expanded=run_ is runs[0]):
        cols = st.columns(4)
        cols[0].metric("Validation accuracy", f"{m['test_accuracy']:.3f}")
        cols[1].metric("Validation loss", f"{m['test_loss']:.3f}")
        cols[2].metric("Epochs (best)", f"{m['epochs_done']} ({m['best_epoch']})")
        cols[3].metric("Seconds / epoch", f"{m['seconds_per_epoch']:.0f}")
        st.plotly_chart(training_figure(run_.history), width="stretch")
        st.dataframe(run_.report, width="stretch")
