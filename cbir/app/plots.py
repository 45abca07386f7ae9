"""Every plotly figure of the project: sweep results (the paper's Figures 12-15, mAP and recall against visited
objects), per-class mAP, the collection counts, the model comparison and the distance histograms.

Every function takes the DataFrames produced by :func:`cbir.evaluation.evaluate.sweep`, ``EvaluationResult.per_class``,
:mod:`cbir.evaluation.comparison` or :mod:`cbir.features.workspace` and returns a ``go.Figure``; nothing here computes
results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cbir.core.names import INDEX_LABELS, METRIC_LABELS
from cbir.evaluation.sweep import pareto_frontier
from cbir.indexes.registry import DEFAULT_K

# what a figure calls a result column: in a title, on an axis
_NAMES = {"map": "mAP", "recall": "Recall"}
MAP_AXIS = f"mAP@{DEFAULT_K}"
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
_DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
_AXIS_TITLES = {"map": f"mAP@{DEFAULT_K}", "recall": f"recall@{DEFAULT_K} vs exact scan"}


def log_ticks(values: Any) -> tuple[list[float], list[str]]:
    """Ticks for a log axis over ``values`` (positive numbers): the 1-2-5 steps of every decade they span, and the
    first below and above them, each written in full (``0.2``, ``0.5``, ``1``, ``2``). Plotly's own labels over a
    decade or so write only the leading digit of the minor ticks ("2 3 4 … 9 1 2"), which reads as nonsense."""
    positive = np.asarray(values, dtype=np.float64)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if positive.size == 0:
        return [], []
    low, high = positive.min(), positive.max()
    steps = [
        m * 10.0**e
        for e in range(int(np.floor(np.log10(low))) - 1, int(np.ceil(np.log10(high))) + 1)
        for m in (1, 2, 5)
    ]
    below = max((t for t in steps if t <= low), default=steps[0])
    above = min((t for t in steps if t >= high), default=steps[-1])
    ticks = [t for t in steps if below <= t <= above]
    return ticks, [f"{t:g}" for t in ticks]


def _require(df: pd.DataFrame, columns: list[str]) -> None:
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing} (has {list(df.columns)})")


def _lsh_rows(sweep_df: pd.DataFrame) -> pd.DataFrame:
    """LSH configurations only; with several probe settings, the line plots use plain LSH (fewest probes)."""
    rows = sweep_df[sweep_df["index"] == "lsh"] if "index" in sweep_df.columns else sweep_df
    if "probes" in rows.columns and rows["probes"].notna().any():
        rows = rows[rows["probes"] == rows["probes"].min()]
    return rows


# one colour per index kind on every figure that shows several (sweep charts, comparison)
_INDEX_COLORS = {
    "scan": "#2c3e50",
    "lsh": "#e74c3c",
    "hnsw": "#2980b9",
    "ivf_flat": "#27ae60",
    "hnswlib": "#8e44ad",
    "cross_polytope": "#e67e22",
}
# the search-time setting of each reference kind: its sweep column and what a figure calls it
_REFERENCE_KNOBS = {
    "hnsw": ("ef_search", "ef"),
    "hnswlib": ("ef_search", "ef"),
    "ivf_flat": ("n_probe", "nprobe"),
    "cross_polytope": ("probes", "T"),
}
# the colours, keyed by the names the comparison table gives the indexes
_LABEL_COLORS = {INDEX_LABELS[kind]: color for kind, color in _INDEX_COLORS.items()}
# the reference points (cbir.core.names.REFERENCE_KINDS) on the sweep figures: one dotted line each, in these colours
# and
# marker symbols; no text beside the markers (the lines of HNSW and hnswlib end together at the top right, where
# their labels overlapped): the range of settings is in the legend, each point's on hover
_REFERENCE_STYLES = {
    "hnsw": (_INDEX_COLORS["hnsw"], "diamond"),
    "ivf_flat": (_INDEX_COLORS["ivf_flat"], "triangle-up"),
    "hnswlib": (_INDEX_COLORS["hnswlib"], "x"),
    "cross_polytope": (_INDEX_COLORS["cross_polytope"], "triangle-down"),
}
# what a figure calls an x column: title, axis
_X_NAMES = {
    "mean_visited": ("objects visited per query", "mean visited objects per query"),
    "query_ms": ("time per query in a batch", "ms per query (validation queries, one batch, all cores)"),
    "single_query_ms": ("time per query, one at a time", "ms per query (validation queries one at a time)"),
}
# the two timing modes of a results row (cbir.evaluation.evaluate.EvaluationResult): column -> hover and axis words
TIME_MODES = {"single_query_ms": "one at a time", "query_ms": "in a batch"}


def _setting_text(row: pd.Series) -> str:
    """The search-time setting of a reference row, e.g. "ef 64" ("" for other rows)."""
    kind = row.get("index")
    if kind not in _REFERENCE_KNOBS:
        return ""
    column, name = _REFERENCE_KNOBS[kind]
    return f"{name} {row[column]:.0f}"


def _settings_range(kind: str, rows: pd.DataFrame) -> str:
    """The search-time settings of a reference kind's rows, e.g. "ef 16–256" (one value: "nprobe 4")."""
    column, name = _REFERENCE_KNOBS[kind]
    low, high = rows[column].astype(float).min(), rows[column].astype(float).max()
    return f"{name} {low:.0f}" if low == high else f"{name} {low:.0f}–{high:.0f}"


