"""Index tuning page: move g / h / w / probes and see the LSH index rebuilt and evaluated on the validation queries,
placed over a background sweep and its Pareto frontiers (mAP and recall against visited objects and time per query),
beside the reference indexes (HNSW, IVF-Flat, hnswlib, cross-polytope LSH)."""

from __future__ import annotations

import streamlit as st

# A server's first visitor waits here for the modules (a second or more on two busy cores): the bar says what loads,
# each step under a second, until the exact scan's own bar takes over (the page never stands still without one).
starting = st.empty()
starting.progress(0.0, text="Loading pandas and plotly…")
from cbir.app import plots  # noqa: E402

starting.progress(0.2, text="Loading the indexes (numba kernels)…")
from cbir.app import formats, ui  # noqa: E402
from cbir.core.names import METRIC_LABELS, METRICS  # noqa: E402
from cbir.evaluation.tuning import (  # noqa: E402
    DEFAULT_SWEEP_SIZE,
    RECOMMEND_BUDGET_FRACTION,
    SWEEP_ON_REQUEST,
    nearest,
    recommended_config,
    width_range,
)
from cbir.indexes.registry import IndexConfig  # noqa: E402

starting.progress(0.4, text="Opening the page…")
ui.page_header(
    "pages/2_Index_tuning.py",
    "Index tuning",
    "Every change rebuilds the numba E2LSH index on the index split and runs the validation queries "
    "(role *query*; a fixed random sample of them when there are many): mAP@10, recall@10 against the exact scan, "
    "objects visited per query and latency.",
)
label, path, version = ui.chosen_feature_set()
starting.progress(0.6, text=f"Opening the feature set {label}…")

top = st.columns([2, 2, 3])
metric = top[0].selectbox("Metric", METRICS, key="tune-metric", format_func=METRIC_LABELS.get)
with_distractors = top[1].toggle(
    "Index the distractors",
    value=True,
    key="tune-distractors",
    help="Unlabelled images are indexed too: they are never relevant, like MIRFlickr in the paper",
)
top[2].caption(f"Feature set: {label}")

defaults = ui.lsh_defaults(path, version, metric)
starting.empty()
low, high, step = width_range(defaults.bucket_width)
w_key = f"tune-w-{path}-{metric}"
# defaults go through the session state (not the sliders' value=) so that "Use it" below can move the sliders
for key, value in {
    "tune-g": defaults.n_tables,
    "tune-h": defaults.n_projections,
    w_key: defaults.bucket_width,
    "tune-probes": 0,
}.items():
    st.session_state.setdefault(key, value)
sliders = st.columns(4)
g = sliders[0].slider(
    "g — hash tables", 1, 20, key="tune-g", help="More tables: more candidates, higher recall, more objects visited"
)
h = sliders[1].slider(
    "h — projections per table", 1, 16, key="tune-h", help="More projections: smaller buckets, fewer candidates"
)
w = sliders[2].slider(
    "w — bucket width",
    low,
    high,
    step=step,
    key=w_key,
    help=f"Default {defaults.bucket_width:g}: a quarter of the median distance between images",
)
probes = sliders[3].slider(
    "probes — extra buckets per table",
    0,
    20,
    key="tune-probes",
    help="Multi-probe LSH: also visit the nearest neighbouring buckets of each table",
)

# the exact scan first: its answers are computed once per feature set (and kept on disk), so its per-class figure
# shows at once while the LSH setting is built and evaluated below it
scan = ui.evaluate(path, version, IndexConfig("scan", metric), with_distractors)
summary = st.container()
st.subheader("mAP@10 per class")
per_class_figure = st.empty()
per_class_figure.plotly_chart(plots.fig_per_class(None, scan.per_class), width="stretch")
result = ui.evaluate(path, version, IndexConfig("lsh", metric, g, h, w, probes), with_distractors)
per_class_figure.plotly_chart(plots.fig_per_class(result.per_class, scan.per_class), width="stretch")

