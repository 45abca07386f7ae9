"""Index tuning page: move g / h / w / probes and see the LSH index rebuilt and evaluated on the validation queries,
placed over a background sweep and its Pareto frontiers (mAP and recall against visited objects and time per query),
beside the reference indexes (HNSW, IVF-Flat, hnswlib, cross-polytope LSH).

:func:`render` reads top to bottom: the settings (:func:`choose_setting`) → the setting evaluated beside the exact
scan (:func:`evaluate_setting`, :func:`show_summary`) → where it sits in the background sweep (:func:`show_sweep`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.navigation.page import StreamlitPage

from cbir.app import formats, plots, ui
from cbir.core.names import METRIC_LABELS, METRICS
from cbir.evaluation.evaluate import SINGLE_QUERY_SAMPLE, EvaluationResult
from cbir.evaluation.tuning import (
    DEFAULT_SWEEP_SIZE,
    RECOMMEND_BUDGET_FRACTION,
    SWEEP_ON_REQUEST,
    nearest,
    recommended_config,
    width_range,
)
from cbir.indexes.registry import DEFAULT_TARGET_RECALL, IndexConfig


def page() -> StreamlitPage:
    """This page in app.py's navigation, at ``/Index_tuning``."""
    return st.Page(render, title="Index tuning", icon=":material/tune:", url_path="Index_tuning")


@dataclass(frozen=True)
class Setting:
    """What the controls at the top of the page chose."""

    config: IndexConfig  # the LSH setting of the sliders
    with_distractors: bool
    w_key: str  # the w slider's key (one per feature set and metric: its range follows their distances)
    w_bounds: tuple[float, float]  # the w slider's range


def render() -> None:
    starting = st.empty()  # the bar stands until the exact scan's own bar takes over: the page never stands still
    ui.page_header(
        "Index tuning",
        "Every change rebuilds the numba E2LSH index on the index split and runs the validation queries "
        "(role *query*; a fixed random sample of them when there are many): mAP@10, recall@10 against the exact "
        "scan, objects visited per query and latency.",
    )
    label, path, version = ui.chosen_feature_set()
    starting.progress(0.6, text=f"Opening the feature set {label}…")
    setting = choose_setting(label, path, version, starting)
    result = evaluate_setting(path, version, setting)
    st.subheader("Where this setting sits")
    show_sweep(path, version, setting, result)


def choose_setting(label: str, path: str, version: int, starting: DeltaGenerator) -> Setting:
    """The metric, the distractors toggle and four sliders, which start at the feature set's defaults (computed
    while ``starting``'s bar stands, then removed)."""
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
    return Setting(IndexConfig("lsh", metric, g, h, w, probes), with_distractors, w_key, (low, high))


def evaluate_setting(path: str, version: int, setting: Setting) -> EvaluationResult:
    """The setting evaluated on the validation queries beside the exact scan: the per-class figure, with the
    summary above it."""
    config, with_distractors = setting.config, setting.with_distractors
    # the exact scan first: its answers are computed once per feature set (and kept on disk), so its per-class figure
    # shows at once while the LSH setting is built and evaluated below it
    scan = ui.evaluate(path, version, IndexConfig("scan", config.metric), with_distractors)
    summary = st.container()
    st.subheader("mAP@10 per class")
    per_class_figure = st.empty()
    per_class_figure.plotly_chart(ui.per_class_figure(None, scan.per_class), width="stretch")
    result = ui.evaluate(path, version, config, with_distractors)
    per_class_figure.plotly_chart(ui.per_class_figure(result.per_class, scan.per_class), width="stretch")
    show_summary(summary, scan, result, with_distractors)
    return result


