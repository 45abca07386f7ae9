"""A batch on the bucket-ordered CP-LSH index beside the exact scan, interleaved: ratios that survive shared cores.

    .venv/bin/python benchmarks/batch_blocks.py                 # the default collection's features, 41 rounds
    .venv/bin/python benchmarks/batch_blocks.py --rounds 21 --probes 16
    .venv/bin/python benchmarks/batch_blocks.py --target-recall 0.9   # bits, T and R chosen at fit (leave-one-out),
                                                                      # beside T and R chosen at log2(n) - 2 bits

``benchmarks/ann.py`` times an LSH setting once (or best of ``--repeats``) and divides the fastest of many scan
runs by it, so on shared cores whose load changes by the second its batch ratios move by 2× from run to run. Here
the exact scan and :class:`cbir.indexes.blocks.BlockPolytopeIndex` (L = 8, ``--bits``, else chosen at fit with
``--target-recall`` (``choose_bits``, the app's) or log2(n) - 2 bits,
``--probes`` T; ``--sign``: also with 1-bit sign sketches as the shortlist code) answer the whole query batch in
turn, ``--rounds`` times; each keeps its fastest round. The index
runs in its two batch layouts (the same answers, checked here): the exact re-rank grouped by row (the default for a
batch on one thread, :mod:`cbir.indexes.kernels.grouped`) and query by query (as one query runs; the default on
several). Both on all the machine's threads, then on one (numba, BLAS and OpenMP).
Each timed batch follows ``--settle`` untimed batches of the same method (1): OpenBLAS' workers spin for a while
after the scan's product, and numba's after a parallel loop, so a batch right after another method's pays for that
method's spinning threads on two cores (the index's batch right after the scan measured 0.082 ms a query, after one
of its own 0.068, after 0.3 s idle 0.054; README, issue 20) — which a service answering with one method does not.
Prints recall@10, ms per query (wall and CPU), × the scan, and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator

import harness  # first: this checkout's cbir, not an installed one
import numpy as np
import pandas as pd

import cbir.indexes.blocks as block_index
from benchmarks.ann import K, one_thread, real_set
from cbir.core.metrics import recall_at_k
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.kernels.blocks import block_search
from cbir.indexes.polytope import hashes_for_bits
from cbir.indexes.scan import SequentialScan
from cbir.indexes.warmup import warm_up


@contextlib.contextmanager
def layout(grouped: bool) -> Iterator[None]:
    """The index's batch searches with the re-rank grouped by row or query by query inside the block."""
    block_index.block_search = functools.partial(block_search, grouped=grouped)
    try:
        yield
    finally:
        block_index.block_search = block_search


def rounds_table(runs: dict[str, Callable[[], object]], rounds: int, m: int, settle: int = 1) -> pd.DataFrame:
    """ms per query (wall, CPU) of each run's fastest round, the runs interleaved round by round, each timed batch
    after ``settle`` untimed ones of the same run (so that no run pays for the threads the previous one left
    spinning)."""
    wall = dict.fromkeys(runs, np.inf)
    cpu = dict.fromkeys(runs, np.inf)
    for run in runs.values():
        run()  # compiled, caches warm
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(settle):
                run()
            started_cpu, started = time.process_time(), time.perf_counter()
            run()
            wall[name] = min(wall[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - started_cpu)
    table = pd.DataFrame({"method": list(runs), "ms_batch": [1e3 * wall[n] / m for n in runs]})
    table["ms_cpu"] = [1e3 * cpu[n] / m for n in runs]
    table["x_scan"] = table.loc[0, "ms_batch"] / table["ms_batch"]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_features_argument(parser)
    parser.add_argument("--rounds", type=int, default=41, help="batches per method (the fastest counts)")
    parser.add_argument("--probes", type=int, default=8, help="T: extra probes per table")
    parser.add_argument(
        "--settle", type=int, default=1, help="untimed batches of the same method before each timed one"
    )
    parser.add_argument("--rerank", type=int, default=30, help="R: shortlisted rows ranked exactly")
    parser.add_argument("--target-recall", type=float, help="choose T and R at fit for this recall@10 instead")
    parser.add_argument(
        "--bits", type=int, help="bits per table (default: chosen at fit with --target-recall, else log2(n) - 2)"
    )
    parser.add_argument("--sign", action="store_true", help="also the index with sign sketches as its shortlist code")
    args = parser.parse_args(argv)
    args.features = harness.features_or_default(args.features)
    warm_up()
    data = real_set(args.features)
    X, Q = data.index, data.queries
    bits = args.bits or round(np.log2(len(X))) - 2
    hashes, last_dim = hashes_for_bits(48, bits)
    scan = SequentialScan().fit(X)
    options = {"probes": args.probes, "rerank": args.rerank, "target_recall": args.target_recall}
    choose = args.target_recall is not None and not args.bits  # the app's rule: the bits chosen at fit too
    fitted: dict[str, tuple[BlockPolytopeIndex, float]] = {}  # by setting: the index and its fit's seconds
    for chosen in (False, True) if choose else (False,):
        started = time.perf_counter()
        index = BlockPolytopeIndex(8, hashes, last_dim, **options, choose_bits=chosen).fit(X)
        seconds = time.perf_counter() - started
        how = " (bits chosen)" if chosen else ""
        fitted[f"L8 b{index.bits} T{index.search_probes} R{index.search_rerank}{how}"] = (index, seconds)
    print("fit seconds: " + ", ".join(f"{name} {seconds:.2f}" for name, (_, seconds) in fitted.items()))
    (fixed_setting, (fixed, _)), (setting, (index, _)) = next(iter(fitted.items())), list(fitted.items())[-1]
    exact = scan.search(Q, K).ids

    def search(grouped: bool) -> Callable[[], object]:
        def run() -> object:
            with layout(grouped):
                return index.search(Q, K)

        return run

    runs = {"exact scan": lambda: scan.search(Q, K)}
    runs[f"CP-LSH blocks {setting}, re-rank grouped by row"] = search(True)
    runs[f"CP-LSH blocks {setting}, re-rank query by query"] = search(False)
    if choose:  # the rule at log2(n) - 2 bits, side by side
        runs[f"CP-LSH blocks {fixed_setting} query by query"] = lambda: fixed.search(Q, K)
    if args.sign:  # the same rule with sign sketches as the shortlist code
        started = time.perf_counter()
        sign = BlockPolytopeIndex(8, hashes, last_dim, **options, choose_bits=choose, code="sign").fit(X)
        label = f"CP-LSH blocks sign sketches L8 b{sign.bits} T{sign.search_probes} R{sign.search_rerank}"
        print(f"fit seconds: {label} {time.perf_counter() - started:.2f}")
        runs[f"{label} query by query"] = lambda: sign.search(Q, K)
        print(f"{label}: recall@10 {recall_at_k(sign.search(Q, K).ids, exact, K).mean():.3f}")
    grouped, by_query = runs[list(runs)[1]](), runs[list(runs)[2]]()
    assert all(np.array_equal(a, b) for a, b in zip(grouped, by_query, strict=True)), "the layouts must agree"
    print(f"{data.description}; recall@10 {recall_at_k(grouped.ids, exact, K).mean():.3f}")
    for label, threads in (("all threads", contextlib.nullcontext()), ("one thread", one_thread())):
        with threads:
            table = rounds_table(runs, args.rounds, len(Q), args.settle)
        print(
            f"\nbatch of {len(Q)}, {label}, best of {args.rounds} interleaved rounds, {args.settle} untimed "
            f"before each; {harness.machine_line()}"
        )
        print(harness.table_text(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
