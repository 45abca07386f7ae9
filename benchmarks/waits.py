"""What the tuning and comparison pages make a person wait for, before and after the sweep was kept on disk.

    .venv/bin/python benchmarks/waits.py [--features PATH]

In one process, on the default collection's newest feature set (or ``--features``), with a temporary artifacts
folder (its cache starts empty; the collection, features and weights are linked), for each metric: the background
sweep computed (what every server start and every metric or distractor switch paid before: "Fastest at a recall",
the recommendation, the charts), then read back from disk by a fresh split (what a later server, or the other
setting's switch back, pays now); the current setting's figures after a metric switch (the exact scan and the
default LSH setting evaluated); then the comparison page's computations (the table: both distractor settings, the
recommended LSH, the references; the distance and hubness analyses) the first time, and kept on disk (what a
restarted server, or a metric switched back, pays). Prints a table with the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=None, help="feature store (default: the newest)")
    args = parser.parse_args(argv)
    real = PROJECT_ROOT / "artifacts"
    work = Path(tempfile.mkdtemp(prefix="cbir-waits-"))
    for name in ("collections", "features", "weights", "hygiene"):
        if (real / name).exists():
            (work / name).symlink_to((real / name).resolve(), target_is_directory=True)
    os.environ["CBIR_ARTIFACTS"] = str(work)  # the caches (exact answers, sweeps) go here, never into artifacts/

    from cbir.core import config

    config.quiet_native_libraries()
    from cbir.evaluation import comparison, tuning
    from cbir.evaluation.tuning import fastest_config
    from cbir.features.workspace import base_version, file_version, resolve_feature_path
    from cbir.indexes.registry import IndexConfig

    path = str(args.features or resolve_feature_path())
    version = file_version(path)
    kept_as = base_version(path)  # as the app keeps its sweeps
    rows: list[tuple[str, float]] = []
    for metric in ("euclidean", "cosine"):
        rows.append(
            (
                f"{metric}: sweep computed (before: every start and switch)",
                timed(lambda metric=metric: tuning.sweep_for(path, version, metric, kept_as=kept_as)),
            )
        )
        tuning.clear_splits()  # as a new server process: nothing in memory
        rows.append(
            (
                f"{metric}: sweep read back from disk (after)",
                timed(lambda metric=metric: tuning.sweep_for(path, version, metric, kept_as=kept_as)),
            )
        )
        rows.append(
            (
                f"{metric}: Fastest at a recall 0.9, sweep on disk",
                timed(
                    lambda metric=metric: fastest_config(tuning.sweep_for(path, version, metric, kept_as=kept_as), 0.9)
                ),
            )
        )
        defaults = tuning.lsh_defaults_for(path, version, metric)
        rows.append(
            (
                f"{metric}: the setting's figures after a switch (scan + LSH)",
                timed(
                    lambda metric=metric, defaults=defaults: [
                        tuning.evaluate_for(path, version, config) for config in (IndexConfig("scan", metric), defaults)
                    ]
                ),
            )
        )
    tuning.clear_splits()
    sets = (("features", path, version),)

    def comparison_page(metric: str) -> None:  # what the page computes: the table, distances, hubness (no photos)
        comparison.compare(sets, metric, True, keep=True)
        comparison.distance_analysis_for(path, version, keep=True)
        comparison.hubness_analysis_for(path, version, metric, keep=True)

    rows.append(("comparison page, first computation (sweeps on disk)", timed(lambda: comparison_page("euclidean"))))
    tuning.clear_splits()
    rows.append(
        ("comparison page, kept on disk (a new server, another session)", timed(lambda: comparison_page("euclidean")))
    )
    rows.append(("comparison page, metric switch, first computation", timed(lambda: comparison_page("cosine"))))
    rows.append(("comparison page, metric switch, kept on disk", timed(lambda: comparison_page("cosine"))))
    print(f"feature set: {path}\n{machine_line()}")
    print("| step | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