def show_summary(
    summary: DeltaGenerator, scan: EvaluationResult, result: EvaluationResult, with_distractors: bool
) -> None:
    """The setting's mAP, recall, visited objects and times against the exact scan's."""
    m = summary.columns(6)
    m[0].metric(
        "mAP@10", f"{result.map:.3f}", f"{result.map - scan.map:+.3f} vs scan", help=f"Exact scan: {scan.map:.3f}"
    )
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
        help=f"Images compared per query, the mean over the queries ({result.mean_visited:,.1f}; the scan compares "
        f"all {scan.mean_visited:,.0f})",
    )
    m[3].metric("Share visited", formats.share(result.visited_fraction), help="Visited images / indexed images")
    one, batch = (time_metric(result, scan, column) for column in plots.TIME_MODES)
    m[4].metric(
        "One query",
        **one,
        help=f"One query searched alone, as on the Search page (numba's serial kernels, BLAS on one thread): the mean "
        f"of up to {SINGLE_QUERY_SAMPLE} validation queries searched one at a time after a short warm-up, features "
        f"not included; the exact scan's ({formats.duration(scan.single_query_ms / 1000)}) measured the same way in "
        "this run",
    )
    m[5].metric(
        "Per query in a batch",
        **batch,
        help=f"The mean per query over one batch of all {result.n_queries:,} validation queries (one search call on "
        f"all cores: throughput); the exact scan's ({formats.duration(scan.query_ms / 1000)}) measured the same way "
        "in this run",
    )
    summary.caption(
        f"{result.n_queries:,} validation queries against {result.n_indexed:,} indexed images (the collection's "
        "searchable images less the queries" + ("" if with_distractors else " and the distractors") + ") · "
        f"mean {result.score_name} of the results {result.mean_score:.3f} (scan {scan.mean_score:.3f}) · index "
        f"built in {formats.duration(result.fit_seconds)} · times per query one at a time and in a batch, each "
        "against the exact scan timed the same way in this run"
    )
    if result.sampled:
        summary.info(ui.sample_note(result.n_queries, result.n_all_queries))


def time_metric(result: EvaluationResult, scan: EvaluationResult, column: str) -> dict[str, str]:
    """``value``, ``delta`` and ``delta_color`` of a time metric (``column``: ``single_query_ms`` or ``query_ms``):
    the setting's time and how many times faster (green) or slower (red) than the exact scan in the same mode."""
    ms, scan_ms = float(getattr(result, column)), float(getattr(scan, column))
    speedup = scan_ms / ms if ms > 0 else float("nan")
    if not speedup == speedup:  # not measured
        return {"value": formats.duration(ms / 1000), "delta": None, "delta_color": "off"}
    if speedup >= 1:
        return {"value": formats.duration(ms / 1000), "delta": f"{speedup:.1f}× faster than scan"}
    return {
        "value": formats.duration(ms / 1000),
        "delta": f"{1 / speedup:.1f}× slower than scan",
        "delta_color": "inverse",
    }


# ----------------------------------------------------------------------------------------------------------
# The background sweep
# ----------------------------------------------------------------------------------------------------------


def show_sweep(path: str, version: int, setting: Setting, result: EvaluationResult) -> None:
    """The sweep's charts with the setting as a star, its recommendation and tables; on large feature sets the sweep
    runs on request (a button)."""
    config = setting.config
    sweep_key = f"tune-sweep-{path}-{version}"
    if result.n_indexed > SWEEP_ON_REQUEST and not st.session_state.get(sweep_key):
        st.info(
            f"The background sweep evaluates {DEFAULT_SWEEP_SIZE:,} settings (LSH grid, exact scan, reference "
            f"indexes: HNSW, IVF-Flat, hnswlib, cross-polytope LSH): at {result.n_indexed:,} indexed objects it takes "
            "a long while (an HNSW graph of 1M objects alone takes ~13 minutes on two cores), so it runs on request; "
            "its progress shows here."
        )
        if not st.button("Run the background sweep", key="tune-run-sweep"):
            st.stop()
        st.session_state[sweep_key] = True
    table = ui.sweep(path, version, config.metric, setting.with_distractors)
    st.caption(sweep_caption(table))
    sweep_charts(table, result.row())
    recommended = recommended_config(table, result.n_indexed)
    if recommended is not None:
        left, right = st.columns([3, 1])
        left.info(
            f"Best mAP among the sweep settings that visit at most "
            f"{RECOMMEND_BUDGET_FRACTION:.0%} of the index: **{recommended.label}**"
        )
        right.button("Use it", on_click=use_recommended, args=(recommended, setting), key="tune-use-recommended")
    sweep_details(table)

    trends(table, config)


