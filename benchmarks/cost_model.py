"""Calibrates :meth:`cbir.indexes.blocks.BlockPolytopeIndex.estimated_cost` from measured CPU times.

    .venv/bin/python benchmarks/cost_model.py                 # the default collection's features

For 8, 9 and 10 bits per table (L = 8) and T 2/4/8/16 x R 10/25/50, the one-thread CPU time of a batch of the
queries (best of ``--rounds``, a query's share), regressed by least squares on the stages the model counts: the
probed buckets L(1 + T), the code bytes scored (codes scored x s) and the re-ranked floats (R x d), plus a fixed
cost per query (which ranks nothing). Prints each setting's time beside the model's, the fitted coefficients (the
constants ``_COST_PROBE``, ``_COST_CODE_BYTE``, ``_COST_ROW_FLOAT``) and the load average.
"""

from __future__ import annotations

import argparse
import sys
import time

import harness  # first: this checkout's cbir, not an installed one
import numpy as np

from benchmarks.ann import K, one_thread, real_set
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.polytope import hashes_for_bits
from cbir.indexes.warmup import warm_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_features_argument(parser)
    parser.add_argument("--rounds", type=int, default=7, help="batches per setting (the fastest counts)")
    args = parser.parse_args(argv)
    warm_up()
    data = real_set(harness.features_or_default(args.features))
    X, Q = data.index, data.queries
    print(f"{data.description}; {harness.machine_line()}")
    stages, micros = [], []
    with one_thread():
        for bits in (8, 9, 10):
            index = BlockPolytopeIndex(8, *hashes_for_bits(48, bits)).fit(X)
            for probes in (2, 4, 8, 16):
                for rerank in (10, 25, 50):
                    index.probes, index.rerank = probes, rerank
                    scored = float(index.search(Q, K).visited.mean())
                    best = np.inf
                    for _ in range(args.rounds):
                        started = time.process_time()
                        index.search(Q, K)
                        best = min(best, time.process_time() - started)
                    micros.append(1e6 * best / len(Q))
                    stages.append([8 * (1 + probes), scored * index.describe()["score_dim"], rerank * X.shape[1], 1])
                    model = index.estimated_cost(probes, rerank, scored)
                    print(f"b{bits} T{probes} R{rerank}: {micros[-1]:.1f} us CPU a query, model {model:.1f}")
    A, y = np.asarray(stages, dtype=float), np.asarray(micros)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    r2 = 1 - ((A @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    print(
        f"per probed bucket {coef[0]:.3f} us, per code byte {coef[1]:.6f} ({128 * coef[1]:.4f} a 128-byte code), "
        f"per re-ranked float {coef[2]:.6f} ({X.shape[1] * coef[2]:.3f} a row), fixed {coef[3]:.1f} us; R^2 {r2:.2f}"
    )
    print(harness.machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
