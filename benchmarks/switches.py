"""How long the tuning page takes, in a real browser, to show a metric switch once both metrics' sweeps are computed
(issue 23: ≤ 3 s after the first computation): ``streamlit run app.py`` + headless Chromium at 1400 px on the default
collection, the page opened cold, then the metric switched back and forth; each step's time (the script's rerun and
the browser's drawing, until the page is idle twice half a second apart) printed beside the load average.

    python benchmarks/switches.py [--switches 4]

The server's artifacts are a temporary folder holding links to this checkout's collections, features and weights
(read only) and a cache of its own, so every run computes its sweeps once (the "cold" steps) and nothing is written
beside the real data. Run from another checkout (``PYTHONPATH=<it> python <it>/benchmarks/switches.py``) to compare
versions side by side.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

from benchmarks.browser import choose_option, chromium, streamlit_server, wait_until_idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=4, help="metric switches after both sweeps are computed")
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
        with streamlit_server(Path(folder) / "streamlit.log", env) as server:
            driver = chromium(Path(folder) / "profile")
            try:
                driver.set_window_size(1400, 2000)

                def step(name: str, action: Callable[[], object]) -> float:
                    started = time.perf_counter()
                    action()
                    time.sleep(0.5)
                    wait_until_idle(driver, 900, name)
                    seconds = time.perf_counter() - started
                    print(f"{name}: {seconds:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
                    return seconds

                step("tuning page cold (euclidean sweep computed)", lambda: driver.get(f"{server.url}/Index_tuning"))
                step("metric to cosine, cold (its sweep computed)", lambda: choose_option(driver, "Metric", "Cosine"))
                times = []
                for done in range(args.switches):
                    metric = "Euclidean" if done % 2 == 0 else "Cosine"
                    switch = lambda m=metric: choose_option(driver, "Metric", m)  # noqa: E731
                    times.append(step(f"metric to {metric.lower()}", switch))
                times.sort()
                print(f"switches after the first computation: median {times[len(times) // 2]:.1f} s, "
                      f"{times[0]:.1f}–{times[-1]:.1f} s", flush=True)  # fmt: skip
                print(machine_line(), flush=True)
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
