"""The tuning page's reference points on a feature set: each reference index (FAISS HNSW and IVF-Flat, hnswlib,
cross-polytope LSH) fitted once and evaluated at each of its settings, as the page's background sweep does, with
the time the whole reference sweep takes.

    .venv/bin/python benchmarks/references.py                  # the default collection's ImageNet feature set
    .venv/bin/python benchmarks/references.py --features <feature set> --metric cosine --repeats 3

The split is the tuning page's (index + distractors indexed, the validation queries searched); the exact scan's
answers (the recall reference) are computed first and not counted. Prints the machine's load: timings on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import harness  # noqa: F401  (first: this checkout's cbir, not an installed one)
import pandas as pd

from cbir.core import config
from cbir.evaluation.evaluate import split_collection
from cbir.evaluation.tuning import reference_configs, reference_sweep
from cbir.features.sources import load_features
from cbir.indexes.warmup import warm_up

COLUMNS = ["label", "recall", "map", "mean_visited", "visited_fraction", "query_ms", "fit_seconds"]


def default_features() -> Path:
    stores = sorted((config.artifacts_dir() / "features").glob("*/efficientnet_lite0-*imagenet*/meta.json"))
    if not stores:
        raise SystemExit("no ImageNet feature store of the default collection: python -m cbir extract")
    return stores[0].parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=None, help="feature set (default: the default collection's)")
    parser.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole reference sweep (all printed)")
    args = parser.parse_args(argv)
    path = args.features or default_features()
    features = load_features(path)
    split = split_collection(features.features, features.labels, features.roles, with_distractors=True)
    warm_up()
    split.exact_ids(args.metric, 10)  # the recall reference, once (the page keeps it on disk)
    configs = reference_configs(args.metric)
    print(f"{path}: {split.n_indexed:,} indexed x {split.query_vectors.shape[1]}-d, {split.n_queries} queries")
    for run in range(args.repeats):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        table = reference_sweep(split, configs)
        seconds = time.perf_counter() - started
        table["label"] = [config.label for config in configs]
        print(f"\nrun {run + 1}: {len(table)} reference settings in {seconds:.2f} s (load average {load:.1f})")
        with pd.option_context("display.width", 200, "display.max_colwidth", 70):
            print(table[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
