# longer than 600 lines: one experiment read top to bottom (data sets, method grids, measurement, charts, goals);
# the grids change with the block index work in flight, so a split into modules waits for it to land.
"""ANN benchmark: recall@10 against the exact scan and time per query, every method side by side in one run.

    .venv/bin/python benchmarks/ann.py                      # the default collection's features (a few minutes)
    .venv/bin/python benchmarks/ann.py --features A --features B   # other feature sets (folder or .joblib)
    .venv/bin/python benchmarks/ann.py --hard --clustered   # + hard synthetic 100k x 256 and the clustered set
    .venv/bin/python benchmarks/ann.py --no-features --hard --n 1000000 --queries 200   # hard synthetic at 1M
    .venv/bin/python benchmarks/ann.py --all-families       # every LSH family (default: the main ones)

Data sets
    real      a feature set (``--features``, repeatable; default: the default collection's newest complete one):
              rows with role "query" are the queries, the others (index, distractor) are indexed.
    hard      synthetic, ``--n`` x 256: Gaussian with a decaying eigen-spectrum (variance of axis j ∝ j^-decay,
              ``--decay``, randomly rotated), shifted and clipped at 0 (non-negative, ~30 % zeros, like pooled CNN
              features); no clusters: queries are fresh draws of the same distribution.
    clustered the paper-size set of ``benchmarks/search.py`` (its generator): 20 Gaussian clusters, 2048-d.

Methods
    the exact scan (BLAS shortlist + exact re-rank); our E2LSH: plain, multi-probe, hashing in a PCA-reduced space
    (``reduce_dim``), plus a shortlist scored in that space (``rerank``), plus probes chosen for a target recall
    (``target_recall``) or plus collision counting (``min_collisions``: only objects found in c probed buckets);
    the shortlist scored on uint8 codes of 128 PCA axes instead (``score_dim``: a quarter of the bytes per
    coordinate, more axes, so 30 exact re-ranks instead of 100);
    cross-polytope LSH (FALCONN's scheme, ``cbir.indexes.polytope``) on the centred vectors, on PCA coordinates, and
    on PCA
    coordinates with the shortlist, at about log2(n) bits per table (``b``) with L tables and the global
    multi-probe sequence (L·(1+T) buckets per query); the same with the uint8 codes kept in bucket order
    (``cbir.indexes.blocks``, "CP-LSH blocks": a probed bucket is one contiguous block of codes, issue 20);
    the app's reference indexes (``cbir.indexes.reference``): faiss IndexHNSWFlat (M=32) at several efSearch,
    IndexIVFFlat at
    several nprobe, hnswlib (M=32) at several ef; and faiss IndexLSH (binary codes, Hamming ranking of every
    object, then exact re-rank of 10·k).

Measurement
    recall@10 = share of the exact scan's top-10 returned (``cbir.evaluation.evaluate.recall_at_k``). Every LSH
    setting of a
    small grid is evaluated once (recall, visited, one timing in each mode); the settings on the recall-vs-visited and
    recall-vs-time frontiers are then re-timed, and so are all peers, best of ``--repeats``, each followed by a run
    of the exact scan so that both see the same machine load; speed-ups divide the fastest scan of the data set by
    the method's fastest run. Two modes, each method and the scan timed in both: ``batch`` (the whole query batch in
    one call with the machine's threads: throughput) and ``single`` (one query per call, in a loop, on one thread:
    numba, BLAS and OpenMP limited to 1 thread, as ann-benchmarks times; the Search page's mode; the first
    ``--single-queries`` queries). ``visited`` is
    the share of the indexed objects whose distance was computed (for LSH: every candidate, in the reduced space
    when a shortlist is used; for faiss HNSW: faiss' own distance counter; for IVF: the sizes of the probed lists;
    for Hamming LSH: all of them; hnswlib does not report it).

Output: tables (pandas) on stdout with the load average (the machine may be shared: compare ratios measured side
by side), the goals of issue 20 with MET / NOT MET, and Pareto charts (recall vs ms per
query, recall vs visited) as plotly HTML and PNG (PNG through kaleido when it works) under artifacts/benchmarks/.
"""

from __future__ import annotations

import os

# OpenBLAS worker threads busy-wait after each call and take the cores from numba's threads (see search.py).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
from harness import (
    ROOT,  # first: this checkout's cbir, not an installed one
    best_of,
    machine_line,
    table_text,
)

from benchmarks.search import synthetic_collection
from cbir.core.metrics import recall_at_k
from cbir.evaluation.sweep import pareto_frontier
from cbir.indexes.base import NOT_COUNTED
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.pca import fit_pca, project
from cbir.indexes.polytope import CrossPolytopeIndex, hashes_for_bits
from cbir.indexes.reference import HNSWIndex, HnswlibIndex, IVFFlatIndex, PeerUnavailableError
from cbir.indexes.registry import UINT8_RERANK, UINT8_SCORE_DIM
from cbir.indexes.scan import SequentialScan
from cbir.indexes.warmup import warm_up
from cbir.indexes.widths import default_bucket_width