def _hover_text(rows: pd.DataFrame) -> list[str]:
    def one(row: pd.Series) -> str:
        figures = f"mAP {row['map']:.3f}"
        if "recall" in row and pd.notna(row["recall"]):
            figures += f"<br>recall {row['recall']:.3f}"
        visited = "not counted" if pd.isna(row["mean_visited"]) else f"{row['mean_visited']:.1f}"
        figures += f"<br>visited {visited}"
        for column, mode in TIME_MODES.items():
            if column in row and pd.notna(row[column]):
                figures += f"<br>{row[column]:.3f} ms / query {mode}"
        kind = row.get("index")
        if kind == "scan":
            return f"exact scan<br>{figures}"
        if kind in _REFERENCE_STYLES:
            has_label = "label" in row and isinstance(row["label"], str)  # IndexConfig.label: with the setting
            name = row["label"] if has_label else f"{INDEX_LABELS[kind]} {_setting_text(row)}"
            return f"{name}<br>{figures}"
        return (
            f"g={row['n_tables']:.0f} h={row['n_projections']:.0f} w={row['bucket_width']:.3g}"
            f" probes={row.get('probes', 0):.0f}<br>{figures}"
        )

    return [one(row) for _, row in rows.iterrows()]


def _sweep_points(
    rows: pd.DataFrame, mode: str, name: str, y: str = "map", x: str = "mean_visited", **style: Any
) -> go.Scatter:
    """Rows of a sweep as one trace (x: ``x``, y: ``y``) with the configuration as hover text."""
    return go.Scatter(
        x=rows[x],
        y=rows[y],
        mode=mode,
        name=name,
        text=_hover_text(rows),
        hoverinfo="text",
        **style,
    )


def _pick(rows: pd.DataFrame, column: str, value: float, label: str) -> pd.DataFrame:
    picked = rows[np.isclose(rows[column].astype(float), float(value))]
    if picked.empty:
        available = sorted(rows[column].dropna().unique().tolist())
        raise ValueError(f"no sweep rows with {label}={value}; available: {available}")
    return picked


