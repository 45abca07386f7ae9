"""Model comparison page: feature sets × (exact scan, LSH, the reference indexes) × (with, without distractors), and
the distance distributions of the paper's Section 4.1.

:func:`render` reads top to bottom: what to compare (:func:`choose_comparison`) → the results (table and charts) →
hubness → distance distributions → fine-tuned models → retrieval heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from cbir.app import plots, ui
from cbir.core.names import METRIC_LABELS, METRICS, score_name
from cbir.evaluation.comparison import Comparison, distance_summary, hubness_summary_table, large_feature_sets
from cbir.evaluation.evaluate import SINGLE_QUERY_SAMPLE
from cbir.evaluation.tuning import RECOMMEND_BUDGET_FRACTION, SWEEP_ON_REQUEST
from cbir.features import workspace
from cbir.features.finetune import finished_runs, retrieval_runs, training_figure
from cbir.indexes.registry import DEFAULT_TARGET_RECALL

RECOMMENDED, DEFAULT = "recommended", "default"  # the LSH setting compared
TRADEOFF, PER_CLASS = "Recall vs time", "Per-class mAP"  # the first and last chart
RESULT_COLUMNS = [
    "feature_set",
    "index",
    "distractors",
    "map",
    "recall",
    "mean_visited",
    "visited_fraction",
    "mean_score",
    "single_query_ms",
    "query_ms",
    "config",
    "n_indexed",
    "n_queries",
]


def page() -> StreamlitPage:
    """This page in app.py's navigation, at ``/Model_comparison``."""
    return st.Page(render, title="Model comparison", icon=":material/bar_chart:", url_path="Model_comparison")


@dataclass(frozen=True)
class Choice:
    """What the controls at the top of the page chose."""

    feature_sets: tuple[tuple[str, str, int], ...]  # (label, path, version) of each feature set compared
    metric: str
    lsh_setting: str  # RECOMMENDED or DEFAULT
    references: bool  # the reference indexes compared too


def render() -> None:
    ui.page_header(
        "Model comparison",
        "Every feature set (backbone × weights: ImageNet feature extraction, fine-tuned when present) searched "
        "with the exact scan, with LSH and with the reference indexes, with and without the distractors, on the "
        "validation queries.",
    )
    choice = choose_comparison(ui.require_feature_set_choices())
    st.subheader("Results")
    results = st.empty()  # the table as it grows: the exact scan and LSH first (seconds), then the references
    parts = ui.comparisons(choice.feature_sets, choice.metric, choice.lsh_setting == RECOMMENDED, choice.references)
    for comparison in parts:
        with results.container():
            show_table(comparison, choice)
    show_charts(comparison, choice)
    show_hubness(choice)
    show_distances(choice)
    show_finetuning()
    show_retrieval_heads()


def choose_comparison(choices: dict[str, str]) -> Choice:
    """The feature sets, metric, LSH setting and references to compare; the page stops when no set is selected."""
    top = st.columns([4, 3, 2, 2])
    selected = top[0].multiselect("Feature sets", list(choices), default=list(choices), key="compare-sets")
    metric = top[1].selectbox("Metric", METRICS, key="compare-metric", format_func=METRIC_LABELS.get)
    # a recommendation needs the background sweep, which takes hours at 1M objects: large sets start on the default
    large = large_feature_sets(workspace.with_versions(choices, selected))
    lsh_setting = top[2].radio(
        "LSH setting",
        [RECOMMENDED, DEFAULT],
        index=1 if large else 0,
        key="compare-lsh",
        help="recommended: best mAP of the background sweep visiting at most "
        f"{RECOMMEND_BUDGET_FRACTION:.0%} of the index (a long run on large feature sets: "
        f"{', '.join(large) or 'none here'}); default: g=7, h=2, data-driven w",
    )
    references = top[3].toggle(
        "References",
        value=not large,
        key="compare-references",
        help="The reference indexes: FAISS HNSW (and on sets up to a quarter million objects IVF-Flat, hnswlib, "
        "cross-polytope LSH) beside the scan and LSH; off at first on large sets, where HNSW's graph alone takes "
        f"minutes to build ({', '.join(large) or 'none here'})",
    )
    if not selected:
        st.info("Select at least one feature set.")
        st.stop()
    return Choice(workspace.with_versions(choices, selected), metric, lsh_setting, references)


