"""Several users at once (issue 11, item 2), CI-sized: ``benchmarks/load.py``'s code drives two concurrent
Chromium sessions (uploads, index switches, an image added to the collection, tuning sliders) against ``streamlit
run app.py`` on a copy of the small collection. No error on any page or in the server log, every query answered,
the added image found, the copied feature store grown by one row, the real artifacts folder intact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SCREENSHOTS

from benchmarks.browser import chromium_available, server_errors, streamlit_server
from benchmarks.growth import copy_workspace
from benchmarks.load import LoadReport, artifact_snapshot, check_artifacts, run_load
from cbir.core import config
from cbir.features.sources import load_features
from cbir.features.store import read_manifest

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

SESSIONS, QUERIES, MAX_SECONDS = 2, 3, 60


@pytest.fixture
def copy_server(tmp_path: Path, openclipart_small: Path) -> Iterator[tuple[Any, Path]]:
    """``(server, feature store)``: ``streamlit run app.py`` on a copy (hard links) of the small collection and of its
    feature set (as a store, which can grow), so that sessions may add images."""
    from builders import small_feature_path

    if not chromium_available():
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    root, store = copy_workspace(openclipart_small, small_feature_path(openclipart_small), tmp_path / "copy")
    env = {"CBIR_COLLECTION": str(root), "CBIR_ARTIFACTS": str(tmp_path / "copy" / "artifacts")}
    with streamlit_server(tmp_path / "streamlit.log", env) as running:
        yield running, store


def test_two_sessions_at_once(copy_server: tuple[Any, Path], openclipart_small: Path, tmp_path: Path) -> None:
    server, store = copy_server
    root = config.artifacts_dir()
    before = artifact_snapshot(root)
    rows = len(load_features(store).catalog)
    pictures = sorted((openclipart_small / "validation_set").rglob("*.jpg"))[:12]
    started = time.monotonic()
    reports = run_load(
        server.url,
        SESSIONS,
        QUERIES,
        MAX_SECONDS,
        tmp_path / "load",
        screenshots=SCREENSHOTS,
        pictures=pictures,
        adds=1,
    )
    seconds = time.monotonic() - started
    report = LoadReport(reports, server_errors(server.log()), check_artifacts(root, before), seconds)
    print(report.table())
    assert report.errors == [], report.errors
    assert report.artifact_problems == [], report.artifact_problems
    assert report.queries == SESSIONS * QUERIES, report.table()
    assert [s.adds for s in reports] == [1, 0], report.table()
    assert all(s.slider_moves == 2 for s in reports), report.table()
    assert len([ms for s in reports for ms in s.query_ms]) == SESSIONS * QUERIES
    assert len(load_features(store).catalog) == rows + 1 and read_manifest(store)["generation"] == 1
    print(f"{seconds:.0f} s for the whole load (not asserted: speed goals live in benchmarks/load.py)")
