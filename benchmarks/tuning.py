"""The Index tuning page's latency: rebuild an index and evaluate every validation query, as a slider move does.

    .venv/bin/python benchmarks/tuning.py [--features PATH] [--repeats 5]

On the default collection's feature set (or ``--features``), the split (index rows, validation queries, the exact
scan's answers) is prepared once, as the page memoises it; then each setting is built and evaluated
``--repeats`` times by :func:`cbir.evaluation.evaluate.evaluate_split` (what
:func:`cbir.evaluation.tuning.evaluate_for`, behind the
page, runs on the memoised split), and the best and median
wall times are printed with the index build's share, mAP@10 and recall@10 (goal of issue 10: under 1 s at the
default collection's size). Settings: the page's default LSH, the sweep's recommendation, the PCA settings of
``benchmarks/ann.py`` (float32 and uint8 shortlists) and FAISS HNSW.
"""

from __future__ import annotations

import harness  # noqa: F401  (first: this checkout's cbir, not an installed one)

from cbir.core import config

config.quiet_native_libraries()  # as the app does, before numpy loads OpenBLAS

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cbir.evaluation import tuning  # noqa: E402
from cbir.evaluation.evaluate import evaluate_split  # noqa: E402
from cbir.features import workspace  # noqa: E402
from cbir.indexes.base import BaseIndex  # noqa: E402
from cbir.indexes.lsh import LSHIndex  # noqa: E402
from cbir.indexes.reference import HNSWIndex  # noqa: E402
from cbir.indexes.scan import SequentialScan  # noqa: E402

GOAL_SECONDS = 1.0
# the settings the page's sliders give (E2LSH g, h, w, probes): the default, and a heavy corner of the sliders
PAGE_DEFAULT = "page sliders: default LSH"
PAGE_LARGEST = "page sliders: g=16, widest w, probes=8"


def settings(path: str, version: int, vectors: np.ndarray) -> dict[str, Callable[[], BaseIndex]]:
    """The settings timed: the page's default, the PCA shortlists of the ANN benchmark, the HNSW reference."""
    pca = {"n_tables": 16, "n_projections": 6, "probes": 2, "reduce_dim": 48, "min_collisions": 3}
    codes = {"rerank": 30, "score_dim": 128}
    page = tuning.lsh_defaults_for(path, version)
    return {
        PAGE_DEFAULT: page.build,
        PAGE_LARGEST: replace(page, n_tables=16, probes=8, bucket_width=tuning.width_range(page.bucket_width)[1]).build,
        "scan (stored exact answers)": SequentialScan,
        "LSH PCA+shortlist (R=100)": lambda: LSHIndex.for_data(vectors, 1.7, **pca, rerank=100),
        "LSH PCA+uint8 shortlist (R=30, s=128)": lambda: LSHIndex.for_data(vectors, 1.7, **pca, **codes),
        "FAISS HNSW": HNSWIndex,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default=None, help="feature set (default: the default collection's newest)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path = str(workspace.resolve_feature_path(args.features))
    version = workspace.file_version(path)
    start = time.perf_counter()
    split = tuning.split_for(path, version, True)
    print(
        f"{path}: {len(split.index_rows):,} indexed, {len(split.query_rows):,} queries; split ready in "
        f"{time.perf_counter() - start:.2f} s (once per server)"
    )
    rows = []
    for name, factory in settings(path, version, split.index_vectors).items():
        times, result = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = evaluate_split(factory(), split, k=10)
            times.append(time.perf_counter() - start)
        assert result is not None
        rows.append(
            {
                "setting": name,
                "best s": min(times),
                "median s": float(np.median(times)),
                "build s": result.fit_seconds,
                "mAP@10": result.map,
                "recall@10": result.recall,
                "visited %": 100 * result.mean_visited / len(split.index_rows),
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    page = table[table["setting"].isin([PAGE_DEFAULT, PAGE_LARGEST])]
    worst = page["median s"].max()
    verdict = "MET" if worst < GOAL_SECONDS else "NOT MET"
    print(
        f"the page's slider settings: rebuild + evaluation of every validation query at most {worst:.2f} s "
        f"(median) — goal < 1 s: {verdict}; the PCA settings (not on the sliders) include a PCA fit each"
    )


if __name__ == "__main__":
    main()