def fig_map_vs_visited(
    sweep_df: pd.DataFrame,
    current: Mapping[str, Any] | pd.Series | None = None,
    y: str = "map",
    x: str = "mean_visited",
) -> go.Figure:
    """Every configuration as a point (x: ``x``, ``"mean_visited"``, ``"single_query_ms"`` or ``"query_ms"``, log
    scale; y: ``y``, ``"map"`` or ``"recall"``), the Pareto frontier of (``x``, ``y``) as a line.

    Traces: "configurations" (all LSH rows), "Pareto frontier" (non-dominated scan and LSH rows joined by x),
    "exact scan" (if the table has a scan row), one per reference kind present (:data:`cbir.core.names.REFERENCE_KINDS`,
    named ``INDEX_LABELS[kind] + ", reference (ef 16–256)"`` with the range of its search-time settings, each
    point's on hover, no text beside the markers; not part of the frontier; rows without ``x``, such as hnswlib's
    uncounted visits, are left out), and "current" (``current`` given as a mapping with ``x`` and ``y``, e.g.
    :meth:`cbir.evaluation.evaluate.EvaluationResult.row`).
    """
    _require(sweep_df, [x, y])
    kinds = sweep_df["index"] if "index" in sweep_df.columns else pd.Series("lsh", index=sweep_df.index)
    is_scan, is_reference = kinds == "scan", kinds.isin(list(_REFERENCE_STYLES))
    own = sweep_df[~is_reference]
    fig = go.Figure()
    fig.add_trace(
        _sweep_points(
            sweep_df[~is_scan & ~is_reference],
            "markers",
            "configurations",
            y,
            x,
            marker={"size": 8, "color": "#7f8c8d", "opacity": 0.5},
        )
    )
    frontier = own[pareto_frontier(own, x=x, y=y)].sort_values(x)
    fig.add_trace(
        _sweep_points(
            frontier,
            "lines+markers",
            "Pareto frontier",
            y,
            x,
            line={"color": _INDEX_COLORS["lsh"], "width": 2},
            marker={"size": 9},
        )
    )
    if is_scan.any():
        fig.add_trace(
            _sweep_points(
                sweep_df[is_scan],
                "markers",
                "exact scan",
                y,
                x,
                marker={"size": 12, "symbol": "square", "color": _INDEX_COLORS["scan"]},
            )
        )
    for trace in _reference_traces(sweep_df, kinds, y, x):
        fig.add_trace(trace)
    if current is not None and pd.notna(current.get(x)):
        star = {"size": 16, "symbol": "star", "color": "#f1c40f", "line": {"width": 1, "color": "black"}}
        fig.add_trace(
            go.Scatter(x=[float(current[x])], y=[float(current[y])], mode="markers", name="current", marker=star)
        )
    title, axis = _X_NAMES.get(x, (x, x))
    fig.update_layout(
        title=f"{_NAMES.get(y, y)} vs {title}",
        # decades only: over a decade or two Plotly writes every digit on a second row, under the axis title
        xaxis={"title": axis, "type": "log", "dtick": 1},
        yaxis={"title": _AXIS_TITLES.get(y, y), "rangemode": "tozero"},
        legend={"orientation": "h", "yanchor": "top", "y": -0.3},  # below the axis title, not over it
    )
    return fig


def _reference_traces(sweep_df: pd.DataFrame, kinds: pd.Series, y: str, x: str) -> list[go.Scatter]:
    """One dotted line per reference kind present, named with the range of its search-time settings."""
    traces = []
    for kind, (color, symbol) in _REFERENCE_STYLES.items():
        rows = sweep_df[(kinds == kind) & sweep_df[x].notna()].sort_values(x)
        if not rows.empty:
            traces.append(
                _sweep_points(
                    rows,
                    "lines+markers",
                    f"{INDEX_LABELS[kind]}, reference ({_settings_range(kind, rows)})",
                    y,
                    x,
                    line={"color": color, "width": 1, "dash": "dot"},
                    marker={"size": 10, "symbol": symbol, "color": color},
                )
            )
    return traces


def fig_map_vs_h(sweep_df: pd.DataFrame, g: int) -> go.Figure:
    """mAP against h (hash functions per table) at ``g`` tables, one line per bucket width (paper Fig. 12, 15)."""
    _require(sweep_df, ["n_tables", "n_projections", "bucket_width", "map"])
    rows = _pick(_lsh_rows(sweep_df), "n_tables", g, "g")
    fig = go.Figure()
    for width, group in rows.groupby("bucket_width", sort=True):
        group = group.sort_values("n_projections")
        fig.add_trace(go.Scatter(x=group["n_projections"], y=group["map"], mode="lines+markers", name=f"w={width:.3g}"))
    fig.update_layout(
        title=f"mAP vs h (g = {g})",
        xaxis={"title": "h (hash functions per table)", "dtick": 1},
        yaxis={"title": MAP_AXIS},
    )
    return fig