def score_label(metric: str) -> str:
    return f"mean {score_name(metric)}".capitalize()


def show_table(comparison: Comparison, choice: Choice) -> None:
    """The comparison's table (no keyed widget: it is drawn again as the comparison grows)."""
    table = comparison.table
    score = score_label(choice.metric)
    sampled = table[table["n_all_queries"] > table["n_queries"]]
    if not sampled.empty:
        st.info(ui.sample_note(int(sampled["n_queries"].iloc[0]), int(sampled["n_all_queries"].max())))
    ui.table(
        table[RESULT_COLUMNS],
        {"mean_score": score},
        column_config={
            "Recall@10": st.column_config.NumberColumn(
                "Recall@10", format="%.3f", help="Share of the exact scan's top 10 that the index returns"
            ),
            "One at a time (ms)": st.column_config.NumberColumn(
                "One at a time (ms)",
                format="%.3f",
                help=f"Search time of one query searched alone, as on the Search page (one thread): the mean of up "
                f"to {SINGLE_QUERY_SAMPLE} validation queries after a short warm-up; the exact scan's measured the "
                "same way",
            ),
            "In a batch (ms)": st.column_config.NumberColumn(
                "In a batch (ms)",
                format="%.3f",
                help="Search time per query, the mean over one batch of all the validation queries (all cores); the "
                "exact scan's measured the same way",
            ),
            score: st.column_config.NumberColumn(score, format="%.3f"),
        },
    )


def show_charts(comparison: Comparison, choice: Choice) -> None:
    """The whole comparison's CSV, then its charts, one at a time (:func:`charts`)."""
    st.download_button("Download as CSV", comparison.table.to_csv(index=False), "comparison.csv", "text/csv")
    charts(comparison, choice)


@st.fragment
def charts(comparison: Comparison, choice: Choice) -> None:
    """The chart chosen above it: one drawn at a time (a browser on two busy cores took seconds for the six in tabs,
    all drawn at once). A fragment: choosing another chart, the time mode or the distractors of the per-class chart
    reruns this section only, so the page above is not redrawn and keeps its scroll position."""
    table = comparison.table
    score = score_label(choice.metric)
    bars = {
        "mAP@10": ("map", "mAP@10"),
        "Recall@10": ("recall", "Recall@10 against the exact scan"),
        "Visited objects": ("mean_visited", "Objects visited per query"),
        score: ("mean_score", f"{score} of the top-10"),
    }
    chosen = st.radio("Chart", [TRADEOFF, *bars, PER_CLASS], horizontal=True, key="compare-chart")
    if chosen == TRADEOFF:
        x = st.radio(
            "Time",
            list(plots.TIME_MODES),
            format_func=lambda column: f"per query, {plots.TIME_MODES[column]}",
            horizontal=True,
            key="compare-time-mode",
        )
        st.plotly_chart(ui.comparison_tradeoff_figure(table, x=x), width="stretch")
        st.caption(
            f"The exact scan, LSH at its {choice.lsh_setting} setting and the reference indexes (FAISS HNSW; up to "
            f"{SWEEP_ON_REQUEST:,} objects also FAISS IVF-Flat, hnswlib and cross-polytope LSH) at their default "
            "settings (cross-polytope LSH's bits, probes and shortlist chosen at fit for recall@10 "
            f"{DEFAULT_TARGET_RECALL:g}); the tuning page sweeps their settings. Times are per query, one query at "
            "a time (as the Search page searches) or in a batch of all the validation queries, every index's (the "
            "exact scan's too) measured in the same mode in one run (the setup's or the first server's, kept on "
            "disk). hnswlib does not count the objects it visits."
        )
    elif chosen == PER_CLASS:
        # its radio reruns this fragment only: the page keeps its height and scroll position (a full rerun redrew
        # the page above it and scrolled to the top)
        setting = st.radio("Distractors", ["with", "without"], horizontal=True, key="compare-per-class")
        st.plotly_chart(ui.comparison_per_class_figure(comparison.per_class, setting), width="stretch")
    else:
        st.plotly_chart(ui.comparison_figure(table, *bars[chosen]), width="stretch")