# the horizontal axis of the sweep's two charts: a time in either mode, or the objects visited
CHART_AXES = {
    "single_query_ms": "Time, one query at a time",
    "query_ms": "Time per query in a batch",
    "mean_visited": "Objects visited",
}


@st.fragment
def sweep_charts(table: pd.DataFrame, current: dict) -> None:
    """mAP and recall against the chosen axis (one query at a time by default: what a user of the Search page
    feels); a fragment: switching the axis redraws these two charts only."""
    x = st.radio(
        "Horizontal axis",
        list(CHART_AXES),
        format_func=CHART_AXES.get,
        horizontal=True,
        key="tune-axis",
        help=f"One query at a time: each setting's mean over up to {SINGLE_QUERY_SAMPLE} validation queries searched "
        "alone, as the Search page does (one thread); in a batch: the mean per query of one search call over all "
        "the validation queries (all cores). The exact scan is timed in the same mode as every other point.",
    )
    charts = st.columns(2)
    charts[0].plotly_chart(ui.sweep_figure(table, current, x=x), width="stretch")
    charts[1].plotly_chart(ui.sweep_figure(table, current, y="recall", x=x), width="stretch")


@st.fragment
def sweep_details(table: pd.DataFrame) -> None:
    """The sweep's table, drawn on request (a table fewer to draw on every change of the page)."""
    if st.toggle("Sweep table (Pareto-optimal settings first)", key="tune-table"):
        ui.table(table.sort_values(["pareto", "map"], ascending=[False, False]))


@st.fragment
def trends(table: pd.DataFrame, config: IndexConfig) -> None:
    """The paper's Section 6 trends, drawn on request (three charts fewer to draw on every change of the page)."""
    if not st.toggle(
        "Hyper-parameter trends (the paper's Section 6), at the sweep point nearest to the sliders",
        key="tune-trends",
    ):
        return
    lsh_rows = table[table["index"] == "lsh"]
    st.plotly_chart(
        plots.fig_map_vs_h(table, g=nearest(lsh_rows["n_tables"].unique(), config.n_tables)), width="stretch"
    )
    st.plotly_chart(
        plots.fig_map_visited_vs_g(table, h=nearest(lsh_rows["n_projections"].unique(), config.n_projections)),
        width="stretch",
    )
    st.plotly_chart(plots.fig_map_vs_w(table), width="stretch")


def sweep_caption(table: pd.DataFrame) -> str:
    return (
        "Grey: the E2LSH grid; red: its Pareto frontier; square: the exact scan; star: the sliders' setting. "
        "Reference points, left out of the frontier, with their settings in the legend (each point's on hover): HNSW "
        "(faiss, M=32) and hnswlib (M=32) at several ef, IVF-Flat (faiss, about 4·√n lists) at several nprobe, cross-"
        "polytope LSH (PCA-48, L=8, uint8 codes of 128 PCA axes scored in bucket order): its bits, probes and "
        f"shortlist chosen at fit for recall@10 {DEFAULT_TARGET_RECALL:g} on held-out rows, then 10 bits and a "
        "shortlist of 30 at several probes. hnswlib does not count the objects it visits: it shows on the time charts"
        " only. Times are per query, one at a time or in a batch (the axis says which), on this machine (noisy when "
        "it is busy), all "
        "the sweep's measured in one run"
        + (
            f" ({table['computed'].iloc[0]:%Y-%m-%d %H:%M} UTC, kept until the features are extracted again: images "
            "added or removed since move its figures by about their share)"
            if "computed" in table
            else ""
        )
        + "; the star's now."
    )


def use_recommended(recommended: IndexConfig, setting: Setting) -> None:
    """The "Use it" button: the sliders moved to the recommended setting (w kept within its slider's range)."""
    low, high = setting.w_bounds
    st.session_state["tune-g"] = recommended.n_tables
    st.session_state["tune-h"] = recommended.n_projections
    st.session_state[setting.w_key] = min(max(recommended.bucket_width, low), high)
    st.session_state["tune-probes"] = recommended.probes
