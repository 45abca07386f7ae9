"""The first query of a fresh server, with and without the warm start (cbir.service.search.warm_start).

    .venv/bin/python benchmarks/warm_start.py                # default collection, a photo as the query
    .venv/bin/python benchmarks/warm_start.py --wait 0       # the first query arrives while the warm-up runs

Each case runs in a new Python process, as a new server would (numba's compiled kernels come from its on-disk cache,
as on any machine that ran cbir once):

* ``warm``: the server starts :func:`warm_start` in the background, the first user query arrives ``--wait`` seconds
  later (default: when the warm-up is done; the seconds it took are printed), and is answered through the shared
  engine as the Search page and the API do (:func:`shared_engine`, :meth:`SearchEngine.query`: decode, embed, search);
* ``cold``: no warm start: the first query pays for the kernels, the feature set, the model and the engine.

Printed per case and setting (the scan, then each fresh saved index): the first query's time end to end (from the
image bytes to the ranked table, engine included), its embedding and search parts, and the second query's time.
Goal (issue 21): the first query ≤ 300 ms end to end, its search part ≤ 20 ms. Ends with the load average.

``--servers`` starts real servers instead, each fresh, on a free loopback port, and sends the same photo once the
server says it is ready:

* ``app``: ``python -m cbir app`` (the warm start begins as the server starts); ready when its log says
  ``cbir: warm start done``; then a headless Chromium opens the Search page (the server's first session), waits
  until its run has ended and ``--think`` seconds more (default 2: a person choosing the file), and uploads the photo;
* ``streamlit``: ``streamlit run app.py`` (the warm start begins with the first session); ready when
  ``/_stcore/health`` answers; then the same browser steps at once;
* ``api``: ``python -m cbir serve``; ready when ``/health`` answers (it warms before it answers); then
  ``POST /search`` with the photo (scan, k = 10), twice.

Per server: seconds to ready, the page's first load (browser), and the first query: **as the server timed it** (the
Search page's "Query time" metric, the API's ``timings_ms.total``: decode, embed and search of the uploaded bytes)
and as the client saw it (browser: from giving the file to the uploader until the ten results and their caption are
drawn and all eleven pictures loaded, timed by the page itself (:func:`benchmarks.browser.watch_answer`); API: the
HTTP request, upload and JSON included), then the second query the same way. The browser's time is split into
``picked`` (the file input has the file: before it, WebDriver handing it over), ``running`` (the server started the
script run: the upload and the rerun request), ``shown`` (the answer is drawn) and ``finished`` (the run ended), and
``answer`` is the page's part, from ``picked`` to the last picture drawn: what a person who drops a file waits for
(WebDriver's 20-50 ms of handing it over, its protocol's round trips, left out); the
second query of a page also pays a run for the first file's removal (the
uploader holds one file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

from cbir.core import config

config.quiet_native_libraries()  # as the app and the CLI start: before numpy, TensorFlow and libgomp load


def first_queries(warm: bool, wait: float | None, query: bytes) -> dict:
    """In this (fresh) process: optionally warm up, then time the first and second query per setting."""
    started = time.perf_counter()
    from cbir.features.saved_indexes import saved_infos, staleness
    from cbir.features.workspace import base_version, complete_feature_sets, load_feature_set
    from cbir.indexes.registry import IndexConfig
    from cbir.service.search import extractor_spec, shared_engine, warm_start

    out: dict = {"import_s": time.perf_counter() - started}
    path = next(iter(complete_feature_sets().values()))
    if warm:
        report, _thread = warm_start(path)
        report.done.wait(wait)
        out["warm_up_s"] = report.seconds if report.done.is_set() else None
        out["warm_error"] = report.error
    rows = []
    configs = [IndexConfig()]
    for config_index in range(10):
        if config_index >= len(configs):
            break
        config_ = configs[config_index]
        began = time.perf_counter()
        engine = shared_engine(path, base_version(path), extractor_spec(load_feature_set(path).meta))
        first = engine.query(query, config_)
        first_s = time.perf_counter() - began
        began = time.perf_counter()
        engine.query(query, config_)
        rows.append(
            {
                "setting": config_.label,
                "source": engine.sources.get(config_, "?"),
                "first_ms": first_s * 1e3,
                "embed_ms": first.embed_seconds * 1e3,
                "search_ms": first.search_seconds * 1e3,
                "second_ms": (time.perf_counter() - began) * 1e3,
            }
        )
        if config_index == 0:  # then every fresh saved index of the feature set
            version = engine._saved_version
            configs += [
                IndexConfig(**info["config"]) for _, info in saved_infos(path) if staleness(info, version) is None
            ]
    out["rows"] = rows
    return out


SERVERS = ("app", "streamlit", "api")
RESULT_IMAGES = 11  # the query's picture and its ten results
WARM_LINE = "cbir: warm start done"  # python -m cbir app's line (cbir.cli.serve)
STREAMLIT_FLAGS = [
    "--server.headless",
    "true",
    "--browser.gatherUsageStats",
    "false",
    "--server.fileWatcherType",
    "none",
]


def server_first_queries(server: str, photo: str, query: bytes, work: Path, think: float) -> dict:
    """A fresh ``server`` (a key of :data:`SERVERS`): seconds until ready, then its first and second query."""
    from benchmarks.browser import LOOPBACK, free_port, running_server

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    address = ["--server.port", str(port), "--server.address", LOOPBACK, *STREAMLIT_FLAGS]
    command, health = {
        "app": ([sys.executable, "-m", "cbir", "app", "--", *address], "/_stcore/health"),
        "streamlit": (
            [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"), *address],
            "/_stcore/health",
        ),
        "api": ([sys.executable, "-m", "cbir", "serve", "--port", str(port), "--no-access-log"], "/health"),
    }[server]
    started = time.monotonic()
    with running_server(command, port, health, work / f"{server}.log", env, 300, server) as running:
        row: dict = {"server": " ".join(command[1:4])}
        if server == "app":
            from benchmarks.browser import wait_for

            wait_for(lambda: WARM_LINE in running.log(), 300, "the warm start", interval=0.1)
        row["ready_s"] = time.monotonic() - started
        if server == "api":
            row.update(api_queries(running.url, photo, query))
        else:
            (work / photo).with_suffix(".png").write_bytes(query)
            row.update(page_queries(running.url, (work / photo).with_suffix(".png"), work, think))
    return row


def api_queries(url: str, photo: str, query: bytes) -> dict:
    """The first and second ``POST /search`` of the photo: the server's own time and the client's."""
    import httpx

    row = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for which in ("first", "second"):
            began = time.perf_counter()
            answer = client.post("/search", params={"k": 10}, files={"image": (f"{photo}.png", query, "image/png")})
            row[f"{which}_client_ms"] = (time.perf_counter() - began) * 1e3
            answer.raise_for_status()
            row[f"{which}_server_ms"] = answer.json()["timings_ms"]["total"]
            row[f"{which}_search_ms"] = answer.json()["timings_ms"]["search"]
    return row


def answer_times(driver: Any, path: Path, images: int = RESULT_IMAGES) -> dict[str, float]:
    """Give ``path`` to the Search page's uploader and wait for its answer: the page's times of it
    (:func:`benchmarks.browser.watch_answer`, ms after the start); ``RuntimeError`` if the page shows an error."""
    from benchmarks.browser import PAGE_S, page_errors, upload, wait_for, watch_answer

    read = watch_answer(driver, path.name, "Most similar images", images)
    upload(driver, path)
    times: dict[str, float] | None = None

    def answered() -> bool:
        nonlocal times
        times = read()
        return times is not None or bool(page_errors(driver))

    wait_for(answered, PAGE_S, f"the answer to {path.name}", interval=0.05)
    if errors := page_errors(driver):
        raise RuntimeError(f"the page shows an error: {errors}")
    assert times is not None
    return times


def page_queries(url: str, photo: Path, work: Path, think: float) -> dict:
    """In a headless Chromium: open the Search page, wait until its run ended and ``think`` seconds more (a person
    choosing a file), upload ``photo``, wait for its ten results; twice (the second time under another name, so that
    the page answers it again)."""
    from benchmarks.browser import (
        PAGE_S,
        chromium,
        metric_text,
        open_page,
        query_time_ms,
        wait_for,
        wait_until_idle,
    )
    from cbir.app.formats import parse_duration

    row: dict = {}
    driver = chromium(work / "profile")
    try:
        began = time.perf_counter()
        open_page(driver, f"{url}/Search", "input[type=file]")
        row["page_open_s"] = time.perf_counter() - began
        wait_until_idle(driver, PAGE_S, "the Search page's first run")
        time.sleep(think)  # a person choosing the file
        for which, path in (("first", photo), ("second", photo.with_name(f"again-{photo.name}"))):
            path.write_bytes(photo.read_bytes())
            times = answer_times(driver, path)
            row[f"{which}_client_ms"] = times["done"]
            row[f"{which}_answer_ms"] = times["done"] - times["picked"]  # the page's part: WebDriver's left out
            for stage in ("picked", "running", "shown", "finished"):
                row[f"{which}_{stage}_ms"] = times.get(stage)
            wait_for(lambda: query_time_ms(driver) is not None, 10, "the page's Query time", interval=0.1)
            row[f"{which}_server_ms"] = query_time_ms(driver)
            search_s = parse_duration(metric_text(driver, "Search time") or "")
            row[f"{which}_search_ms"] = None if search_s is None else search_s * 1e3
    finally:
        driver.quit()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds between start and first query (default: when the warm-up is done)",
    )
    parser.add_argument("--child", choices=["warm", "cold"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, help="time the first query of fresh servers instead (see above)"
    )
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="with --servers: seconds between the Search page's first run ending and the upload (a person choosing "
        "a file; the page loads the browser code its answer needs meanwhile)",
    )
    args = parser.parse_args(argv)
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png

    photo = next(iter(SAMPLE_PHOTOS))
    if args.child:
        print(json.dumps(first_queries(args.child == "warm", args.wait, sample_photo_png(photo))))
        return 0
    if args.servers:
        with tempfile.TemporaryDirectory(prefix="cbir-warm-") as work:
            rows = [
                server_first_queries(server, photo, sample_photo_png(photo), Path(work), args.think)
                for server in args.servers
            ]
        print(
            f"query: the sample photo {photo!r} uploaded as PNG, {args.think:g} s after the page's run ended; goal: "
            "first query <= 300 ms end to end"
        )
        print(pd.DataFrame(rows).round(1).to_string(index=False, na_rep=""))
        print(machine_line())
        return 0
    frames = []
    for case in ("warm", "cold"):
        command = [sys.executable, __file__, "--child", case]
        if args.wait is not None:
            command += ["--wait", str(args.wait)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        extra = f", warm-up {result['warm_up_s']:.1f} s in the background" if result.get("warm_up_s") else ""
        error = f"; warm start stopped: {result['warm_error']}" if result.get("warm_error") else ""
        print(f"{case}: imports {result['import_s']:.1f} s{extra}{error}")
        frames.append(pd.DataFrame(result["rows"]).assign(case=case))
    table = pd.concat(frames, ignore_index=True)[
        ["case", "setting", "source", "first_ms", "embed_ms", "search_ms", "second_ms"]
    ]
    print(f"query: the sample photo {photo!r}; goal: first query <= 300 ms end to end, its search <= 20 ms")
    print(table.round(1).to_string(index=False))
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