@st.fragment
def show_hubness(choice: Choice) -> None:
    """Hubness over the validation queries at once (no model needed); the out-of-domain photos' figures when kept on
    disk, else on request (they load TensorFlow and the model: seconds on a fresh server, which the page's first
    view does not wait for). A fragment: the toggle reruns this section only."""
    st.subheader("Hubness")
    st.caption(
        "How concentrated the exact scan's answers are: the share of all top-10 slots of the validation queries held "
        "by the 1 % most frequent answers (about 1 % without hubs), the skewness of how often each image is "
        "returned, and, for a few out-of-domain photos (a cat, coffee, an astronaut, a rocket), the share of their "
        "answers that are those hubs and the share of distinct answers. Blank or near-empty images make hubs."
    )
    hubness = ui.hubness_analyses(choice.feature_sets, choice.metric)
    if not ui.photos_measured(hubness) and st.toggle(
        "Out-of-domain photos",
        key="compare-photos",
        help="Embed the four sample photos with each feature set's model and measure their answers (loads the "
        "model: a few seconds the first time; kept on disk afterwards)",
    ):
        hubness = ui.hubness_analyses(choice.feature_sets, choice.metric, photos=True)
    ui.table(
        hubness_summary_table(hubness),
        {
            "hub_share": "Top-10 slots held by the 1 % hubs (%)",
            "k_skewness": "N10 skewness",
            "ood_hub_share": "Photo answers that are hubs (%)",
            "ood_distinct": "Distinct photo answers (%)",
        },
        percent=("hub_share", "ood_hub_share", "ood_distinct"),
        column_config={"N10 skewness": st.column_config.NumberColumn("N10 skewness", format="%.2f")},
    )
    hub_set = st.selectbox("Most frequent answers of", list(hubness), key="compare-hubs")
    hub_cols = st.columns(5)
    for col, hub in zip(hub_cols, hubness[hub_set].hubs.head(5).itertuples(), strict=False):
        col.image(ui.tile(hub.path), width="stretch")
        col.caption(f"{hub.label} · {hub.count} queries ({hub.share:.1%})  \n{hub.relpath}")


def show_distances(choice: Choice) -> None:
    st.subheader("Distance distributions (Section 4.1)")
    st.caption(
        "Between the index-split images of each feature set: the scale of the distances explains why w must "
        "be chosen per backbone."
    )
    analyses = ui.distance_analyses(choice.feature_sets)
    samples = {name: analysis.sample for name, analysis in analyses.items()}
    hist = st.columns(2)
    hist[0].plotly_chart(ui.distance_histograms_figure(samples, "euclidean"), width="stretch")
    hist[1].plotly_chart(ui.distance_histograms_figure(samples, "cosine"), width="stretch")
    ui.table(distance_summary(analyses))


def show_finetuning() -> None:
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


def show_retrieval_heads() -> None:
    st.subheader("Retrieval heads")
    heads = retrieval_runs()
    if heads.empty:
        st.info(
            "No retrieval head yet. `python -m cbir finetune --loss supcon` trains a 256-d head with a supervised "
            "contrastive loss on the index split's labels (frozen backbone, minutes on a CPU); its feature set then "
            "appears in the tables above beside the paper's."
        )
        return
    st.caption(
        "Heads trained for retrieval on the labels of the index split only (never the queries, never the "
        "distractors); their feature sets are scored in the tables above like every other."
    )
    st.dataframe(
        heads,
        width="stretch",
        hide_index=True,
        column_config={"train s": st.column_config.NumberColumn("train s", format="%.0f")},
    )
