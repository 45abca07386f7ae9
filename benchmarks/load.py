"""Load test: N concurrent users of the app, each a headless Chromium (selenium) against ``streamlit run app.py``
on 127.0.0.1.

    .venv/bin/python benchmarks/load.py                          # 8 sessions, 5 queries each, at most 120 s
    .venv/bin/python benchmarks/load.py --sessions 3 --queries 3 --url http://127.0.0.1:8501   # a running server

Each session opens the Search page and, for each of its queries, switches the index (exact scan ↔ LSH) and
uploads a photo (scikit-image's sample photos, :mod:`cbir.data.samples`, and images of the collection, under names
unique to the session and query), waits for the ten results and reads the page's own "Query time" metric; then it
opens the Index tuning page and moves a slider. With ``--adds N`` the first N sessions also upload a drawing of
their own and add it to the collection from the Search page (unlabelled), and check that their next query finds it
first. It is bounded in count (``--queries``) and time (``--max-seconds``: a session stops starting queries after it).

Adds change the collection, so a server started here serves a temporary copy of the default collection and of its
feature store (hard links; :func:`benchmarks.growth.copy_workspace`), never the real ones; with ``--url`` (a server
started elsewhere) ``--adds`` must be 0 unless ``--allow-adds`` says that server's collection is a copy.

Reported: per session the queries done and the errors seen (any exception or ``st.error`` box on a page, and a
page that did not finish in time), the exceptions in the server log, p50/p95 of the query time, and the check of
the artifacts folder: no temp file left, every ``.joblib`` loads, nothing the app should not have written changed.
The server is started here (on a free loopback port, against ``$CBIR_ARTIFACTS``) unless ``--url`` is given.

The server, the browser and the page readers are :mod:`benchmarks.browser`'s (shared with the browser tests).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (first: this checkout's cbir, not an installed one)
import numpy as np

from benchmarks.browser import (
    PAGE_S,
    SLIDER_INPUT,
    add_to_collection,
    app_running,
    body_text,
    caption_texts,
    choose_radio,
    chromium,
    move_first_slider,
    open_page,
    page_errors,
    query_time_ms,
    result_images,
    server_errors,
    slider_values,
    streamlit_server,
    upload,
    wait_for,
    wait_until_idle,
)


def unique_drawing(path: Path, seed: int) -> Path:
    """A drawing no collection holds (random coloured strokes on white, seeded): an image a session can add."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed + 1000)
    image = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        points = [tuple(int(v) for v in rng.integers(10, 310, 2)) for _ in range(4)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=int(rng.integers(3, 12)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# One session, many sessions
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SessionReport:
    """What one simulated user did and saw."""

    session: int
    queries: int = 0
    slider_moves: int = 0
    adds: int = 0
    query_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def query_images(folder: Path, collection_images: Sequence[Path], session: int, n: int) -> list[Path]:
    """``n`` query files for one session under ``folder``, names unique to the session and query: sample photos
    (scikit-image) alternating with collection images."""
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        if i % 2 == 0 or not collection_images:
            name = SAMPLE_PHOTOS[(session + i // 2) % len(SAMPLE_PHOTOS)]
            path = folder / f"s{session}-q{i}-{name}.jpg"
            sample_photo(name).save(path, quality=90)
        else:
            source = collection_images[(session * n + i) % len(collection_images)]
            path = folder / f"s{session}-q{i}-{source.name}"
            shutil.copyfile(source, path)
        files.append(path)
    return files


def run_session(
    url: str,
    session: int,
    images: Sequence[Path],
    profile: Path,
    deadline: float,
    screenshots: Path | None = None,
    tuning: bool = True,
    add: Path | None = None,
) -> SessionReport:
    """One user: on the Search page, per image switch the index and upload it, wait for the results; then (given
    ``add``, an image no collection holds) upload ``add``, add it to the collection and check it comes first; then
    (with ``tuning``) move a slider on the Index tuning page, right and back. Errors are recorded, not raised; no query
    starts after ``deadline`` (the add and tuning steps still run, each page bounded by :data:`PAGE_S`)."""
    report = SessionReport(session)
    driver = None
    try:
        driver = chromium(profile)
        open_page(driver, f"{url}/Search", "input[type=file]")
        _queries(driver, report, images, deadline, screenshots)
        if add is not None:
            _add_step(driver, report, add, screenshots)
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshots / f"load-session{session}-search.png"))
        if tuning:
            _tuning_step(driver, report, url)
    except Exception as exc:  # a session's failure is a finding to report, not a crash
        report.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return report


def _queries(
    driver: Any, report: SessionReport, images: Sequence[Path], deadline: float, screenshots: Path | None
) -> None:
    """Per image: switch the index (exact scan, LSH in turn), upload it, wait for its results and read its time."""
    session = report.session
    for i, image in enumerate(images):
        if time.monotonic() > deadline:
            break
        kind = "LSH" if i % 2 else "Exact scan"
        started = time.monotonic()
        marker = "LSH g=" if kind == "LSH" else "exact scan ("
        if choose_radio(driver, kind):  # reruns the previous query (if any) on the other index
            # wait for that answer, not just an idle moment: a loaded browser may not have sent the rerun yet,
            # and a file given to the uploader while the page reruns can be dropped (seen with 8 sessions)
            if report.queries:
                wait_for(lambda marker=marker: marker in body_text(driver), PAGE_S, f"the switch to {kind}")
            wait_until_idle(driver, PAGE_S, f"the switch to {kind}")

        def answered(image: Path = image, marker: str = marker) -> bool:
            text = body_text(driver)
            return (
                f"Query: {image.name}" in text
                and marker in text
                and "Most similar images" in text
                and not app_running(driver)
            ) or bool(page_errors(driver))

        try:
            upload(driver, image)
            wait_for(answered, PAGE_S, f"the results of {image.name}")
        except TimeoutError as exc:
            state = "running" if app_running(driver) else "idle"
            report.errors.append(
                f"query {i} ({image.name}): {exc}; the app is {state}, the page shows: "
                f"{' | '.join(body_text(driver).splitlines()[8:30])}"
            )
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(screenshots / f"load-session{session}-timeout{i}.png"))
            continue
        report.wall_ms.append((time.monotonic() - started) * 1000)
        if errors := page_errors(driver):
            report.errors.extend(f"query {i} ({image.name}): {e}" for e in errors)
            continue
        readings: list[float] = []  # the metric may be mid-redraw: read it again for a moment

        def read_query_time(readings: list[float] = readings) -> bool:
            ms = query_time_ms(driver)
            return ms is not None and not readings.append(ms)

        try:
            wait_for(read_query_time, 10, f"the query time of {image.name}", interval=0.2)
            report.query_ms.append(readings[0])
        except TimeoutError as exc:
            report.errors.append(f"query {i} ({image.name}): {exc}")
        if kind == "Exact scan" and result_images(driver) < 11:
            report.errors.append(f"query {i} ({image.name}): {result_images(driver) - 1} results, not 10")
        report.queries += 1


def _add_step(driver: Any, report: SessionReport, add: Path, screenshots: Path | None) -> None:
    """Upload ``add``, add it to the collection and check it is among its own results."""
    session = report.session
    choose_radio(driver, "Exact scan")
    wait_until_idle(driver, PAGE_S, "the switch to the exact scan")
    upload(driver, add)
    wait_for(lambda: f"Query: {add.name}" in body_text(driver) and not app_running(driver), PAGE_S, add.name)
    try:
        outcome = add_to_collection(driver)
    except (TimeoutError, LookupError) as exc:
        outcome = str(exc)
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshots / f"load-session{session}-add.png"))
    if outcome != "added":
        report.errors.append(f"add ({add.name}): {outcome}")
    else:
        report.adds += 1
        # the page searched again with the same upload: the added image is its own nearest neighbour
        try:  # the captions are redrawn as the page searches again: read them until the image shows
            wait_for(lambda: any(add.stem in text for text in caption_texts(driver)), 10, add.name)
        except TimeoutError:
            report.errors.append(f"add ({add.name}): not among the results after adding it")