def fig_map_visited_vs_g(sweep_df: pd.DataFrame, h: int) -> go.Figure:
    """mAP and mean visited objects against g at ``h`` projections, one line per bucket width (Fig. 13, 14).

    Two side-by-side subplots; traces come in pairs (mAP, visited) per bucket width.
    """
    _require(sweep_df, ["n_tables", "n_projections", "bucket_width", "map", "mean_visited"])
    rows = _pick(_lsh_rows(sweep_df), "n_projections", h, "h")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mAP", "visited objects per query"))
    palette = _PALETTE
    for position, (width, group) in enumerate(rows.groupby("bucket_width", sort=True)):
        group = group.sort_values("n_tables")
        color = palette[position % len(palette)]
        name = f"w={width:.3g}"
        # mAP on the left, visited objects on the right; one legend entry per width (from the left trace)
        for col, (column, showlegend) in enumerate((("map", None), ("mean_visited", False)), start=1):
            fig.add_trace(
                go.Scatter(
                    x=group["n_tables"],
                    y=group[column],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=showlegend,
                    line={"color": color},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="g (hash tables)", dtick=1)
    fig.update_yaxes(title_text=MAP_AXIS, row=1, col=1)
    fig.update_yaxes(title_text="mean visited", row=1, col=2)
    fig.update_layout(title=f"mAP and visited objects vs g (h = {h})")
    return fig


def fig_map_vs_w(sweep_df: pd.DataFrame) -> go.Figure:
    """mAP against bucket width w, one line per (g, h) (the paper's observation: larger w, higher mAP)."""
    _require(sweep_df, ["n_tables", "n_projections", "bucket_width", "map"])
    rows = _lsh_rows(sweep_df)
    fig = go.Figure()
    # a colour per g and a dash per h: every line tells apart from the others, however many the grid has
    tables = sorted(rows["n_tables"].unique())
    projections = sorted(rows["n_projections"].unique())
    for (n_tables, n_projections), group in rows.groupby(["n_tables", "n_projections"], sort=True):
        group = group.sort_values("bucket_width")
        fig.add_trace(
            go.Scatter(
                x=group["bucket_width"],
                y=group["map"],
                mode="lines+markers",
                name=f"g={n_tables:.0f}, h={n_projections:.0f}",
                line={
                    "color": _PALETTE[tables.index(n_tables) % len(_PALETTE)],
                    "dash": _DASHES[projections.index(n_projections) % len(_DASHES)],
                },
            )
        )
    fig.update_layout(
        title="mAP vs bucket width (colour: g, dash: h)",
        xaxis={"title": "w (bucket width)"},
        yaxis={"title": MAP_AXIS},
        height=560,  # the legend below the axes lists every line
        legend={"orientation": "h", "yanchor": "top", "y": -0.2},
    )
    return fig


def fig_per_class_map(per_class_df: pd.DataFrame) -> go.Figure:
    """Bar chart of mAP per class (columns ``class``, ``map``, ``n_queries``), one bar per class."""
    _require(per_class_df, ["class", "map", "n_queries"])
    fig = go.Figure(
        go.Bar(
            x=per_class_df["class"].astype(str),
            y=per_class_df["map"],
            text=[f"{value:.3f}" for value in per_class_df["map"]],
            textposition="outside",
            customdata=per_class_df["n_queries"],
            hovertemplate="%{x}<br>mAP %{y:.3f}<br>%{customdata} queries<extra></extra>",
            name="mAP",
        )
    )
    fig.update_layout(title="mAP per class", xaxis={"title": "class"}, yaxis={"title": MAP_AXIS, "range": [0, 1.05]})
    return fig


# ----------------------------------------------------------------------------------------------------------
# The app's other figures: collection, comparison, distances
# ----------------------------------------------------------------------------------------------------------


def _grouped_bars(
    frame: pd.DataFrame, x: str, y: str, color: str, layout: Mapping[str, Any], **options: Any
) -> go.Figure:
    """Bars of ``y`` per ``x``, side by side per ``color`` (``options``: more ``px.bar`` arguments), then
    ``fig.update_layout(**layout)``."""
    fig = px.bar(frame, x=x, y=y, color=color, barmode="group", **options)
    fig.update_layout(**layout)
    return fig


def fig_collection_counts(counts_long: pd.DataFrame) -> go.Figure:
    """Grouped bars: images per class and role."""
    return _grouped_bars(
        counts_long,
        "class",
        "images",
        "role",
        {"xaxis_tickangle": -35, "legend_title_text": "", "margin": {"t": 50, "b": 10}},
        title="Images per class and role",
    )


def fig_comparison(table: pd.DataFrame, value: str, title: str | None = None) -> go.Figure:
    """Bars of ``value`` (map, recall, mean_visited, visited_fraction, mean_score…) per feature set, grouped by index,
    one facet per distractor setting."""
    labels = {
        "map": "mAP@10",
        "recall": "recall@10 vs exact scan",
        "mean_visited": "visited objects / query",
        "visited_fraction": "share visited",
        "mean_score": "mean " + (str(table["score_name"].iloc[0]) if len(table) else "score"),
        "query_ms": "ms / query in a batch",
        "single_query_ms": "ms / query one at a time",
        "feature_set": "feature set",
    }
    fig = _grouped_bars(
        table.assign(distractors=table["distractors"] + " distractors"),
        "feature_set",
        value,
        "index",
        {"legend_title_text": "", "margin": {"t": 60, "b": 10}},
        facet_col="distractors",
        title=title or labels.get(value, value),
        labels=labels,
        text_auto=".3g",
        color_discrete_map=_LABEL_COLORS,
        category_orders={"distractors": ["with distractors", "without distractors"]},
    )
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def fig_comparison_tradeoff(table: pd.DataFrame, y: str = "recall", x: str = "single_query_ms") -> go.Figure:
    """``y`` (recall or mAP) against ms per query ``x`` (``"single_query_ms"``: one query at a time, or
    ``"query_ms"``: per query in a batch; log scale), one colour per index and one symbol per feature set, one facet
    per distractor setting: where each index sits between speed and quality (hover: its setting, both times)."""
    times = [column for column in TIME_MODES if column in table.columns]
    _require(table, ["feature_set", "index", "config", "distractors", x, y])
    fig = px.scatter(
        table.assign(distractors=table["distractors"] + " distractors"),
        x=x,
        y=y,
        color="index",
        symbol="feature_set",
        facet_col="distractors",
        hover_name="config",
        hover_data={"mean_visited": ":.1f", **{column: ":.3f" for column in times}, y: ":.3f"},
        log_x=True,
        color_discrete_map=_LABEL_COLORS,
        labels={
            **{column: f"ms / query {mode}" for column, mode in TIME_MODES.items()},
            "recall": "recall@10 vs exact scan",
            "map": "mAP@10",
            "mean_visited": "visited / query",
            "feature_set": "feature set",
        },
        title=f"{_NAMES.get(y, y)} vs time per query, {TIME_MODES.get(x, x)}",
        category_orders={"distractors": ["with distractors", "without distractors"]},
    )
    fig.update_traces(marker={"size": 12, "line": {"width": 1, "color": "black"}})
    tickvals, ticktext = log_ticks(table[x])
    fig.update_xaxes(tickvals=tickvals, ticktext=ticktext)
    # the legend (index × feature set) below the facets, where it has the figure's width
    fig.update_layout(margin={"t": 60, "b": 10}, height=700, legend={"orientation": "h", "y": -0.15})
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def fig_comparison_per_class(per_class: pd.DataFrame, distractors: str = "with") -> go.Figure:
    """Per-class mAP bars, one colour per feature set × index."""
    frame = per_class[per_class["distractors"] == distractors].assign(
        setting=lambda df: df["feature_set"] + " — " + df["index"]
    )
    return _grouped_bars(
        frame,
        "class",
        "map",
        "setting",
        {"xaxis_tickangle": -35, "yaxis_range": [0, 1], "margin": {"t": 50, "b": 10}},
        title=f"Per-class mAP@10 ({distractors} distractors)",
        labels={"map": "mAP@10", "setting": ""},
    )


def fig_distance_histograms(samples: Mapping[str, pd.DataFrame], column: str = "euclidean") -> go.Figure:
    """Overlaid histograms of pairwise ``column`` (euclidean or cosine) per feature set."""
    fig = go.Figure()
    for name, sample in samples.items():
        fig.add_trace(go.Histogram(x=sample[column], name=name, opacity=0.6, nbinsx=60, histnorm="probability"))
    title = METRIC_LABELS[column]
    fig.update_layout(
        barmode="overlay",
        title=f"{title}, random pairs",
        xaxis_title=title.lower(),
        yaxis_title="share of pairs",
        legend_title_text="",
        margin={"t": 50, "b": 10},
    )
    return fig


def fig_per_class(per_class: pd.DataFrame | None, reference: pd.DataFrame | None = None) -> go.Figure:
    """Per-class mAP bars of the current setting, beside the exact scan's (``reference``) when given; the exact
    scan's alone when ``per_class`` is ``None`` (what the tuning page shows while the setting is evaluated)."""
    frames = [] if per_class is None else [per_class.assign(index="current setting")]
    if reference is not None:
        frames.append(reference.assign(index="exact scan"))
    return _grouped_bars(
        pd.concat(frames, ignore_index=True),
        "class",
        "map",
        "index",
        {"xaxis_tickangle": -35, "yaxis_range": [0, 1], "margin": {"t": 20, "b": 10}},
        labels={"map": "mAP@10", "index": ""},
        hover_data=["n_queries"],
        color_discrete_map={"current setting": "#d62728", "exact scan": "#2ca02c"},
    )
