"""One query at a time on one thread, interleaved query by query: a paired timing that survives a shared machine.

    .venv/bin/python benchmarks/paired_queries.py                 # the default collection's features
    .venv/bin/python benchmarks/paired_queries.py --features PATH --rounds 5
    .venv/bin/python benchmarks/paired_queries.py --target-recall 0.9   # also T, R (and bits) chosen at fit for 0.9
    .venv/bin/python benchmarks/paired_queries.py --hard 1000000 --queries 200 --ef --faiss-ef 32 64 --target-recall 0.9
                                                   # the hard synthetic set of benchmarks/ann.py instead (n x 256)

``benchmarks/ann.py`` times each method over all queries and then the scan, so a load that changes between the two
runs (other jobs on shared cores) moves the ratio. Here every query is answered by every method in turn (the order
rotated from query to query) before the next query, ``--rounds`` times; a method's time is the sum over queries of
its fastest answer to each. numba, BLAS and OpenMP run on one thread (ann-benchmarks' setting). Methods: the exact
scan, hnswlib (M=32) at ef 16 (``--ef``: each ef given; ``--faiss-ef``: FAISS HNSW too), cross-polytope LSH with
the uint8 shortlist gathered by id (``CrossPolytopeIndex``) and with the codes in bucket order
(``BlockPolytopeIndex``), both at L=8, log2(n)-2 bits, T = 4, 8, 16; with ``--target-recall`` the bucket-ordered
index with T and R chosen at fit at log2(n)-2 bits, and with the bits chosen too (the app's); with ``--sign`` both
again with 1-bit sign sketches as the shortlist code (``code="sign"``, issue 20).
Prints recall@10 against the scan, ms per query, the ratios (against the scan and the first hnswlib's time), each
fit's seconds, and the load average.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from harness import (  # first: this checkout's cbir, not an installed one
    add_features_argument,
    best_of,
    features_or_default,
    machine_line,
)

from benchmarks.ann import K, hard_synthetic, one_thread, real_set
from cbir.core.metrics import recall_at_k
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.polytope import CrossPolytopeIndex, hashes_for_bits
from cbir.indexes.reference import HNSWIndex, HnswlibIndex
from cbir.indexes.registry import POLYTOPE_REDUCE_DIM, UINT8_RERANK, UINT8_SCORE_DIM
from cbir.indexes.scan import SequentialScan
from cbir.indexes.warmup import warm_up


def methods(
    X: np.ndarray, targets: list[float], efs: list[int], faiss_efs: list[int], codes: tuple[str, ...] = ("uint8",)
) -> tuple[dict[str, object], dict[str, float]]:
    """The fitted indexes, by label (with ``targets``: the bucket-ordered index fitted for each target recall too;
    hnswlib at each of ``efs``, FAISS HNSW at each of ``faiss_efs``), and each fit's seconds (copies with other
    probes or ef share their fit's)."""
    bits = round(np.log2(len(X))) - 2
    hashes, last_dim = hashes_for_bits(POLYTOPE_REDUCE_DIM, bits)
    score_dim = min(UINT8_SCORE_DIM, X.shape[1])
    shortlist = {"reduce_dim": POLYTOPE_REDUCE_DIM, "rerank": UINT8_RERANK, "score_dim": score_dim}

    def fitted_in(index: Any) -> tuple[float, Any]:
        """(seconds, the index fitted on X)"""
        return best_of(1, lambda: index.fit(X))

    fit_s: dict[str, float] = {}
    fit_s["exact scan"], scan = fitted_in(SequentialScan())
    fitted: dict[str, object] = {"exact scan": scan}
    graphs = [("hnswlib", HnswlibIndex, "ef", ef) for ef in efs] + [
        ("FAISS HNSW", HNSWIndex, "ef_search", ef) for ef in faiss_efs
    ]
    built: dict[str, Any] = {}
    for library, cls, knob, ef in graphs:  # one graph per library; its twins share it with their own ef
        if library not in built:
            built[library] = fitted_in(cls(**{knob: ef}))
        twin = copy.copy(built[library][1])  # a search sets its ef under a lock: no 2 GB copy at 1M
        setattr(twin, knob, ef)
        fitted[f"{library} M=32 ef={ef}"] = twin
        fit_s[f"{library} M=32 ef={ef}"] = built[library][0]
    for name, cls in (("gathered by id", CrossPolytopeIndex), ("codes in bucket order", BlockPolytopeIndex)):
        seconds, index = fitted_in(cls(8, hashes, last_dim, **shortlist))
        for probes in (4, 8, 16):
            twin = copy.copy(index)  # shares the tables (probes are read at search time)
            twin.probes = probes
            fitted[f"CP-LSH L=8 b={bits} T={probes}, {name}"] = twin
            fit_s[f"CP-LSH L=8 b={bits} T={probes}, {name}"] = seconds
    # T and R chosen at fit (leave-one-out on the indexed rows), the bits too (the app's), for each shortlist code
    for target, code, choose_bits in itertools.product(targets, codes, (False, True)):
        options = {"target_recall": target, "choose_bits": choose_bits, "code": code}
        seconds, tuned = fitted_in(BlockPolytopeIndex(8, hashes, last_dim, **shortlist, **options))
        how = ("b, T, R chosen" if choose_bits else "T, R chosen") + ("" if code == "uint8" else f", {code} codes")
        label = f"CP-LSH L=8 target {target}, {how}: b={tuned.bits} T={tuned.probes_} R={tuned.rerank_}"
        fitted[label] = tuned
        fit_s[label] = seconds
    return fitted, fit_s


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
    parser.add_argument("--ef", type=int, nargs="*", default=[16], help="hnswlib's ef values (none: no hnswlib)")
    parser.add_argument("--faiss-ef", type=int, nargs="*", default=[], help="also FAISS HNSW (M=32) at these ef")
    parser.add_argument(
        "--sign", action="store_true", help="with --target-recall, also the 1-bit sign sketches as the shortlist code"
    )
    parser.add_argument("--hard", type=int, default=0, help="the hard synthetic set of this size instead (x 256)")
    args = parser.parse_args(argv)
    warm_up()
    if args.hard:
        X, Q = hard_synthetic(args.hard, args.queries)
        description = f"hard synthetic {args.hard:,} x {X.shape[1]} (benchmarks/ann.py), {len(Q)} queries"
    else:
        data = real_set(features_or_default(args.features))
        X, Q, description = data.index, data.queries[: args.queries], data.description
    print(f"{description}; before: {machine_line()}")
    codes = ("uint8", "sign") if args.sign else ("uint8",)
    fitted, fit_s = methods(X, args.target_recall, args.ef, args.faiss_ef, codes)
    exact = fitted["exact scan"].search(Q, K).ids
    searches = {name: (lambda q, index=index: index.search(q, K)) for name, index in fitted.items()}
    seconds = paired_times(searches, Q, args.rounds)
    rows = []
    for name, index in fitted.items():
        result = index.search(Q, K)
        ms = 1000.0 * seconds[name] / len(Q)
        recall = recall_at_k(result.ids, exact, K).mean()
        rows.append({"method": name, "recall@10": recall, "ms_single": ms, "fit_s": fit_s[name]})
    table = pd.DataFrame(rows)
    table["x_scan"] = table.loc[0, "ms_single"] / table["ms_single"]
    if args.ef or args.faiss_ef:  # the first HNSW row is the bar
        table[f"x_{table.loc[1, 'method'].replace(' ', '_')}_time"] = table["ms_single"] / table.loc[1, "ms_single"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"after: {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