def _tuning_step(driver: Any, report: SessionReport, url: str) -> None:
    """Move the first slider of the Index tuning page right and back, waiting for the page each time."""
    open_page(driver, f"{url}/Index_tuning", SLIDER_INPUT)
    wait_until_idle(driver, PAGE_S, "the Index tuning page")
    for steps in (1, -1):
        before = slider_values(driver)[0]
        move_first_slider(driver, steps)
        wait_for(lambda before=before: slider_values(driver)[0] != before, 10, "the slider to move")
        wait_until_idle(driver, PAGE_S, "the Index tuning page after a slider move")
        report.slider_moves += 1
        if errors := page_errors(driver):
            report.errors.extend(f"tuning: {e}" for e in errors)
            break


@dataclass
class LoadReport:
    """The outcome of :func:`run_load`."""

    sessions: list[SessionReport]
    server_errors: list[str]
    artifact_problems: list[str]
    seconds: float

    @property
    def queries(self) -> int:
        return sum(s.queries for s in self.sessions)

    @property
    def errors(self) -> list[str]:
        return [f"session {s.session}: {e}" for s in self.sessions for e in s.errors] + [
            f"server: {line}" for line in self.server_errors
        ]

    def percentile_ms(self, q: float, wall: bool = False) -> float:
        values = [v for s in self.sessions for v in (s.wall_ms if wall else s.query_ms)]
        return float(np.percentile(values, q)) if values else float("nan")

    def table(self) -> str:
        """A Markdown table: one row per session and a total row."""
        rows = ["| session | queries | adds | slider moves | errors | p50 query ms | p95 query ms | p50 wall ms |"]
        rows.append("|---|---|---|---|---|---|---|---|")
        for s in self.sessions:
            p50 = f"{np.percentile(s.query_ms, 50):.0f}" if s.query_ms else "–"
            p95 = f"{np.percentile(s.query_ms, 95):.0f}" if s.query_ms else "–"
            wall = f"{np.percentile(s.wall_ms, 50):.0f}" if s.wall_ms else "–"
            counts = f"{s.queries} | {s.adds} | {s.slider_moves} | {len(s.errors)}"
            rows.append(f"| {s.session} | {counts} | {p50} | {p95} | {wall} |")
        rows.append(
            f"| all {len(self.sessions)} | {self.queries} | {sum(s.adds for s in self.sessions)} | "
            f"{sum(s.slider_moves for s in self.sessions)} | "
            f"{len(self.errors)} | {self.percentile_ms(50):.0f} | {self.percentile_ms(95):.0f} | "
            f"{self.percentile_ms(50, wall=True):.0f} |"
        )
        return "\n".join(rows)


