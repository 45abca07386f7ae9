"""Screenshots of the app's tuning and comparison pages in headless Chromium: the whole page and each visible chart,
to look at the sweep's reference points (``python benchmarks/page_shots.py``; needs chromium + chromedriver).

The server reads the default artifacts (collections, feature sets, weights, fine-tuning runs) through symbolic links
in ``<out>/artifacts`` and writes its caches (the exact scan's answers) there, never into the real ``artifacts/``.
Prints how long each page took to draw (the comparison page evaluates every feature set × index × distractor
setting and the background sweeps the first time) and the errors it shows.

    .venv/bin/python benchmarks/page_shots.py --out artifacts/peers-shots
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one

from benchmarks.browser import chromium, elements, open_page, page_errors, streamlit_server, wait_until_idle
from cbir.core import config

PAGES = (("Index_tuning", "tuning", 900), ("Model_comparison", "comparison", 1800))  # (url, name, seconds allowed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "artifacts" / "page-shots")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    artifacts = out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    for name in ("collections", "features", "weights", "finetune"):
        link, real = artifacts / name, (config.artifacts_dir() / name).resolve()
        if real.exists() and not link.exists():
            link.symlink_to(real, target_is_directory=True)
    env = {"CBIR_ARTIFACTS": str(artifacts), "PYTHONPATH": str(PROJECT_ROOT)}
    with streamlit_server(out / "server.log", env) as server:
        driver = chromium(out / "profile", window=(1500, 2200))
        try:
            for url, name, allowed in PAGES:
                started = time.perf_counter()
                open_page(driver, f"{server.url}/{url}", '[data-testid="stApp"]')
                time.sleep(3)
                wait_until_idle(driver, allowed, f"the {name} page")
                print(f"{name}: drawn in {time.perf_counter() - started:.0f} s; errors: {page_errors(driver)}")
                driver.set_window_size(1500, 6000)
                time.sleep(2)
                driver.save_screenshot(str(out / f"{name}-page.png"))
                for i, chart in enumerate(elements(driver, '[data-testid="stPlotlyChart"]')):
                    if chart.size["width"] == 0:  # in a tab not shown
                        continue
                    driver.execute_script("arguments[0].scrollIntoView();", chart)
                    time.sleep(0.5)
                    chart.screenshot(str(out / f"{name}-chart{i}.png"))
                driver.set_window_size(1500, 2200)
        finally:
            driver.quit()
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
