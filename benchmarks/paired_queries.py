"""One query at a time on one thread, interleaved query by query: a paired timing that survives a shared machine.

    .venv/bin/python benchmarks/paired_queries.py                 # the default collection's features
    .venv/bin/python benchmarks/paired_queries.py --features PATH --rounds 5
    .venv/bin/python benchmarks/paired_queries.py --target-recall 0.9   # also T and R chosen at fit for 0.9

``benchmarks/ann.py`` times each method over all queries and then the scan, so a load that changes between the two
runs (other jobs on shared cores) moves the ratio. Here every query is answered by every method in turn (the order
rotated from query to query) before the next query, ``--rounds`` times; a method's time is the sum over queries of
its fastest answer to each. numba, BLAS and OpenMP run on one thread (ann-benchmarks' setting). Methods: the exact
scan, hnswlib (M=32) at ef 16, cross-polytope LSH with the uint8 shortlist gathered by id (``CrossPolytopeIndex``)
and with the codes in bucket order (``BlockPolytopeIndex``, the app's), both at L=8, log2(n)-2 bits, T = 4, 8, 16.
Prints recall@10 against the scan, ms per query, the ratios, and the load average.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from harness import (  # first: this checkout's cbir, not an installed one
    add_features_argument,
    features_or_default,
    machine_line,
)

from benchmarks.ann import K, one_thread, real_set
from cbir.core.metrics import recall_at_k
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.polytope import CrossPolytopeIndex, hashes_for_bits
from cbir.indexes.reference import HnswlibIndex
from cbir.indexes.registry import POLYTOPE_REDUCE_DIM, UINT8_RERANK, UINT8_SCORE_DIM
from cbir.indexes.scan import SequentialScan
from cbir.indexes.warmup import warm_up


def methods(X: np.ndarray, targets: list[float]) -> dict[str, object]:
    """The fitted indexes, by label (with ``targets``: the bucket-ordered index fitted for each target recall too)."""
    bits = round(np.log2(len(X))) - 2
    hashes, last_dim = hashes_for_bits(POLYTOPE_REDUCE_DIM, bits)
    score_dim = min(UINT8_SCORE_DIM, X.shape[1])
    shortlist = {"reduce_dim": POLYTOPE_REDUCE_DIM, "rerank": UINT8_RERANK, "score_dim": score_dim}
    fitted: dict[str, object] = {"exact scan": SequentialScan().fit(X)}
    fitted["hnswlib M=32 ef=16"] = HnswlibIndex(ef=16).fit(X)
    gathering = CrossPolytopeIndex(8, hashes, last_dim, **shortlist).fit(X)
    blocks = BlockPolytopeIndex(8, hashes, last_dim, **shortlist).fit(X)
    for probes in (4, 8, 16):
        for name, index in (("gathered by id", gathering), ("codes in bucket order", blocks)):
            twin = index.copy()
            twin.probes = probes
            fitted[f"CP-LSH L=8 b={bits} T={probes}, {name}"] = twin
    for target in targets:  # T and R chosen at fit (leave-one-out on the indexed rows)
        tuned = BlockPolytopeIndex(8, hashes, last_dim, **shortlist, target_recall=target).fit(X)
        fitted[f"CP-LSH L=8 b={bits} target {target}: T={tuned.probes_} R={tuned.rerank_}, bucket order"] = tuned
    return fitted


def paired_times(searches: dict[str, Callable[[np.ndarray], object]], Q: np.ndarray, rounds: int) -> dict[str, float]:
    """Seconds per method: the sum over queries of the fastest of ``rounds`` answers, methods interleaved."""
    names = list(searches)
    best = {name: np.full(len(Q), np.inf) for name in names}
    with one_thread():
        for _ in range(rounds):
            for i in range(len(Q)):
                query = Q[i : i + 1]
                shift = i % len(names)
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    searches[name](query)
                    best[name][i] = min(best[name][i], time.perf_counter() - started)
    return {name: float(times.sum()) for name, times in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_features_argument(parser)
    parser.add_argument("--rounds", type=int, default=3, help="answers per query and method (the fastest counts)")
    parser.add_argument("--queries", type=int, default=500, help="queries timed (the first ones)")
    parser.add_argument(
        "--target-recall", type=float, action="append", default=[], help="also the index fitted for this recall"
    )
    args = parser.parse_args(argv)
    args.features = features_or_default(args.features)
    warm_up()
    data = real_set(args.features)
    X, Q = data.index, data.queries[: args.queries]
    print(f"{data.description}; before: {machine_line()}")
    fitted = methods(X, args.target_recall)
    exact = fitted["exact scan"].search(Q, K).ids
    searches = {name: (lambda q, index=index: index.search(q, K)) for name, index in fitted.items()}
    seconds = paired_times(searches, Q, args.rounds)
    rows = []
    for name, index in fitted.items():
        result = index.search(Q, K)
        ms = 1000.0 * seconds[name] / len(Q)
        rows.append({"method": name, "recall@10": recall_at_k(result.ids, exact, K).mean(), "ms_single": ms})
    table = pd.DataFrame(rows)
    table["x_scan"] = table.loc[0, "ms_single"] / table["ms_single"]
    table["x_hnswlib_ef16_time"] = table["ms_single"] / table.loc[1, "ms_single"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"after: {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