def artifact_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``root`` (symbolic links not followed)."""
    snapshot = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            with contextlib.suppress(OSError):
                stat = path.lstat()
                snapshot[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def check_artifacts(root: Path, before: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Problems of the artifacts folder: temp files left by an interrupted atomic write (``.NAME.*.tmp``), a
    ``.joblib`` that does not load, and (given ``before``, a snapshot) files that appeared or changed."""
    import joblib

    problems = []
    now = artifact_snapshot(root)
    for relpath in sorted(now):
        name = Path(relpath).name
        if name.endswith(".tmp") or (name.startswith(".") and ".tmp" in name):
            problems.append(f"temp file left: {relpath}")
        elif name.endswith(".joblib"):
            try:
                joblib.load(root / relpath)
            except Exception as exc:  # any failure to load is the finding
                problems.append(f"{relpath} does not load: {type(exc).__name__}: {exc}")
    if before is not None:
        problems.extend(f"written during the run: {p}" for p in sorted(now) if before.get(p) != now[p])
    return problems


def collection_images(limit: int = 64) -> list[Path]:
    """Up to ``limit`` images of the default collection (sorted, spread over it)."""
    from cbir.core import config
    from cbir.data.images import IMAGE_EXTENSIONS

    root = config.default_collection()
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if root.is_dir() else []
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def run_load(
    url: str,
    sessions: int = 8,
    queries: int = 5,
    max_seconds: float = 120.0,
    work: Path | None = None,
    screenshots: Path | None = None,
    stagger_s: float = 0.5,
    pictures: Sequence[Path] | None = None,
    warm_up: bool = True,
    adds: int = 0,
) -> list[SessionReport]:
    """Run ``sessions`` users at once against ``url`` (threads, one Chromium each); their reports in order.
    ``pictures``: the collection images queries are drawn from (default: :func:`collection_images`); ``warm_up``:
    one user goes through both pages first (not counted), so that the times are those of a running app; ``adds``:
    how many of the sessions add an image of their own to the collection (the server must serve a copy)."""
    work = Path(tempfile.mkdtemp(prefix="cbir-load-")) if work is None else work
    pictures = collection_images() if pictures is None else pictures
    deadline = time.monotonic() + max_seconds
    reports: list[SessionReport | None] = [None] * sessions

    def one(n: int) -> None:
        images = query_images(work / f"queries-{n}", pictures, n, queries)
        new = unique_drawing(work / f"queries-{n}" / f"s{n}-new-drawing.png", n) if n < adds else None
        reports[n] = run_session(url, n, images, work / f"profile-{n}", deadline, screenshots, add=new)

    if warm_up:  # the first query loads the model and the engine, the tuning page its background sweep
        started = time.monotonic()
        images = query_images(work / "queries-warm-up", pictures, sessions, 1)
        warm = run_session(url, -1, images, work / "profile-warm-up", time.monotonic() + PAGE_S)
        print(f"warm-up: {time.monotonic() - started:.0f} s, errors: {warm.errors or 'none'}", flush=True)
        warm_errors = [f"warm-up: {error}" for error in warm.errors]
        deadline += time.monotonic() - started
    else:
        warm_errors = []
    threads = []
    for n in range(sessions):
        thread = threading.Thread(target=one, args=(n,), name=f"load-session-{n}")
        thread.start()
        threads.append(thread)
        time.sleep(stagger_s)  # Chromium start-ups spread out a little, queries still overlap
    for thread in threads:
        # a session may finish its current page after the deadline: allow that, bounded
        thread.join(timeout=max(1.0, deadline - time.monotonic()) + 2 * PAGE_S)
    done = [r if r is not None else SessionReport(n, errors=["did not finish"]) for n, r in enumerate(reports)]
    if warm_errors:  # the warm-up's errors count, its times do not
        done[0].errors[:0] = warm_errors
    return done


