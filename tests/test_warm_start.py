"""Warm start (cbir.service.search.warm_start): a server's first query finds the kernels, the engine and the saved
indexes ready; one engine per feature set in the process; durations written to fit a metric tile and read back.
The ≤ 300 ms figure is measured by benchmarks/warm_start.py, not here."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir.app.formats import duration, parse_duration
from cbir.features.saved_indexes import build_saved
from cbir.features.workspace import base_version
from cbir.indexes.registry import IndexConfig
from cbir.service import search
from cbir.service.search import shared_engine, warm_start


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.00055, "0.55 ms"), (0.0111, "11.1 ms"), (0.25, "250 ms"), (3.04426, "3.04 s"), (27.3, "27.3 s")],
)
def test_durations_fit_a_metric_tile_and_read_back(seconds: float, text: str) -> None:
    assert duration(seconds) == text
    assert parse_duration(f"Query time\n{text}") == pytest.approx(seconds, rel=0.01)
    assert len(duration(seconds * 1000)) <= 8  # "2727.58 ms" was cut with "…" in a quarter-width tile


def test_parse_duration_of_minutes_and_nothing() -> None:
    assert duration(125.0) == "125 s" and parse_duration("2.1 min") == pytest.approx(126.0)
    assert parse_duration("Objects visited 1,234") is None


def test_warm_start_readies_the_engine_and_its_saved_indexes(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    lsh = IndexConfig("lsh", bucket_width=40.0, n_tables=4, n_projections=2)
    build_saved(store, lsh)
    report, thread = warm_start(str(store))
    assert thread is not None
    thread.join(900)  # a cold numba cache compiles every kernel first: minutes on two busy cores
    assert report.done.is_set() and report.error is None and report.seconds > 0
    assert report.configs == [IndexConfig().label, lsh.label]
    engine = shared_engine(str(store), base_version(store))
    assert engine.has_index(IndexConfig()) and engine.has_index(lsh) and engine.sources[lsh] == "loaded"
    assert shared_engine(str(store), base_version(store)) is engine  # one engine per feature set in the process


def test_warm_start_without_a_feature_set_reports_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "none"))
    report, thread = warm_start(background=False)
    assert thread is None and report.done.is_set() and "no complete feature set" in str(report.error)


def test_shared_engines_are_bounded(grown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _root, store = grown
    monkeypatch.setattr(search, "MAX_SHARED_ENGINES", 2)
    engines = [shared_engine(str(store), version) for version in (101, 102, 103)]
    assert len({id(engine) for engine in engines}) == 3
    assert len(search._shared_engines) <= 2


def test_a_server_warms_once_whoever_starts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "none"))  # nothing to warm: the report says why
    monkeypatch.setattr(search, "_server_warm", None)
    first = search.server_warm_start()  # `python -m cbir app` as the server starts
    assert search.server_warm_start() is first  # app.py's first session (cbir.app.ui.warm_start)
    assert first.done.wait(900) and "no complete feature set" in str(first.error)