m = summary.columns(6)
m[0].metric("mAP@10", f"{result.map:.3f}", f"{result.map - scan.map:+.3f} vs scan", help=f"Exact scan: {scan.map:.3f}")
m[1].metric(
    "Recall@10",
    f"{result.recall:.3f}",
    help="Share of the exact scan's ten nearest images that the index returns (the exact scan has 1.000)",
)
# the costs: lower is better, so a rise over the exact scan shows in red
m[2].metric(
    "Visited / query",
    formats.count(result.mean_visited),
    f"{result.mean_visited - scan.mean_visited:+,.0f} vs scan",
    delta_color="inverse",
    help=f"Images compared per query, the mean over the queries ({result.mean_visited:,.1f}; the scan compares all "
    f"{scan.mean_visited:,.0f})",
)
m[3].metric("Share visited", formats.share(result.visited_fraction), help="Visited images / indexed images")
m[4].metric(
    "Time / query",
    formats.duration(result.query_ms / 1000),
    f"{result.query_ms - scan.query_ms:+.3f} ms vs scan",
    delta_color="inverse",
    help=f"The mean per query over the batch of {result.n_queries:,} validation queries, features not included; "
    f"the exact scan's ({formats.duration(scan.query_ms / 1000)}) is measured the same way in this run",
)
m[5].metric("Index build", formats.duration(result.fit_seconds), help="Fitting the index on the indexed images")
summary.caption(
    f"{result.n_queries:,} validation queries against {result.n_indexed:,} indexed images (the collection's "
    "searchable images less the queries" + ("" if with_distractors else " and the distractors") + ") · "
    f"mean {result.score_name} of the results {result.mean_score:.3f} (scan {scan.mean_score:.3f}) · times per "
    "query in a batch, the scan's measured in this run like the setting's"
)
if result.sampled:
    summary.info(ui.sample_note(result.n_queries, result.n_all_queries))

st.subheader("Where this setting sits")
sweep_key = f"tune-sweep-{path}-{version}"
if result.n_indexed > SWEEP_ON_REQUEST and not st.session_state.get(sweep_key):
    st.info(
        f"The background sweep evaluates {DEFAULT_SWEEP_SIZE:,} settings (LSH grid, exact scan, reference indexes: "
        f"HNSW, IVF-Flat, hnswlib, cross-polytope LSH): at {result.n_indexed:,} indexed objects it takes a long while "
        "(an HNSW graph of 1M objects alone takes ~13 minutes on two cores), so it runs on request; its progress "
        "shows here."
    )
    if not st.button("Run the background sweep", key="tune-run-sweep"):
        st.stop()
    st.session_state[sweep_key] = True
table = ui.sweep(path, version, metric, with_distractors)
st.caption(
    "Grey: the E2LSH grid; red: its Pareto frontier; square: the exact scan; star: the sliders' setting. Reference "
    "points, left out of the frontier, with their settings in the legend (each point's on hover): HNSW "
    "(faiss, M=32) and hnswlib (M=32) at several ef, IVF-Flat (faiss, about 4·√n lists) at several nprobe, "
    "cross-polytope LSH (PCA-48, L=8, 10 bits, a shortlist of 30 scored on uint8 codes of 128 PCA axes) at several "
    "probes. hnswlib does not count the objects it visits: it shows on the time charts only. Times are per query "
    "over the validation batch on this machine (noisy when it is busy), all the sweep's measured in one run"
    + (
        f" ({table['computed'].iloc[0]:%Y-%m-%d %H:%M} UTC, kept until the features are extracted again: images "
        "added or removed since move its figures by about their share)"
        if "computed" in table
        else ""
    )
    + "; the star's now."
)
for x in ("mean_visited", "query_ms"):
    charts = st.columns(2)
    charts[0].plotly_chart(plots.fig_map_vs_visited(table, result.row(), x=x), width="stretch")
    charts[1].plotly_chart(plots.fig_map_vs_visited(table, result.row(), y="recall", x=x), width="stretch")
recommended = recommended_config(table, result.n_indexed)


def use_recommended() -> None:
    assert recommended is not None
    st.session_state["tune-g"] = recommended.n_tables
    st.session_state["tune-h"] = recommended.n_projections
    st.session_state[w_key] = min(max(recommended.bucket_width, low), high)
    st.session_state["tune-probes"] = recommended.probes


if recommended is not None:
    left, right = st.columns([3, 1])
    left.info(
        f"Best mAP among the sweep settings that visit at most "
        f"{RECOMMEND_BUDGET_FRACTION:.0%} of the index: **{recommended.label}**"
    )
    right.button("Use it", on_click=use_recommended, key="tune-use-recommended")
with st.expander("Sweep table (Pareto-optimal settings first)"):
    ui.table(table.sort_values(["pareto", "map"], ascending=[False, False]))


with st.expander("Hyper-parameter trends (the paper's Section 6), at the sweep point nearest to the sliders"):
    lsh_rows = table[table["index"] == "lsh"]
    st.plotly_chart(plots.fig_map_vs_h(table, g=nearest(lsh_rows["n_tables"].unique(), g)), width="stretch")
    st.plotly_chart(
        plots.fig_map_visited_vs_g(table, h=nearest(lsh_rows["n_projections"].unique(), h)), width="stretch"
    )
    st.plotly_chart(plots.fig_map_vs_w(table), width="stretch")