def serve_a_copy(work: Path) -> tuple[dict[str, str], Path]:
    """``(server environment, feature store)`` of a temporary copy of the default collection and its newest complete
    feature store, for a run that adds images."""
    from benchmarks.growth import copy_workspace
    from cbir.core import config
    from cbir.features.workspace import resolve_feature_path

    store = resolve_feature_path()
    root, copy = copy_workspace(config.default_collection(), store, work / "copy")
    return {"CBIR_COLLECTION": str(root), "CBIR_ARTIFACTS": str(work / "copy" / "artifacts")}, copy


def growth_check(store: Path, adds: int) -> str:
    """A line saying whether the copied store loads and holds the added images."""
    from cbir.features.sources import load_features
    from cbir.features.store import read_manifest

    manifest = read_manifest(store)
    rows = len(load_features(store).catalog)
    return f"feature store copy: generation {manifest.get('generation')}, {rows:,} rows, {adds} images added, loads"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent users (default 8)")
    parser.add_argument("--queries", type=int, default=5, help="uploads per user (default 5)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="no query starts after this (default 120)")
    parser.add_argument("--url", help="a running app (default: start one on a free loopback port)")
    parser.add_argument("--screenshots", type=Path, help="folder for one screenshot per session")
    parser.add_argument("--adds", type=int, default=2, help="sessions that add an image of their own (default 2)")
    parser.add_argument("--allow-adds", action="store_true", help="--url serves a copy: let --adds change it")
    args = parser.parse_args(argv)
    if args.url and args.adds and not args.allow_adds:
        parser.error("--adds changes the collection the server at --url serves: pass --adds 0, or --allow-adds")

    from cbir.core import config

    config.quiet_native_libraries()
    root = config.artifacts_dir()
    before = artifact_snapshot(root)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cbir-load-") as tmp:
        work = Path(tmp)
        if args.url:
            reports = run_load(
                args.url, args.sessions, args.queries, args.max_seconds, work, args.screenshots, adds=args.adds
            )
            log = ""
        else:
            env, store = serve_a_copy(work) if args.adds else ({}, None)
            with streamlit_server(work / "streamlit.log", env) as server:
                reports = run_load(
                    server.url, args.sessions, args.queries, args.max_seconds, work, args.screenshots, adds=args.adds
                )
                log = server.log()
            if store is not None:
                grown = growth_check(store, sum(r.adds for r in reports))
                print(grown)
    report = LoadReport(reports, server_errors(log), check_artifacts(root, before), time.monotonic() - started)
    print(f"{args.sessions} sessions × up to {args.queries} queries against {args.url or 'a new server'}, ")
    print(f"{report.seconds:.0f} s in all; artifacts: {root}\n")
    print(report.table())
    print()
    for error in report.errors:
        print(f"ERROR {error}")
    for problem in report.artifact_problems:
        print(f"ARTIFACT {problem}")
    if not report.errors and not report.artifact_problems:
        print("0 errors; artifacts intact (no temp file, every .joblib loads, nothing written).")
    return 1 if report.errors or report.artifact_problems else 0


if __name__ == "__main__":
    sys.exit(main())
