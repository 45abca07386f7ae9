"""What the tuning and comparison pages make a person wait for: computed cold, then read back from disk.

    .venv/bin/python benchmarks/waits.py [--features PATH] [--stages] [--comparison-only] [--page-switches]

In one process, on the default collection's newest feature set (or ``--features``), with temporary artifacts
folders (each cache starts empty; the collection, features and weights are linked), after the numba kernels are
loaded (what the server's warm start does before a page opens):

* the comparison page computed cold, nothing on disk (the exact answers, the recommended LSH setting, the exact
  scan, LSH and the reference indexes with and without the distractors, the distance and hubness analyses), then
  its metric switch (cosine) cold, then both read back from disk (a restarted server, another session);
* ``--stages``: the same cold computation stage by stage (each distractor setting's exact answers and each
  index's build and evaluation, the recommendation, the analyses; and for comparison the whole background sweep
  the page computed for its recommendation before), in a folder of its own;
* unless ``--comparison-only``, in a fresh folder, for each metric: the background sweep computed (what every
  server start and every metric or distractor switch paid before it was kept on disk), then read back by a fresh
  split; "Fastest at a recall"; the current setting's figures after a metric switch (the exact scan and the
  default LSH setting evaluated); the comparison page with the sweeps on disk, then kept on disk;
* ``--page-switches``: the comparison page itself in Streamlit's AppTest, right after the first part (its
  comparisons on disk): opened, its metric switched, then switched back and forth (the app's caches, charts and
  tables, server side; the browser's drawing comes on top).

Prints tables with the load average.
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
from harness import machine_line, switch_page

Rows = list[tuple[str, float]]


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def fresh_artifacts() -> Path:
    """A new temporary artifacts folder with the real collection, features and weights linked, made the current one
    (``CBIR_ARTIFACTS``): the caches (exact answers, sweeps, comparisons) start empty and never touch artifacts/."""
    real = PROJECT_ROOT / "artifacts"
    work = Path(tempfile.mkdtemp(prefix="cbir-waits-"))
    for name in ("collections", "features", "weights", "hygiene"):
        if (real / name).exists():
            (work / name).symlink_to((real / name).resolve(), target_is_directory=True)
    os.environ["CBIR_ARTIFACTS"] = str(work)
    from cbir.evaluation import tuning

    tuning.clear_splits()  # as a new server process: nothing in memory
    return work


def page_label(path: str) -> str:
    """The label the pages give the feature set at ``path`` (a kept comparison is keyed by it)."""
    from cbir.features import workspace

    labels = {str(Path(p).resolve()): label for label, p in workspace.complete_feature_sets().items()}
    return labels.get(str(Path(path).resolve()), "features")


def comparison_page(path: str, version: int, metric: str) -> None:
    """What the comparison page computes (the app's way: kept on disk): the table, distances, hubness (no photos)."""
    from cbir.evaluation import comparison

    sets = ((page_label(path), path, version),)
    large = bool(comparison.large_feature_sets(sets))  # as the page: the recommendation and references when small
    comparison.compare(sets, metric, not large, references=not large, keep=True)
    comparison.distance_analysis_for(path, version, keep=True)
    comparison.hubness_analysis_for(path, version, metric, keep=True)


def comparison_rows(path: str, version: int) -> Rows:
    """The comparison page cold (nothing on disk), its metric switch cold, and both read back from disk."""
    from cbir.evaluation import tuning

    fresh_artifacts()
    rows = [
        (
            "comparison page cold, nothing on disk (euclidean)",
            timed(lambda: comparison_page(path, version, "euclidean")),
        ),
        ("comparison page, metric switch cold (cosine)", timed(lambda: comparison_page(path, version, "cosine"))),
    ]
    tuning.clear_splits()
    for metric in ("euclidean", "cosine"):
        rows.append(
            (
                f"comparison page ({metric}) read back from disk",
                timed(lambda m=metric: comparison_page(path, version, m)),
            )
        )
    return rows


def stage_rows(path: str, version: int, metric: str = "euclidean") -> Rows:
    """The comparison page's cold computation stage by stage, in a fresh folder; last, the background sweep that
    it computed for its recommendation before."""
    from cbir.core.names import REFERENCE_KINDS
    from cbir.evaluation import comparison, tuning
    from cbir.features.workspace import load_feature_set

    fresh_artifacts()
    rows: Rows = []

    def stage(name: str, run: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = run()
        rows.append((name, time.perf_counter() - started))
        return result

    for with_distractors in (True, False):
        split = tuning.split_for(path, version, with_distractors)
        stage(f"exact answers, {'with' if with_distractors else 'without'}", lambda s=split: s.exact_answer(metric, 10))
    lsh = stage("recommended LSH setting (budgeted search)", lambda: tuning.recommended_for(path, version, metric))
    for config in comparison.comparison_configs(load_feature_set(path, version), metric, recommended=lsh):  # type: ignore[arg-type]
        if config.kind in REFERENCE_KINDS:  # built once, the distractors added (what the page does)
            stage(
                f"{config.label}: built without, distractors added, both evaluated",
                lambda c=config: tuning.evaluate_pair_for(path, version, c),
            )
            continue
        for with_distractors in (True, False):
            setting = "with" if with_distractors else "without"
            stage(
                f"{config.label}, {setting}: built + evaluated",
                lambda c=config, w=with_distractors: tuning.evaluate_for(path, version, c, w),
            )
    stage("distance analysis", lambda: comparison.distance_analysis_for(path, version))
    stage("hubness analysis (no photos)", lambda: comparison.hubness_analysis_for(path, version, metric))
    rows.append(("= the page's computation", sum(seconds for _, seconds in rows)))
    stage(
        "(before: the whole background sweep, for the recommendation)", lambda: tuning.sweep_for(path, version, metric)
    )
    return rows


def sweep_rows(path: str, version: int, kept_as: int) -> Rows:
    """Per metric: the background sweep computed and read back, "Fastest at a recall", the setting's figures after
    a switch; then the comparison page with the sweeps on disk, and kept on disk."""
    from cbir.evaluation import tuning
    from cbir.evaluation.tuning import fastest_config
    from cbir.indexes.registry import IndexConfig

    fresh_artifacts()
    rows: Rows = []
    for metric in ("euclidean", "cosine"):

        def sweep(metric: str = metric) -> object:
            return tuning.sweep_for(path, version, metric, kept_as=kept_as)

        rows.append((f"{metric}: sweep computed (before: every start and switch)", timed(sweep)))
        tuning.clear_splits()  # as a new server process: nothing in memory
        rows.append((f"{metric}: sweep read back from disk (after)", timed(sweep)))
        rows.append(
            (f"{metric}: Fastest at a recall 0.9, sweep on disk", timed(lambda s=sweep: fastest_config(s(), 0.9)))
        )
        configs = (IndexConfig("scan", metric), tuning.lsh_defaults_for(path, version, metric))  # type: ignore[arg-type]
        rows.append(
            (
                f"{metric}: the setting's figures after a switch (scan + LSH)",
                timed(lambda c=configs: [tuning.evaluate_for(path, version, config) for config in c]),
            )
        )
    tuning.clear_splits()
    rows.append(
        (
            "comparison page, first computation (sweeps on disk)",
            timed(lambda: comparison_page(path, version, "euclidean")),
        )
    )
    tuning.clear_splits()
    rows.append(
        (
            "comparison page, kept on disk (a new server, another session)",
            timed(lambda: comparison_page(path, version, "euclidean")),
        )
    )
    rows.append(
        ("comparison page, metric switch, first computation", timed(lambda: comparison_page(path, version, "cosine")))
    )
    rows.append(
        ("comparison page, metric switch, kept on disk", timed(lambda: comparison_page(path, version, "cosine")))
    )
    return rows


def page_switch_rows(switches: int = 4) -> Rows:
    """The comparison page server side (Streamlit's AppTest on the default collection, in the current artifacts
    folder): opened, switched to cosine, then ``switches`` round trips between the metrics (both computed before)."""
    from streamlit.testing.v1 import AppTest

    def run(at: AppTest) -> float:
        seconds = timed(at.run)
        if at.exception:
            raise RuntimeError([e.value for e in at.exception])
        return seconds

    os.chdir(PROJECT_ROOT)
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=900).run()
    switch_page(at, "Model_comparison")
    rows = [("comparison page opened (AppTest; the comparisons on disk, the photos' hubness computed)", run(at))]
    at.selectbox(key="compare-metric").set_value("cosine")
    rows.append(("its metric switched to cosine", run(at)))
    for _ in range(switches):
        for metric in ("euclidean", "cosine"):
            at.selectbox(key="compare-metric").set_value(metric)
            rows.append((f"metric switched to {metric}, both computed before", run(at)))
    return rows


def print_rows(title: str, rows: Rows) -> None:
    print(f"\n{title}\n{machine_line()}\n| step | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=None, help="feature store (default: the newest)")
    parser.add_argument("--stages", action="store_true", help="also the cold comparison page stage by stage")
    parser.add_argument("--comparison-only", action="store_true", help="skip the background sweeps' waits")
    parser.add_argument("--page-switches", action="store_true", help="also the page's metric switches (AppTest)")
    args = parser.parse_args(argv)
    fresh_artifacts()  # before cbir reads its artifacts folder

    from cbir.core import config

    config.quiet_native_libraries()
    from cbir.features.workspace import base_version, file_version, resolve_feature_path
    from cbir.indexes.warmup import warm_up

    path = str(args.features or resolve_feature_path())
    version = file_version(path)
    print(f"feature set: {path}")
    print_rows(
        "numba kernels loaded (the server's warm start does it before a page opens)", [("warm-up", timed(warm_up))]
    )
    print_rows("the comparison page", comparison_rows(path, version))
    if args.page_switches:  # in the same folder: the comparisons of both metrics are on disk
        print_rows("the comparison page in Streamlit's AppTest (server side)", page_switch_rows())
    if args.stages:
        print_rows("the comparison page computed cold, stage by stage (euclidean)", stage_rows(path, version))
    if not args.comparison_only:
        print_rows(
            "the tuning page's sweeps, then the comparison page on them", sweep_rows(path, version, base_version(path))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
