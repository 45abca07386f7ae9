"""The app at scale, in a real browser: ``streamlit run app.py`` on a synthetic collection (written by
``benchmarks/scale.py --write-workspace``) and headless Chromium (the helpers of ``benchmarks/browser.py``).

    .venv/bin/python benchmarks/scale.py --n 1000000 --write-workspace artifacts/scale/app
    .venv/bin/python benchmarks/scale_app.py --artifacts artifacts/scale/app            # 2 passes: cold, warm

Each pass starts a fresh server and browser, then:

1. **Index tuning**: seconds until the first figure is drawn (the exact scan's per-class mAP) and until the page
   is idle (the LSH setting evaluated; the background sweep runs on request at this size), the longest time the
   progress bar's text stood still while the page was running, and the note on the query sample. A fresh browser
   opens the page's URL, so it also loads Plotly's JavaScript for the page's first chart while the LSH setting is
   evaluated: its main thread is busy for a second or two then and shows no progress, whatever the server sends.
2. **Search**: picks a collection row by number and times until the ten results are drawn, with the page's own
   "Search only" figure.
3. **Index tuning again**, in a new session of the same server: what the next user waits for; then the first
   slider (g) moved one step: an LSH setting built and evaluated at this size in a browser that has Plotly loaded,
   with the same watch of its progress.
4. **Model comparison**: seconds until its results table is drawn and until it is idle (scan and LSH with and
   without the distractors; the reference indexes wait for a request at this size), and the progress watch.

``--steps`` times, in-process and without a browser, what the tuning page computes before its first figure, then
the LSH evaluation that follows it: the longest gap between its progress reports and the longest time a 50 ms
ticker thread was kept waiting (the GIL held), which bound how long the page's bar can stand still on the server.

The first pass runs with an empty cache of exact answers (``--keep-cache`` keeps it), so it pays for the exact scan
of the query sample; the second reads the answers the first one stored.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (first: this checkout's cbir and benchmarks, not installed ones)

# isort: split
from benchmarks.browser import (
    app_running,
    body_text,
    chromium,
    elements,
    move_first_slider,
    page_errors,
    result_images,
    slider_values,
    streamlit_server,
    wait_for,
)

POLL_S = 0.1
PAGE_LIMIT_S = 1200


def watch_page(driver: Any, first: str, limit: float = PAGE_LIMIT_S) -> dict[str, Any]:
    """Poll the page until it is idle: seconds to the first element matching ``first``, to idle, and the longest
    stretch with the app running and the progress texts unchanged (``still_at``: the text then and when it began)."""
    start = time.perf_counter()
    first_s = None
    last_text, last_change, longest, calm = None, start, 0.0, 0
    still_at = ""
    while time.perf_counter() - start < limit:
        now = time.perf_counter()
        if first_s is None and elements(driver, first):
            first_s = now - start
        running = app_running(driver)
        try:
            text = " | ".join(str(bar.text) for bar in elements(driver, '[data-testid="stProgress"]'))
        except Exception:  # redrawn while read
            text = last_text
        if text != last_text or not running:
            if now - last_change > longest:
                longest = now - last_change
                still_at = f"{last_text or '(no progress bar)'!r} from {last_change - start:.1f} s"
            last_text, last_change = text, now
        calm = 0 if running else calm + 1
        if calm >= 5 and first_s is not None:
            break
        if page_errors(driver):
            break
        time.sleep(POLL_S)
    return {
        "first_s": first_s,
        "idle_s": time.perf_counter() - start,
        "longest_still_s": longest,
        "still_at": still_at,
        "errors": page_errors(driver),
    }


def one_pass(artifacts: Path, collection: Path, workdir: Path, row: int) -> dict[str, Any]:
    from selenium.webdriver.common.keys import Keys

    env = {"CBIR_ARTIFACTS": str(artifacts.resolve()), "CBIR_COLLECTION": str(collection.resolve())}
    result: dict[str, Any] = {}
    with streamlit_server(workdir / "server.log", env) as server:
        driver = chromium(workdir / "profile")
        try:
            driver.get(f"{server.url}/Index_tuning")
            tuning = watch_page(driver, '[data-testid="stPlotlyChart"]')
            text = body_text(driver)
            result["tuning"] = tuning
            notes = [line for line in text.splitlines() if line.startswith("Evaluated on a random sample")]
            result["tuning_sample_note"] = notes[0] if notes else None
            driver.get(f"{server.url}/Search")
            wait_for(lambda: elements(driver, '[data-testid="stNumberInput"] input'), 300, "the row picker")
            field = elements(driver, '[data-testid="stNumberInput"] input')[0]
            started = time.perf_counter()
            field.send_keys(str(row), Keys.ENTER)
            wait_for(lambda: result_images(driver) >= 11 or page_errors(driver), 300, "ten results", interval=0.05)
            result["search_s"] = time.perf_counter() - started
            metrics = [str(m.text).replace("\n", " ") for m in elements(driver, '[data-testid="stMetric"]')]
            result["search_metrics"] = metrics
            result["search_errors"] = page_errors(driver)
            driver.get(f"{server.url}/Index_tuning")  # a second visit (a new session): the cached evaluations
            result["tuning_again"] = watch_page(driver, '[data-testid="stPlotlyChart"]')
            before = slider_values(driver)[0]
            move_first_slider(driver)
            wait_for(lambda: slider_values(driver)[0] != before, 30, "the slider to move", interval=0.05)
            wait_for(lambda: app_running(driver), 30, "the page to rerun", interval=0.05)
            result["slider"] = watch_page(driver, '[data-testid="stPlotlyChart"]')
            result["slider"]["setting"] = f"g {before} → {slider_values(driver)[0]}"
            driver.get(f"{server.url}/Model_comparison")
            result["comparison"] = watch_page(driver, '[data-testid="stDataFrame"]')
        finally:
            driver.quit()
    return result


def page_steps(artifacts: Path, collection: Path) -> None:
    """What the tuning page computes before its first figure, step by step in this (fresh) process, without a
    server or browser: the modules, the feature sets, the LSH defaults, the exact scan's evaluation (from its stored
    answers when there are some) and the figure."""
    os.environ.update({"CBIR_ARTIFACTS": str(artifacts.resolve()), "CBIR_COLLECTION": str(collection.resolve())})
    started = last = time.perf_counter()

    def step(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        print(f"{now - last:6.2f} s  {what}", flush=True)
        last = now

    import streamlit  # noqa: F401  (the server has it before the page runs)

    step("import streamlit")
    from cbir.app import plots
    from cbir.core import config
    from cbir.evaluation import tuning
    from cbir.features import workspace
    from cbir.indexes.registry import IndexConfig

    step("import cbir (plots, tuning)")
    choices = workspace.complete_feature_sets(str(config.default_collection()), workspace.workspace_version())
    label, path = next(iter(choices.items()))
    version = workspace.file_version(path)
    step(f"feature sets listed ({label})")
    defaults = tuning.lsh_defaults_for(path, version)
    step(f"LSH defaults ({defaults.label})")
    scan = tuning.evaluate_for(path, version, IndexConfig("scan"))
    step(f"exact scan evaluated on {scan.n_queries:,} queries (mAP {scan.map:.3f})")
    plots.fig_per_class(None, scan.per_class).to_json()
    step("first figure")
    print(f"{time.perf_counter() - started:6.2f} s  in all", flush=True)
    server_side_stillness(lambda progress: tuning.evaluate_for(path, version, defaults, progress=progress))


def server_side_stillness(evaluate: Any, tick: float = 0.05) -> None:
    """Run ``evaluate(progress)`` with a ticker thread beside it; print the longest gap between progress reports
    (and the stages around it) and the longest the ticker waited beyond its ``tick`` (the GIL held)."""
    reports: list[tuple[float, str]] = [(time.perf_counter(), "start")]
    late, stop = [0.0], threading.Event()

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.wait(tick):
            now = time.perf_counter()
            late[0] = max(late[0], now - last - tick)
            last = now

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    evaluate(lambda stage, done, total: reports.append((time.perf_counter(), f"{stage} {done:,}/{total:,}")))
    stop.set()
    thread.join()
    reports.append((time.perf_counter(), "end"))
    gap, before, after = max((b[0] - a[0], a[1], b[1]) for a, b in itertools.pairwise(reports))
    print(
        f"{reports[-1][0] - reports[0][0]:6.2f} s  the default LSH setting evaluated: {len(reports) - 2} progress "
        f"reports, longest gap {gap:.2f} s ({before} → {after}); the GIL held at most {late[0]:.2f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, required=True, help="the folder given to --write-workspace")
    parser.add_argument("--collection", type=Path, default=None, help="default: the only synthetic-* folder in it")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--row", type=int, default=123_457, help="the collection row searched for")
    parser.add_argument("--keep-cache", action="store_true", help="keep the stored exact answers for the first pass")
    parser.add_argument(
        "--steps", action="store_true", help="only time the tuning page's steps before its first figure, in-process"
    )
    args = parser.parse_args()
    collection = args.collection or next(args.artifacts.glob("synthetic-*"))
    if args.steps:
        page_steps(args.artifacts, collection)
        return
    if not args.keep_cache:
        shutil.rmtree(args.artifacts / "cache" / "exact", ignore_errors=True)
    for number in range(1, args.passes + 1):
        with tempfile.TemporaryDirectory(prefix="cbir-scale-app-") as tmp:
            result = one_pass(args.artifacts, collection, Path(tmp), args.row)
        tuning, slider, compared = result["tuning"], result["slider"], result["comparison"]
        print(
            f"pass {number}: tuning page first figure "
            f"{tuning['first_s']:.1f} s, idle {tuning['idle_s']:.1f} s, "
            f"progress text still at most {tuning['longest_still_s']:.1f} s ({tuning['still_at']}), "
            f"errors {tuning['errors']}\n"
            f"  note: {result['tuning_sample_note']}\n"
            f"  search by row: results drawn {result['search_s']:.2f} s after Enter; {result['search_metrics']}; "
            f"errors {result['search_errors']}\n"
            f"  tuning page again (a new session of the same server): first figure "
            f"{result['tuning_again']['first_s']:.1f} s, idle {result['tuning_again']['idle_s']:.1f} s\n"
            f"  slider {slider['setting']}: idle after {slider['idle_s']:.1f} s, progress text still at most "
            f"{slider['longest_still_s']:.1f} s ({slider['still_at']}), errors {slider['errors']}\n"
            f"  comparison page: results table {compared['first_s']:.1f} s, idle {compared['idle_s']:.1f} s, progress "
            f"text still at most {compared['longest_still_s']:.1f} s ({compared['still_at']}), "
            f"errors {compared['errors']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
