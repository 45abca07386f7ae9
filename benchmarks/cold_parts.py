"""Two parts of the comparison page's cold computation, each way side by side in one process (issue 23): the budgeted
recommendation search with every setting timed one query at a time (before) and without (now: its pick needs mAP
and visited only), and ``fit_pca`` (cross-polytope LSH's PCA) with its eigendecomposition on BLAS' threads (before)
and on one (now); and the budgeted search one setting at a time (before) and ``tuning.RECOMMEND_WORKERS`` settings
at once in threads (now).

    python benchmarks/cold_parts.py [--features PATH] [--repeats 3]

Prints each pair beside the load average, and whether both ways gave the same pick and the same axes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any

import numpy as np
from harness import add_features_argument, features_or_default, machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_features_argument(parser)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from cbir.core import config

    config.quiet_native_libraries()
    from cbir.evaluation import evaluate, sweep, tuning
    from cbir.features.sources import SPLIT_COLUMNS
    from cbir.features.workspace import file_version, load_feature_set
    from cbir.indexes import pca
    from cbir.indexes.warmup import warm_up

    warm_up()
    path = str(features_or_default(args.features))
    version = file_version(path)
    split = tuning.split_for(path, version, True)
    split.exact_answer("euclidean", 10)
    vectors = split.indexed_vectors()
    grid = tuning.default_grid(tuning.width_sample(load_feature_set(path, version, SPLIT_COLUMNS)), "euclidean")
    budget = tuning.RECOMMEND_BUDGET_FRACTION * split.n_indexed

    def timed_singly(*positional: Any, **named: Any) -> evaluate.EvaluationResult:
        named.pop("single", None)  # as before: every setting also timed one query at a time
        return evaluate.evaluate_split(*positional, **named)

    def budgeted(workers: int = 1) -> tuple[float, Any]:
        started = time.perf_counter()
        table = sweep.budgeted_sweep(split, grid, budget, workers=workers)
        return time.perf_counter() - started, tuning.recommended_config(table, split.n_indexed)

    def fit(one_thread: Any) -> tuple[float, np.ndarray]:
        pca.single_query = one_thread
        started = time.perf_counter()
        fitted = pca.fit_pca(vectors, 128)
        return time.perf_counter() - started, fitted.components

    now_eval, one_thread = sweep.evaluate_split, pca.single_query
    print(machine_line())
    print("| part | before (s) | now (s) | same result | load (1 min) |\n|---|---|---|---|---|")
    for _ in range(args.repeats):
        sweep.evaluate_split = timed_singly
        before, pick_before = budgeted()
        sweep.evaluate_split = now_eval
        now, pick_now = budgeted()
        print(f"| budgeted recommendation search | {before:.2f} | {now:.2f} | {pick_before == pick_now} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)  # fmt: skip
    for _ in range(args.repeats):
        before, pick_before = budgeted()
        now, pick_now = budgeted(tuning.RECOMMEND_WORKERS)
        print(f"| budgeted search, one setting / {tuning.RECOMMEND_WORKERS} at once (threads) | {before:.2f} | "
              f"{now:.2f} | {pick_before == pick_now} | {os.getloadavg()[0]:.2f} |", flush=True)  # fmt: skip
    for _ in range(args.repeats):
        before, axes_before = fit(contextlib.nullcontext)
        now, axes_now = fit(one_thread)
        print(f"| fit_pca, PCA-128 of {vectors.shape[0]:,} x {vectors.shape[1]} | {before:.2f} | {now:.2f} | "
              f"{np.array_equal(axes_before, axes_now)} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)  # fmt: skip
    print(machine_line())


if __name__ == "__main__":
    main()