K = 10
RECALL_GOAL = 0.9
VISITED_GOAL = 0.10  # real features: share of the distances computed
# issue 20's goals at recall >= RECALL_GOAL: real features, one query at a time on one thread, >= 10x the scan and
# <= 1.5x hnswlib ef16's time; batch >= 2x the scan; 1M hard synthetic, single, >= 20x the scan and <= 3x FAISS HNSW
REAL_SINGLE_GOAL = 10.0
REAL_HNSWLIB_RATIO_GOAL = 1.5
REAL_BATCH_GOAL = 2.0
LARGE_SINGLE_GOAL = 20.0
HNSW_RATIO_GOAL = 3.0
LSH_FAMILIES = (
    "LSH plain",
    "LSH multi-probe",
    "LSH PCA",
    "LSH PCA+shortlist",
    "LSH PCA+shortlist+auto-probes",
    "LSH PCA+shortlist+counting",
    "LSH PCA+uint8 shortlist",
    "LSH PCA+uint8 shortlist+counting",
    "CP-LSH",
    "CP-LSH PCA",
    "CP-LSH PCA+shortlist",
    "CP-LSH PCA+uint8 shortlist",
    "CP-LSH blocks",
)
# run without --family / --all-families: the paper's multi-probe E2LSH, the best gather-by-id family, the blocks
DEFAULT_FAMILIES = ("LSH multi-probe", "CP-LSH PCA+uint8 shortlist", "CP-LSH blocks")


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    description: str
    index: np.ndarray  # (n, d) float32
    queries: np.ndarray  # (m, d) float32
    large: bool = False  # the 1M goal applies


