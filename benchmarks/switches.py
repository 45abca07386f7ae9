"""How long the pages make a person wait in a real browser (issue 23: a metric switch and "Fastest at a recall"
≤ 3 s after the first computation, the comparison page ≤ 10 s cold): ``streamlit run app.py`` + headless Chromium
at 1400 px on the default collection; the tuning page opened cold, then its metric switched back and forth once
both metrics' sweeps are computed; the Search page's "Fastest at a recall" and its metric switch; with
``--comparison``, first the comparison page on a fresh server with nothing on disk, and last on a second fresh
server (a restart) that reads what the first one kept on disk.

    python benchmarks/switches.py [--switches 4] [--comparison]

Each figure runs from the change (the option clicked, or the page's navigation for a page opened) to the page's
last DOM change once it has settled (:func:`benchmarks.browser.settled_seconds`: Streamlit's script state not
running, no stale element, nothing changed for 0.3 s): the script's run and the browser's drawing, without the
time spent making sure it ended (the figures before 2026-12-06 12:00 waited for the page to be idle twice half a
second apart and included ~1.5 s of that). Printed beside the load average.

The server's artifacts are a temporary folder holding links to this checkout's collections, features and weights
(read only) and a cache of its own, so every run computes its sweeps and comparisons once (the "cold" steps) and
nothing is written beside the real data. Run from another checkout (``PYTHONPATH=<it> python
<it>/benchmarks/switches.py``) to compare versions side by side.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

from benchmarks.browser import (
    choose_option,
    choose_radio,
    chromium,
    elements,
    settled_seconds,
    streamlit_server,
    wait_for,
    wait_until_idle,
    watch_page,
)

TIMEOUT_S = 900


def page_seconds(driver: Any, url: str, name: str, first: str | None = None) -> float:
    """Open ``url`` and time it from the navigation to the settled page (the server's run included); ``first``: a
    CSS selector whose first match is timed too (from the navigation, polled every 50 ms: the results table's first
    rows on a page that draws it as it grows)."""
    started = time.perf_counter()
    driver.get(url)
    if first is not None:
        wait_for(lambda: elements(driver, first), TIMEOUT_S, first, interval=0.05)
        print(f"{name}, {first} first drawn: {time.perf_counter() - started:.1f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    seconds = settled_seconds(driver, 0.0, TIMEOUT_S, name, rerun=False)
    print(f"{name}: {seconds:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    return seconds


def change_seconds(driver: Any, name: str, change: Callable[[Callable[[], object]], object]) -> float:
    """Time ``change(mark)`` from ``mark()`` (called by it just before the click) to the settled page; printed
    beside the figure the earlier measurement gave for the same step (the whole step, then half a second, then
    the page idle twice half a second apart)."""
    step_started = time.perf_counter()
    started = [watch_page(driver)]
    change(lambda: started.__setitem__(0, watch_page(driver)))
    seconds = settled_seconds(driver, started[0], TIMEOUT_S, name)
    time.sleep(0.5)
    wait_until_idle(driver, TIMEOUT_S, name)
    before = time.perf_counter() - step_started
    print(f"{name}: {seconds:.1f} s (the earlier measurement: {before:.1f} s; load {os.getloadavg()[0]:.1f})",
          flush=True)  # fmt: skip
    return seconds


def summary(name: str, times: list[float]) -> None:
    times = sorted(times)
    print(f"{name}: median {times[len(times) // 2]:.1f} s, {times[0]:.1f}–{times[-1]:.1f} s", flush=True)


def tuning_and_search(driver: Any, url: str, switches: int) -> None:
    """The tuning page cold, its metric switches, then the Search page's "Fastest at a recall" and its switches."""
    page_seconds(driver, f"{url}/Index_tuning", "tuning page cold (euclidean sweep computed)")
    change_seconds(driver, "metric to cosine, cold (its sweep computed)",
                   lambda mark: choose_option(driver, "Metric", "Cosine", mark))  # fmt: skip
    times = []
    for done in range(switches):
        metric = "Euclidean" if done % 2 == 0 else "Cosine"
        times.append(change_seconds(driver, f"metric to {metric.lower()}",
                                    lambda mark, m=metric: choose_option(driver, "Metric", m, mark)))  # fmt: skip
    summary("tuning page, metric switches after the first computation", times)
    page_seconds(driver, f"{url}/Search", "Search page opened")
    fastest = [change_seconds(driver, '"Fastest at a recall" chosen',
                              lambda mark: (mark(), choose_radio(driver, "Fastest at a recall")))]  # fmt: skip
    for done in range(switches):
        metric = "Cosine" if done % 2 == 0 else "Euclidean"
        fastest.append(change_seconds(driver, f'"Fastest at a recall", metric to {metric.lower()}',
                                      lambda mark, m=metric: choose_option(driver, "Metric", m, mark)))  # fmt: skip
    summary('"Fastest at a recall" and its metric switches (sweeps on disk)', fastest)


def precompute(env: dict[str, str]) -> None:
    """What ``python -m cbir extract`` computes ahead for the comparison page, in a process of its own with the
    server's artifacts (:func:`cbir.evaluation.comparison.keep_default_comparison`), timed."""
    import subprocess
    import sys

    started = time.perf_counter()
    code = "from cbir.evaluation.comparison import keep_default_comparison; print(len(keep_default_comparison()))"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, capture_output=True)
    print(f"setup's precompute (the comparison page's first view, {done.stdout.decode().strip()} feature set(s)): "
          f"{time.perf_counter() - started:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=4, help="metric switches after both sweeps are computed")
    parser.add_argument("--comparison", action="store_true", help="also the comparison page cold and restarted")
    parser.add_argument("--comparison-only", action="store_true", help="the comparison page only (cold, restarted)")
    parser.add_argument(
        "--after-setup",
        action="store_true",
        help="first what `python -m cbir extract` leaves on disk for the comparison page (its precompute, timed)",
    )
    args = parser.parse_args()
    print(machine_line(), flush=True)
    real = PROJECT_ROOT / "artifacts"
    with tempfile.TemporaryDirectory(prefix="cbir-switches-") as folder:
        artifacts = Path(folder) / "artifacts"
        artifacts.mkdir()
        for name in ("collections", "features", "weights"):
            if (real / name).exists():
                (artifacts / name).symlink_to((real / name).resolve(), target_is_directory=True)
        env = {"CBIR_ARTIFACTS": str(artifacts), "PYTHONPATH": str(PROJECT_ROOT)}
        args.comparison = args.comparison or args.comparison_only
        if args.after_setup:
            precompute(env)
        for server_run in (1, 2) if args.comparison else (1,):
            log = Path(folder) / f"streamlit-{server_run}.log"
            with streamlit_server(log, env) as server:
                driver = chromium(Path(folder) / f"profile-{server_run}")
                try:
                    driver.set_window_size(1400, 2000)
                    if args.comparison:
                        what = "a restarted server, read from disk"
                        if server_run == 1:
                            what = "after the setup's precompute" if args.after_setup else "nothing on disk"
                        page_seconds(driver, f"{server.url}/Model_comparison",
                                     f"comparison page on a fresh server ({what})",
                                     first='[data-testid="stDataFrame"]')  # fmt: skip
                    if server_run == 1 and not args.comparison_only:
                        tuning_and_search(driver, server.url, args.switches)
                finally:
                    driver.quit()
    print(machine_line(), flush=True)


if __name__ == "__main__":
    main()
