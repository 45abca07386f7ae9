"""The plot functions draw the rows they are given: expected traces and points."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from cbir.app.plots import fig_map_visited_vs_g, fig_map_vs_h, fig_map_vs_visited, fig_map_vs_w, fig_per_class_map
from cbir.evaluation.sweep import SWEEP_COLUMNS


@pytest.fixture
def sweep_df() -> pd.DataFrame:
    rows = [{"index": "scan", "metric": "cosine", "map": 0.9, "mean_visited": 1000.0}]
    for g, h, w, probes in itertools.product([2, 4], [2, 3, 4], [1.0, 2.0], [0, 2]):
        visited = g * 100.0 / h * w * (1 + probes)
        rows.append(
            {
                "index": "lsh",
                "n_tables": g,
                "n_projections": h,
                "bucket_width": w,
                "probes": probes,
                "metric": "cosine",
                "map": min(0.89, 0.2 * g / h * w + 0.05 * probes),
                "mean_visited": visited,
            }
        )
    return pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)


def trace(fig: go.Figure, name: str) -> go.Scatter:
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def test_map_vs_visited_has_points_frontier_scan_and_current(sweep_df: pd.DataFrame) -> None:
    fig = fig_map_vs_visited(sweep_df, current={"mean_visited": 150.0, "map": 0.5})
    assert [t.name for t in fig.data] == ["configurations", "Pareto frontier", "exact scan", "current"]
    assert len(trace(fig, "configurations").x) == len(sweep_df) - 1
    frontier = trace(fig, "Pareto frontier")
    assert list(frontier.x) == sorted(frontier.x) and 1 < len(frontier.x) < len(sweep_df)
    # every frontier point is at least as good as any configuration that visits no fewer objects
    xs, ys = np.asarray(trace(fig, "configurations").x), np.asarray(trace(fig, "configurations").y)
    for x, y in zip(frontier.x, frontier.y, strict=True):
        assert not np.any((xs <= x) & (ys > y))
    assert trace(fig, "current").x == (150.0,)
    assert fig.layout.xaxis.type == "log"
    assert [t.name for t in fig_map_vs_visited(sweep_df).data][-1] == "exact scan"


def test_map_vs_h_one_line_per_width(sweep_df: pd.DataFrame) -> None:
    fig = fig_map_vs_h(sweep_df, g=4)
    assert [t.name for t in fig.data] == ["w=1", "w=2"]
    line = trace(fig, "w=2")
    assert list(line.x) == [2, 3, 4]
    expected = sweep_df.query("n_tables == 4 and bucket_width == 2.0 and probes == 0").sort_values("n_projections")
    assert list(line.y) == expected["map"].tolist()
    with pytest.raises(ValueError, match=r"no sweep rows with g=7; available: \[2.0, 4.0\]"):
        fig_map_vs_h(sweep_df, g=7)


def test_map_visited_vs_g_two_panels(sweep_df: pd.DataFrame) -> None:
    fig = fig_map_visited_vs_g(sweep_df, h=2)
    assert len(fig.data) == 4  # (mAP, visited) per width
    map_trace, visited_trace = fig.data[0], fig.data[1]
    assert map_trace.xaxis == "x" and visited_trace.xaxis == "x2"
    assert list(map_trace.x) == [2, 4]
    expected = sweep_df.query("n_projections == 2 and bucket_width == 1.0 and probes == 0").sort_values("n_tables")
    assert list(visited_trace.y) == expected["mean_visited"].tolist()


def test_map_vs_w_one_line_per_g_h(sweep_df: pd.DataFrame) -> None:
    fig = fig_map_vs_w(sweep_df)
    assert len(fig.data) == 2 * 3
    assert all(list(t.x) == [1.0, 2.0] for t in fig.data)
    assert fig.data[0].name == "g=2, h=2"


def test_per_class_bars() -> None:
    per_class = pd.DataFrame({"class": ["drawings", "sculpture"], "n_queries": [10, 4], "map": [0.5, 0.75]})
    fig = fig_per_class_map(per_class)
    assert len(fig.data) == 1 and fig.data[0].type == "bar"
    assert list(fig.data[0].x) == ["drawings", "sculpture"] and list(fig.data[0].y) == [0.5, 0.75]
    with pytest.raises(ValueError, match="lacks columns"):
        fig_per_class_map(per_class.drop(columns="n_queries"))


def test_recall_vs_visited_has_its_own_frontier(sweep_df: pd.DataFrame) -> None:
    from cbir.evaluation.sweep import pareto_frontier

    sweep_df = sweep_df.assign(recall=np.where(sweep_df["index"] == "scan", 1.0, 1 - 1 / sweep_df["mean_visited"]))
    fig = fig_map_vs_visited(sweep_df, current={"mean_visited": 150.0, "recall": 0.7, "map": 0.5}, y="recall")
    assert [t.name for t in fig.data] == ["configurations", "Pareto frontier", "exact scan", "current"]
    frontier = sweep_df[pareto_frontier(sweep_df, y="recall")].sort_values("mean_visited")
    assert list(trace(fig, "Pareto frontier").y) == frontier["recall"].tolist()
    assert trace(fig, "current").y == (0.7,) and "recall" in fig.layout.yaxis.title.text
    assert "recall" in trace(fig, "configurations").text[0]


def test_reference_points_beside_the_sweep_on_both_axes(sweep_df: pd.DataFrame) -> None:
    sweep_df = sweep_df.assign(query_ms=sweep_df["mean_visited"] / 100)
    references = pd.DataFrame(
        [
            {"index": "hnsw", "ef_search": 16, "map": 0.8, "mean_visited": 90.0, "query_ms": 0.2},
            {"index": "hnsw", "ef_search": 32, "map": 0.85, "mean_visited": 210.0, "query_ms": 0.3},
            {"index": "hnsw", "ef_search": 64, "map": 0.9, "mean_visited": 310.0, "query_ms": 0.5},
            {"index": "ivf_flat", "n_probe": 4, "map": 0.7, "mean_visited": 120.0, "query_ms": 0.1},
            {"index": "hnswlib", "ef_search": 16, "map": 0.85, "mean_visited": np.nan, "query_ms": 0.05},
            {"index": "cross_polytope", "probes": 8, "map": 0.88, "mean_visited": 500.0, "query_ms": 0.9},
        ]
    ).assign(metric="cosine")
    table = pd.concat([sweep_df, references.reindex(columns=SWEEP_COLUMNS)], ignore_index=True)
    by_visited = fig_map_vs_visited(table)
    names = [t.name for t in by_visited.data]
    # the references are traces of their own named with their settings, not points of the frontier; hnswlib has no
    # visited count
    assert names[3:] == [
        "HNSW (faiss), reference (ef 16–64)",
        "IVF-Flat (faiss), reference (nprobe 4)",
        "cross-polytope LSH, reference (T 8)",
    ]
    # each point's setting is on hover (from the row's label when the sweep has one)
    hover = trace(by_visited, "HNSW (faiss), reference (ef 16–64)").text
    assert [text.split("<br>")[0] for text in hover] == [
        "HNSW (faiss) ef 16",
        "HNSW (faiss) ef 32",
        "HNSW (faiss) ef 64",
    ]
    labelled = table.assign(label=np.where(table["index"] == "ivf_flat", "IVF-Flat (faiss) nprobe=4 (cosine)", None))
    ivf = trace(fig_map_vs_visited(labelled), "IVF-Flat (faiss), reference (nprobe 4)")
    assert ivf.text[0].startswith("IVF-Flat (faiss) nprobe=4 (cosine)<br>")
    # HNSW's points dominate the grid, yet stay out of its frontier
    assert not {90.0, 210.0, 310.0} & set(trace(by_visited, "Pareto frontier").x)
    by_time = fig_map_vs_visited(table, {"mean_visited": 150.0, "query_ms": 1.5, "map": 0.5}, x="query_ms")
    assert list(trace(by_time, "HNSW (hnswlib), reference (ef 16)").x) == [0.05]
    assert trace(by_time, "current").x == (1.5,) and by_time.layout.xaxis.type == "log"
    assert "time per query" in by_time.layout.title.text


def test_reference_lines_ending_together_write_no_colliding_labels() -> None:
    """HNSW's and hnswlib's lines end together at the top right of the time chart (recall 1 at their largest ef):
    no reference trace writes text beside its markers, so nothing there can overlap; the settings are in the
    legend and on hover."""
    rows = [{"index": "scan", "recall": 1.0, "map": 0.6, "mean_visited": 4913.0, "query_ms": 0.5}]
    for kind, efs in (("hnsw", (16, 64, 256)), ("hnswlib", (16, 32, 128))):
        for ef in efs:
            end = ef == efs[-1]
            query_ms = 0.9 if end else 0.1 + ef / 1000  # both last points at the same place
            rows.append(
                {"index": kind, "ef_search": ef, "recall": 1.0 if end else 0.95, "map": 0.58, "query_ms": query_ms}
            )
    table = pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)
    fig = fig_map_vs_visited(table, y="recall", x="query_ms")
    references = [t for t in fig.data if ", reference" in t.name]
    assert [t.name for t in references] == [
        "HNSW (faiss), reference (ef 16–256)",
        "HNSW (hnswlib), reference (ef 16–128)",
    ]
    assert all("text" not in t.mode for t in fig.data)  # nothing written on the chart
    assert [t.text[-1].split("<br>")[0] for t in references] == ["HNSW (faiss) ef 256", "HNSW (hnswlib) ef 128"]


def test_map_vs_w_tells_every_line_apart_and_names_k() -> None:
    rows = [
        {"index": "lsh", "n_tables": g, "n_projections": h, "bucket_width": w, "map": 0.1 * g + 0.01 * h + w / 100}
        for g, h, w in itertools.product((1, 2, 4, 7, 10), (1, 2, 4, 8), (1.0, 2.0, 4.0))
    ]
    fig = fig_map_vs_w(pd.DataFrame(rows))
    styles = {(trace.line.color, trace.line.dash) for trace in fig.data}
    assert len(fig.data) == 20 and len(styles) == 20  # no two lines look alike
    assert fig.layout.yaxis.title.text == "mAP@10"


def test_a_kept_figure_is_read_back_from_disk_as_built(
    sweep_df: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A figure kept on disk (a restarted server's) is the one built, read back without building it; another input
    builds another."""
    from cbir.app import kept_figures

    monkeypatch.setenv("CBIR_ARTIFACTS", str(tmp_path))
    built: list[int] = []

    def build(table: pd.DataFrame, title: str = "") -> go.Figure:
        built.append(len(table))
        return fig_map_vs_visited(table)

    kept = kept_figures.kept(build)
    first = kept(sweep_df, title="mAP")
    assert json.loads(first.to_json()) == json.loads(fig_map_vs_visited(sweep_df).to_json())
    assert built == [len(sweep_df)]
    assert list((tmp_path / "cache" / "figures").iterdir())
    again = kept(sweep_df.copy(), title="mAP")  # the same content: read back
    assert again.to_json() == first.to_json() and built == [len(sweep_df)]
    kept(sweep_df.head(5), title="mAP")
    kept(sweep_df, title="recall")
    assert built == [len(sweep_df), 5, len(sweep_df)]