def hard_synthetic(
    n: int, n_queries: int = 500, dim: int = 256, decay: float = 1.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative vectors with a decaying eigen-spectrum and no clusters (see the module docstring).

    ``x = max(0, z · diag(j^(-decay/2)) · R + c)`` with ``z ~ N(0, I)``, a random rotation ``R`` and a shift
    ``c`` of half the mean standard deviation (so that about 30 % of the coordinates are 0). Generated in
    blocks, float32: (n, dim) indexed vectors and (n_queries, dim) queries drawn the same way.
    """
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    basis = (scale[:, None] * rotation.T).astype(np.float32)
    shift = np.float32(0.5 * np.sqrt((scale**2).sum() / dim))
    out = np.empty((n + n_queries, dim), dtype=np.float32)
    for start in range(0, n + n_queries, 100_000):
        stop = min(start + 100_000, n + n_queries)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32) @ basis
        block += shift
        np.maximum(block, 0.0, out=block)
        out[start:stop] = block
    return out[:n], out[n:]


def clustered_set() -> tuple[np.ndarray, np.ndarray]:
    """The paper-size set of ``benchmarks/search.py`` (imported from there): indexed (incl. distractors), queries."""
    features, _, roles = synthetic_collection()
    return np.ascontiguousarray(features[roles != "query"]), np.ascontiguousarray(features[roles == "query"])


def real_set(path: Path) -> Dataset:
    from cbir.features.sources import load_features

    feature_set = load_features(path)
    roles = np.asarray(feature_set.roles)
    features = feature_set.features
    index, queries = features[roles != "query"], features[roles == "query"]
    return Dataset(
        name=f"real:{path.stem}",
        description=f"{path} ({len(index):,} indexed x {features.shape[1]}-d, {len(queries):,} queries)",
        index=np.ascontiguousarray(index, dtype=np.float32),
        queries=np.ascontiguousarray(queries, dtype=np.float32),
    )


# ----------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """numba, BLAS and OpenMP (faiss) on one thread inside the block (ann-benchmarks' setting), restored after."""
    from threadpoolctl import threadpool_limits

    threads = numba.get_num_threads()
    faiss = sys.modules.get("faiss")  # its OpenMP, in case threadpoolctl does not find faiss' own copy
    numba.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(threads)
        if faiss is not None:
            faiss.omp_set_num_threads(threads)


def single_seconds(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> float:
    """Seconds to answer ``queries`` one row per call (a loop of single-row searches) on one thread."""
    with one_thread():
        started = time.perf_counter()
        for i in range(len(queries)):
            search(queries[i : i + 1])
        return time.perf_counter() - started


@dataclass
class Method:
    family: str
    setting: str
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # queries -> ids (m, k), visited (m,)
    fit_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepRow:
    """One LSH setting's single sweep run: its answers, and how to build the index again."""

    family: str
    setting: str
    params: dict[str, Any]
    fit_s: float
    factory: Callable[[], Any]
    seconds: float  # batch
    single: float  # one query at a time (the --single-queries), one thread
    ids: np.ndarray
    visited: np.ndarray


def ours(index: Any, family: str, setting: str, fit_s: float) -> Method:
    """A fitted index of ours as a benchmark method."""

    def search(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = index.search(queries, K)
        return result.ids, result.visited

    return Method(family, setting, search, fit_s, {"class": type(index).__name__, **index.params})


def peer(index: Any, knob: str, value: int, family: str, setting: str, fit_s: float) -> Method:
    """One search-time setting of a fitted reference index (:mod:`cbir.indexes.reference`) as a benchmark method; the
    methods
    of one index share it and set ``knob`` before each search. hnswlib's uncounted visits are ``None``."""

    def search(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        setattr(index, knob, value)
        result = index.search(queries, K)
        return result.ids, None if (result.visited == NOT_COUNTED).any() else result.visited

    return Method(family, setting, search, fit_s, {"class": type(index).__name__, **index.params, knob: value})


def faiss_methods(X: np.ndarray, threads: int, quick: bool) -> list[Method]:
    """FAISS HNSW (M=32) and IVF-Flat (about 4·sqrt(n) lists, trained on at most 50 sampled rows per list), the
    app's :class:`cbir.indexes.reference.HNSWIndex` and :class:`cbir.indexes.reference.IVFFlatIndex`, then IndexLSH
    (binary codes, Hamming
    ranking of every object, exact re-rank of 10·k: not one of the app's indexes)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    n, dim = X.shape
    methods = []

    hnsw = HNSWIndex(n_links=32)
    fit_s, _ = best_of(1, lambda: hnsw.fit(X))
    for ef in (16, 32, 64, 128) if quick else (16, 32, 48, 64, 96, 128, 256):
        methods.append(peer(hnsw, "ef_search", ef, "faiss HNSW", f"M=32 efSearch={ef}", fit_s))

    ivf = IVFFlatIndex()
    fit_s, _ = best_of(1, lambda: ivf.fit(X))
    for nprobe in (1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64):
        methods.append(peer(ivf, "n_probe", nprobe, "faiss IVF-Flat", f"nlist={ivf.lists} nprobe={nprobe}", fit_s))

    for nbits in (2 * dim,) if quick else (dim, 4 * dim):
        lsh = faiss.IndexRefineFlat(faiss.IndexLSH(dim, nbits, True, False))
        lsh.k_factor = 10
        fit_s, _ = best_of(1, lambda lsh=lsh: (lsh.train(X), lsh.add(X)))

        def search_lsh(queries: np.ndarray, lsh: Any = lsh) -> tuple[np.ndarray, np.ndarray]:
            _, ids = lsh.search(queries, K)
            return ids, np.full(len(queries), float(n))  # every code is compared (Hamming) + 10k exact

        methods.append(Method("faiss IndexLSH", f"{nbits} bits + refine 10k", search_lsh, fit_s, {"nbits": nbits}))
    return methods


def hnswlib_methods(X: np.ndarray, threads: int, quick: bool) -> list[Method]:
    """hnswlib (M=32, construction ef 40 like FAISS' default): the app's
    :class:`cbir.indexes.reference.HnswlibIndex`."""
    del threads  # hnswlib searches a batch in all the machine's threads
    index = HnswlibIndex(n_links=32)
    fit_s, _ = best_of(1, lambda: index.fit(X))
    return [
        peer(index, "ef", ef, "hnswlib", f"M=32 ef={ef}", fit_s)
        for ef in ((16, 32, 64, 128) if quick else (16, 32, 48, 64, 96, 128, 256))
    ]


OPTION_LABELS = {
    "reduce_dim": "r",
    "rerank": "R",
    "score_dim": "s",
    "target_recall": "target",
    "min_collisions": "c",
    "stamp": "stamp",
    "patience": "P",
}


def option_labels(options: dict[str, Any]) -> str:
    """The short labels of an index's set options, e.g. " r=64 R=100", appended to a setting's name."""
    return "".join(f" {label}={options[key]}" for key, label in OPTION_LABELS.items() if options.get(key))


def uint8_shortlist(X: np.ndarray, reduce_dim: int) -> dict[str, int]:
    """The options of the uint8-shortlist families (E2LSH and cross-polytope): hashed on ``reduce_dim`` PCA axes, the
    best :data:`cbir.indexes.registry.UINT8_RERANK` candidates by their uint8 codes of
    :data:`cbir.indexes.registry.UINT8_SCORE_DIM` axes
    (at most X's dimension) ranked exactly: the app's setting (the tuning page's cross-polytope reference points)."""
    return {"reduce_dim": reduce_dim, "rerank": UINT8_RERANK, "score_dim": min(UINT8_SCORE_DIM, X.shape[1])}


def lsh_grid(X: np.ndarray, quick: bool, reduce_dim: int, seed: int) -> list[tuple[str, str, Callable[[], Any]]]:
    """(family, setting, factory) of the LSH settings tried. Widths are multiples of the median pairwise
    distance in the space the family hashes in (full or PCA-reduced)."""
    full_median = default_bucket_width(X, fraction=1.0, seed=seed)
    reduced = project(fit_pca(X, reduce_dim, seed=seed), X[np.random.default_rng(seed).choice(len(X), 2048)])
    reduced_median = default_bucket_width(reduced, fraction=1.0, seed=seed)
    rerank = 100
    codes = uint8_shortlist(X, reduce_dim)
    grid: list[tuple[str, str, Callable[[], Any]]] = []

    def add(family: str, g: int, h: int, factor: float, probes: int = 0, **options: Any) -> None:
        median = full_median if "PCA" not in family else reduced_median
        width = factor * median
        setting = f"g={g} h={h} w={factor:g}·med T={probes}" + option_labels(options)

        def factory() -> LSHIndex:
            return LSHIndex(g, h, width, probes=probes, seed=seed, **options)

        grid.append((family, setting, factory))

    factors = (0.7, 1.0, 1.4) if quick else (0.5, 0.7, 1.0, 1.4, 2.0)
    for factor in factors:
        for g, h in ((8, 4),) if quick else ((8, 4), (16, 6)):
            add("LSH plain", g, h, factor)
        for g, h, probes in ((8, 8, 4),) if quick else ((8, 8, 4), (4, 8, 8)):
            add("LSH multi-probe", g, h, factor, probes=probes)
            add("LSH PCA", g, h, factor, probes=probes, reduce_dim=reduce_dim)
            add("LSH PCA+shortlist", g, h, factor, probes=probes, reduce_dim=reduce_dim, rerank=rerank)
            add("LSH PCA+uint8 shortlist", g, h, factor, probes=probes, **codes)
        for g, h in ((8, 8),) if quick else ((8, 8), (4, 8)):
            add(
                "LSH PCA+shortlist+auto-probes",
                g,
                h,
                factor,
                reduce_dim=reduce_dim,
                rerank=rerank,
                target_recall=RECALL_GOAL,
                max_probes=32,
            )
    for factor in (1.0, 1.4, 1.7, 2.0):
        for g, h, probes, collisions in ((16, 6, 2, 3),) if quick else ((16, 6, 2, 3), (24, 8, 2, 3), (16, 8, 2, 2)):
            add(
                "LSH PCA+shortlist+counting",
                g,
                h,
                factor,
                probes=probes,
                reduce_dim=reduce_dim,
                rerank=rerank,
                min_collisions=collisions,
            )
            add("LSH PCA+uint8 shortlist+counting", g, h, factor, probes=probes, min_collisions=collisions, **codes)
    grid.extend(polytope_grid(X, quick, reduce_dim, seed, rerank))
    return grid


def polytope_grid(
    X: np.ndarray, quick: bool, reduce_dim: int, seed: int, rerank: int
) -> list[tuple[str, str, Callable[[], Any]]]:
    """(family, setting, factory) of the cross-polytope settings: about log2(n) bits per table (FALCONN's advice
    for buckets of a few objects), a few less for larger buckets; L tables; T extra probes per table."""
    log_n = round(np.log2(len(X)))
    grid: list[tuple[str, str, Callable[[], Any]]] = []

    def add(family: str, tables: int, bits: int, probes: int, **options: Any) -> None:
        hashed_dim = options.get("reduce_dim") or X.shape[1]
        n_projections, last_dim = hashes_for_bits(hashed_dim, bits)
        setting = f"L={tables} b={bits} (k={n_projections} last={last_dim}) T={probes}" + option_labels(options)

        def factory() -> CrossPolytopeIndex:
            cls = BlockPolytopeIndex if family == "CP-LSH blocks" else CrossPolytopeIndex
            return cls(tables, n_projections, last_dim, probes=probes, seed=seed, **options)

        grid.append((family, setting, factory))

    for bits in (log_n - 2,) if quick else (log_n - 2, log_n):
        for tables in (8, 16):
            for probes in (0, 2, 4) if quick else (0, 1, 2, 4, 8):
                add("CP-LSH PCA", tables, bits, probes, reduce_dim=reduce_dim)
                add("CP-LSH PCA+shortlist", tables, bits, probes, reduce_dim=reduce_dim, rerank=rerank)
                add("CP-LSH PCA+uint8 shortlist", tables, bits, probes, **uint8_shortlist(X, reduce_dim))
    for tables, probes in ((8, 2), (16, 4)):
        add("CP-LSH", tables, log_n, probes)
    # bucket-ordered codes: buckets of a few objects (log2(n) - 2 bits) make blocks worth reading contiguously; the
    # adaptive stop's patience is one round of the tables (L probes in a row that change nothing)
    codes = uint8_shortlist(X, reduce_dim)
    for tables, probes in ((8, 2), (8, 4), (8, 8), (8, 16), (16, 2), (16, 4)):
        add("CP-LSH blocks", tables, log_n - 2, probes, **codes)
    for tables, probes in ((8, 16), (8, 32), (16, 8)):
        add("CP-LSH blocks", tables, log_n - 2, probes, patience=tables, **codes)
    add("CP-LSH blocks", 8, log_n - 2, 8, stamp=True, **codes)  # duplicates skipped instead of re-scored
    return grid


# ----------------------------------------------------------------------------------------------------------
# One data set
# ----------------------------------------------------------------------------------------------------------


class DatasetRun:
    """One data set's measurements: the exact scan (its answers, its timings in both modes, re-timed beside every
    method) and the table's rows recorded so far."""

    def __init__(self, data: Dataset, args: argparse.Namespace) -> None:
        self.X, self.Q = data.index, data.queries
        self.n, self.m = len(self.X), len(self.Q)
        self.repeats = args.repeats
        self.single_queries = self.Q[: args.single_queries]
        self.scan = SequentialScan().fit(self.X)
        self.scan_times: list[float] = []  # batch
        self.scan_single_times: list[float] = []  # one query at a time, one thread
        exact_s, exact = best_of(1, lambda: self.scan.search(self.Q, K))
        self.scan_times.append(exact_s)
        self.time_scan()
        self.exact_ids = exact.ids
        self.rows: list[dict[str, Any]] = []
        for _ in range(args.repeats - 1):
            self.time_scan()

    def scan_ms(self) -> tuple[float, float]:
        """The fastest scan so far, ms per query: batch, single."""
        return 1000.0 * min(self.scan_times) / self.m, 1000.0 * min(self.scan_single_times) / len(self.single_queries)

    def time_scan(self) -> None:
        """One run of the scan in each mode."""
        seconds, _ = best_of(1, lambda: self.scan.search(self.Q, K))
        self.scan_times.append(seconds)
        self.scan_single_times.append(single_seconds(lambda q: self.scan.search(q, K), self.single_queries))

    def recall(self, ids: np.ndarray) -> float:
        """Mean recall@k of the answers ``ids`` (m, k) against the exact scan's."""
        return recall_at_k(ids, self.exact_ids, K).mean()

    def record(
        self, method: Method, seconds: float, single: float, ids: np.ndarray, visited: np.ndarray | None, timed: str
    ) -> None:
        """One row of the table: ``seconds`` for the batch, ``single`` for the loop of single queries."""
        self.rows.append(
            {
                "family": method.family,
                "setting": method.setting,
                "recall@10": self.recall(ids),
                "visited_%": np.nan if visited is None else 100.0 * float(np.mean(visited)) / self.n,
                "ms_batch": 1000.0 * seconds / self.m,
                "ms_single": 1000.0 * single / len(self.single_queries),
                "fit_s": method.fit_s,
                "timing": timed,
                "params": method.params,
            }
        )

    def timed_run(self, method: Method) -> None:
        """Best of ``repeats`` batch searches and of ``repeats`` single-query loops of the method, then one run of
        the scan in each mode (so that the two alternate and see the same load)."""
        best, best_single, result = float("inf"), float("inf"), None
        for _ in range(self.repeats):
            seconds, result = best_of(1, lambda: method.search(self.Q))
            best = min(best, seconds)
            best_single = min(best_single, single_seconds(method.search, self.single_queries))
        self.time_scan()
        self.record(method, best, best_single, result[0], result[1], f"best of {self.repeats}")


def sweep_lsh(run: DatasetRun, args: argparse.Namespace) -> list[SweepRow]:
    """Every LSH setting of the grid (of the chosen families) fitted and run once, one fitted index alive at a time
    (at 1M each holds hundreds of MB): a setting's answers are kept, not its index."""
    started = time.perf_counter()
    X, Q, n = run.X, run.Q, run.n
    sweep: list[SweepRow] = []
    reduce_dim = min(args.reduce_dim, X.shape[1])
    for family, setting, factory in lsh_grid(X, args.quick, reduce_dim, args.seed):
        if family not in args.family:
            continue
        index = factory()
        # skip settings whose candidate sets are too large to be fast (counted on 50 queries: hashing only)
        fit_s, _ = best_of(1, lambda index=index: index.fit(X))
        estimate = np.mean([len(c) for c in index.candidates(Q[:50])]) / n
        if estimate > args.max_visited:
            print(f"  skip {family} {setting}: visits ~{100 * estimate:.0f}% (> {100 * args.max_visited:.0f}%)")
            continue
        if getattr(index, "target_recall", None) is not None:
            setting = setting.replace("T=0", f"T={index.probes_}(auto)")
        method = ours(index, family, setting, fit_s)
        seconds, (ids, visited) = best_of(1, lambda method=method: method.search(Q))
        single = single_seconds(method.search, run.single_queries)
        sweep.append(
            SweepRow(method.family, method.setting, method.params, fit_s, factory, seconds, single, ids, visited)
        )
        del index, method
    print(f"  LSH grid: {len(sweep)} settings evaluated in {time.perf_counter() - started:.0f}s", flush=True)
    return sweep


def sweep_frontier(run: DatasetRun, sweep: list[SweepRow]) -> set[int]:
    """Positions in ``sweep`` of the settings on their family's recall-vs-visited, -batch time or -single time
    Pareto frontier."""
    frame = pd.DataFrame(
        [
            {
                "i": i,
                "family": row.family,
                "recall": run.recall(row.ids),
                "visited": float(np.mean(row.visited)) / run.n,
                "seconds": row.seconds,
                "single": row.single,
            }
            for i, row in enumerate(sweep)
        ]
    )
    chosen: set[int] = set()
    for _, group in frame.groupby("family"):
        for x in ("visited", "seconds", "single"):
            chosen.update(group[pareto_frontier(group, x=x, y="recall")]["i"].tolist())
    return chosen


def record_sweep(run: DatasetRun, sweep: list[SweepRow], chosen: set[int]) -> None:
    """The sweep's rows: the ``chosen`` settings fitted again (same seed, same index) and re-timed, the others with
    their one sweep run."""
    for i, row in enumerate(sweep):
        if i in chosen:
            index = row.factory().fit(run.X)
            run.timed_run(
                Method(row.family, row.setting, ours(index, row.family, row.setting, 0.0).search, row.fit_s, row.params)
            )
            del index
        else:
            run.record(
                Method(row.family, row.setting, lambda q: (None, None), row.fit_s, row.params),
                row.seconds,
                row.single,
                row.ids,
                row.visited,
                "one run (sweep)",
            )


def time_peers(run: DatasetRun, threads: int, quick: bool) -> None:
    """The exact scan as a method, then the reference indexes that are installed, each re-timed."""
    peers: list[Method] = [Method("exact scan", "BLAS + exact re-rank", lambda q: (run.scan.search(q, K).ids, None))]
    try:
        peers += faiss_methods(run.X, threads, quick)
    except (ImportError, PeerUnavailableError) as exc:
        print(f"  faiss skipped: {exc}")
    try:
        peers += hnswlib_methods(run.X, threads, quick)
    except PeerUnavailableError as exc:
        print(f"  hnswlib skipped: {exc}")
    for method in peers:
        run.timed_run(method)


def dataset_table(run: DatasetRun, data: Dataset, threads: int, started: float) -> pd.DataFrame:
    """The data set's table (speed-ups, the scan's times and the load average in ``attrs``), printed."""
    table = with_speedups(pd.DataFrame(run.rows), *run.scan_ms())
    table.loc[table["family"] == "exact scan", "visited_%"] = 100.0
    table.insert(0, "data", data.name)
    table.attrs["scan_ms"], table.attrs["scan_single_ms"] = run.scan_ms()
    table.attrs["load"] = machine_line()
    print(
        f"  exact scan: batch {table.attrs['scan_ms']:.4f} ms/query (fastest of {len(run.scan_times)} runs, "
        f"{run.m} queries, {threads} threads), single {table.attrs['scan_single_ms']:.4f} ms/query (fastest of "
        f"{len(run.scan_single_times)} loops of {len(run.single_queries)} queries, 1 thread); "
        f"total {time.perf_counter() - started:.0f}s; {machine_line()}"
    )
    show = table.drop(columns=["params", "data"])
    show = show.sort_values(["family", "recall@10", "ms_single"])
    print(table_text(show))
    return table


def run_dataset(data: Dataset, args: argparse.Namespace, out_dir: Path) -> pd.DataFrame:
    """One data set: the scan, our LSH (a grid run once, then its frontier re-timed), the peers; the table printed,
    charted and written as CSV under ``out_dir``."""
    threads = numba.get_num_threads()
    print(f"\n=== {data.name}: {data.description}")
    run = DatasetRun(data, args)
    started = time.perf_counter()
    sweep = sweep_lsh(run, args)
    record_sweep(run, sweep, sweep_frontier(run, sweep))
    # progress for long runs (1M): our rows before the peers' index builds
    ours_so_far = with_speedups(pd.DataFrame(run.rows).drop(columns=["params"]), *run.scan_ms())
    print(f"  LSH (timed so far; load {os.getloadavg()[0]:.1f}):\n" + table_text(ours_so_far), flush=True)
    time_peers(run, threads, args.quick)
    table = dataset_table(run, data, threads, started)
    write_charts(table, data, out_dir)
    table.drop(columns=["params"]).to_csv(out_dir / f"ann_{slug(data.name)}.csv", index=False)
    return table


# ----------------------------------------------------------------------------------------------------------
# Charts and goals
# ----------------------------------------------------------------------------------------------------------


def with_speedups(table: pd.DataFrame, scan_batch_ms: float, scan_single_ms: float) -> pd.DataFrame:
    """The table with each row's speed-up over the fastest scan of the same mode (``x_scan_batch``,
    ``x_scan_single``; ms per query)."""
    table = table.copy()
    table["x_scan_batch"] = scan_batch_ms / table["ms_batch"]
    table["x_scan_single"] = scan_single_ms / table["ms_single"]
    return table


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def write_charts(table: pd.DataFrame, data: Dataset, out_dir: Path) -> None:
    import plotly.graph_objects as go

    for x, title, log in (
        ("ms_single", "ms per query (one at a time, one thread)", True),
        ("ms_batch", "ms per query (batch, all threads)", True),
        ("visited_%", "visited objects (% of the collection)", True),
    ):
        fig = go.Figure()
        for family, group in table.groupby("family", sort=False):
            group = group.dropna(subset=[x])
            if group.empty:
                continue
            front = group[pareto_frontier(group, x=x, y="recall@10")].sort_values(x)
            fig.add_trace(
                go.Scatter(
                    x=front[x],
                    y=front["recall@10"],
                    mode="lines+markers",
                    name=family,
                    text=front["setting"],
                    hovertemplate="%{text}<br>%{x:.4g}, recall %{y:.3f}",
                )
            )
        fig.add_hline(y=RECALL_GOAL, line_dash="dot", annotation_text=f"recall {RECALL_GOAL}")
        fig.update_layout(
            title=f"{data.name}: recall@10 vs {title} (Pareto frontier of each method)",
            xaxis_title=title,
            yaxis_title="recall@10 against the exact scan",
            xaxis_type="log" if log else "linear",
            template="plotly_white",
            width=1000,
            height=600,
        )
        stem = out_dir / f"ann_{slug(data.name)}_{x.removeprefix('ms_').removesuffix('_%')}"
        fig.write_html(stem.with_suffix(".html"), include_plotlyjs="cdn")
        try:
            fig.write_image(stem.with_suffix(".png"))
        except Exception as exc:  # kaleido missing or no browser: HTML only
            print(f"  PNG not written ({type(exc).__name__}: {exc}); HTML only: {stem.with_suffix('.html')}")


def lsh_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["family"].isin(LSH_FAMILIES)]


def frontier_text(table: pd.DataFrame, x: str) -> str:
    rows = lsh_rows(table).dropna(subset=[x])
    front = rows[pareto_frontier(rows, x=x, y="recall@10")].sort_values(x)
    return "\n".join(
        f"      {r['family']:<28} {r['setting']:<58} recall {r['recall@10']:.3f}  visited {r['visited_%']:.2f}%  "
        f"single {r['ms_single']:.4f} ms ({r['x_scan_single']:.1f}x scan)  batch {r['ms_batch']:.4f} ms "
        f"({r['x_scan_batch']:.2f}x scan)"
        for _, r in front.iterrows()
    )


def peer_ms(table: pd.DataFrame, family: str, setting: str, column: str) -> float:
    """A peer's time (``column``) at one setting (NaN when it did not run)."""
    rows = table[(table["family"] == family) & (table["setting"] == setting)]
    return float(rows[column].min()) if not rows.empty else float("nan")


def goal_line(label: str, rows: pd.DataFrame, mask: pd.Series, x: str, table: pd.DataFrame) -> None:
    """MET with the fastest LSH row meeting ``mask``, or NOT MET with the LSH frontier in mode ``x``."""
    ok = rows[mask]
    if not ok.empty:
        r = ok.sort_values(x).iloc[0]
        print(
            f"  MET      {label}\n      {r['family']} {r['setting']}: recall {r['recall@10']:.3f}, single "
            f"{r['ms_single']:.4f} ms ({r['x_scan_single']:.1f}x scan), batch {r['ms_batch']:.4f} ms "
            f"({r['x_scan_batch']:.2f}x scan)"
        )
    else:
        print(f"  NOT MET  {label}\n    LSH frontier (recall vs {x}):\n{frontier_text(table, x)}")


def goals(tables: list[tuple[Dataset, pd.DataFrame]]) -> None:
    print(f"\n=== goals (issue 20), {machine_line()}")
    for data, table in tables:
        rows = lsh_rows(table).dropna(subset=["ms_single"])
        reach = rows["recall@10"] >= RECALL_GOAL
        scan_single, scan_batch = table.attrs["scan_single_ms"], table.attrs["scan_ms"]
        if data.name.startswith("real:"):
            hnswlib_ms = peer_ms(table, "hnswlib", "M=32 ef=16", "ms_single")
            goal_line(
                f"{data.name}, one query at a time on one thread: LSH recall@10 >= {RECALL_GOAL} at >= "
                f"{REAL_SINGLE_GOAL:.0f}x the scan ({scan_single:.4f} ms) and <= {REAL_HNSWLIB_RATIO_GOAL}x hnswlib "
                f"ef16 ({hnswlib_ms:.4f} ms)",
                rows,
                reach
                & (rows["x_scan_single"] >= REAL_SINGLE_GOAL)
                & (rows["ms_single"] <= REAL_HNSWLIB_RATIO_GOAL * hnswlib_ms),
                "ms_single",
                table,
            )
            goal_line(
                f"{data.name}, batch on all cores: LSH recall@10 >= {RECALL_GOAL} at >= {REAL_BATCH_GOAL:.0f}x the "
                f"scan ({scan_batch:.4f} ms/query)",
                rows,
                reach & (rows["x_scan_batch"] >= REAL_BATCH_GOAL),
                "ms_batch",
                table,
            )
        else:
            hnsw = table[(table["family"] == "faiss HNSW") & (table["recall@10"] >= RECALL_GOAL)]
            hnsw_ms = hnsw["ms_single"].min() if not hnsw.empty else np.nan
            scope = "" if data.large else " [goal is set at 1M; this is the same test at this n]"
            goal_line(
                f"{data.name}, one query at a time on one thread: LSH recall@10 >= {RECALL_GOAL} at >= "
                f"{LARGE_SINGLE_GOAL:.0f}x the scan ({scan_single:.3f} ms) and <= {HNSW_RATIO_GOAL:.0f}x faiss HNSW's "
                f"time at recall >= {RECALL_GOAL} ({hnsw_ms:.4f} ms){scope}",
                rows,
                reach & (rows["x_scan_single"] >= LARGE_SINGLE_GOAL) & (rows["ms_single"] <= HNSW_RATIO_GOAL * hnsw_ms),
                "ms_single",
                table,
            )


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--family`` resolved and ``--features`` defaulted (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--features",
        type=Path,
        action="append",
        default=[],
        help="feature set (repeatable; default: the default collection's newest complete one)",
    )
    parser.add_argument("--no-features", action="store_true", help="no real feature set (synthetic sets only)")
    parser.add_argument("--hard", action="store_true", help="add the hard synthetic set (--n x 256)")
    parser.add_argument("--clustered", action="store_true", help="add the paper-size clustered synthetic set")
    parser.add_argument("--n", type=int, default=100_000, help="hard synthetic set size (default 100,000)")
    parser.add_argument("--queries", type=int, default=500, help="hard synthetic queries (default 500)")
    parser.add_argument("--decay", type=float, default=1.5, help="hard set: variance of axis j ∝ j^-decay")
    parser.add_argument("--reduce-dim", type=int, default=48, help="PCA dimensions of the PCA LSH families")
    parser.add_argument("--max-visited", type=float, default=0.35, help="skip LSH settings visiting more")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best of)")
    parser.add_argument(
        "--single-queries", type=int, default=500, help="queries timed one at a time (the first ones; default 500)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller grids")
    parser.add_argument(
        "--family", action="append", default=[], choices=LSH_FAMILIES, help="only these LSH families (repeatable)"
    )
    parser.add_argument("--all-families", action="store_true", help=f"every LSH family (default: {DEFAULT_FAMILIES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmarks")
    args = parser.parse_args(argv)
    args.family = list(LSH_FAMILIES if args.all_families else args.family or DEFAULT_FAMILIES)
    if not args.features and not args.no_features:
        from cbir.features import workspace

        args.features = [workspace.resolve_feature_path(None)]
    return args


def dataset_loaders(args: argparse.Namespace) -> list[Callable[[], Dataset]]:
    """One loader per data set asked for (real feature sets, then hard, then clustered), called one at a time so
    that a single data set is in memory."""
    loaders: list[Callable[[], Dataset]] = [lambda path=path: real_set(path) for path in args.features]
    if args.hard:

        def hard() -> Dataset:
            X, Q = hard_synthetic(args.n, args.queries, decay=args.decay, seed=args.seed)
            return Dataset(
                name=f"hard-{args.n // 1000}k",
                description=(
                    f"hard synthetic {args.n:,} x 256, {args.queries} queries (variance j^-{args.decay:g}, "
                    "non-negative, no clusters)"
                ),
                index=X,
                queries=Q,
                large=args.n >= 1_000_000,
            )

        loaders.append(hard)
    if args.clustered:

        def clustered() -> Dataset:
            X, Q = clustered_set()
            return Dataset(
                "clustered-paper",
                f"benchmarks/search.py synthetic ({len(X):,} x {X.shape[1]}-d, {len(Q)} queries)",
                X,
                Q,
            )

        loaders.append(clustered)
    return loaders


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 60)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    warm_up()
    print(
        f"{machine_line()}; numba {numba.__version__} with "
        f"{numba.get_num_threads()} threads; k={K}; euclidean; LSH families: {', '.join(args.family)}"
    )
    tables = []
    for load in dataset_loaders(args):
        data = load()
        tables.append((data, run_dataset(data, args, args.out)))
        del data.index
    goals(tables)
    print(f"\ncharts and CSV tables in {args.out}; total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
