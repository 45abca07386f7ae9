"""Bucket-ordered compact codes: each probed bucket is one contiguous block of uint8 codes, scored in a tight loop.

The CSR tables (:class:`cbir.indexes.kernels.common.BucketTables`) keep the ids of a bucket contiguously; beside them
``block_codes`` (g·n, s) uint8 keeps the members' codes in the same order (``block_codes[p]`` is the code of
``bucket_ids[p]``). Probing a bucket then reads one block of rows and scores each against the query in code units
(squared L2, float32, a loop the compiler vectorises) — no gather of an id and then of its code, as
:func:`cbir.indexes.kernels.query.lsh_search` does. The best ``rerank`` (by code distance) are kept in a max-heap
and ranked exactly.

A member met in several probed tables is either scored again (``stamp=False``: it can only enter the heap once,
which a scan of the heap's R ids checks when its key beats the heap's worst) or skipped with a query-stamped
array (``stamp=True``: one int32 per object, set to the query's stamp when first met; no clearing between queries).

In a batch the exact re-rank is grouped by row (:mod:`cbir.indexes.kernels.grouped`): the shortlists are collected
first, then each shortlisted row is read once, in memory order, for every query that holds it (the same answers).

Adaptive stop (``patience`` P > 0): the probes come best first over all tables, so once P probes in a row have
changed nothing in the shortlist (no member scored better than its R-th best), the rest of the sequence, worse
buckets, is skipped: easy queries stop early, hard ones probe the whole sequence.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from cbir.indexes.kernels.common import METRIC_EUCLIDEAN, BucketTables, _jit
from cbir.indexes.kernels.grouped import grouped_rerank
from cbir.indexes.kernels.query import _rerank_shortlist, _shortlist_scratch
from cbir.indexes.kernels.sketch import block_score
from cbir.indexes.kernels.tables import _find_bucket
from cbir.indexes.kernels.topk import _empty_results, _keep_best, _n_chunks


def block_codes(tables: BucketTables, codes: np.ndarray) -> np.ndarray:
    """The codes (n, s) uint8 of the objects in bucket order: (g·n, s) uint8, row p = ``codes[bucket_ids[p]]``."""
    return np.ascontiguousarray(codes[tables.bucket_ids])


@_jit()
def _in_heap(heap_id: np.ndarray, size: int, obj: np.int64) -> bool:
    for position in range(size):
        if heap_id[position] == obj:
            return True
    return False


@_jit()
def _score_blocks(
    units: np.ndarray,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    tables: BucketTables,
    codes: np.ndarray,
    stamp: bool,
    stamps: np.ndarray,
    current: np.int32,
    patience: int,
    heap_key: np.ndarray,
    heap_id: np.ndarray,
) -> tuple[int, int]:
    """Score the blocks of one query's probed buckets (``probe_tables[p] < 0`` ends the sequence; with ``patience``
    > 0 it ends after that many probes in a row without a change to a full shortlist) into the max-heap
    ``heap_key`` / ``heap_id`` (R,) of the best R distinct members; returns (heap size, codes scored)."""
    limit = heap_key.shape[0]
    size = 0
    scored = 0
    quiet = 0  # probes in a row that changed nothing
    bound = np.float32(np.inf)
    bucket_ids = tables.bucket_ids
    for p in range(probe_tables.shape[0]):
        t = probe_tables[p]
        if t < 0 or (patience > 0 and quiet >= patience and size == limit):
            break
        quiet += 1
        bucket = _find_bucket(tables.bucket_keys, tables.table_offsets[t], tables.table_offsets[t + 1], probe_keys[p])
        if bucket < 0:
            continue
        for position in range(tables.bucket_starts[bucket], tables.bucket_starts[bucket + 1]):
            if stamp:
                obj = bucket_ids[position]
                if stamps[obj] == current:
                    continue
                stamps[obj] = current
            scored += 1
            key = block_score(units, codes[position])
            if size == limit and key >= bound:
                continue  # no better than the worst kept (a key equal to it keeps the member met first)
            obj = bucket_ids[position]
            if not stamp and _in_heap(heap_id, size, obj):
                continue
            quiet = 0
            size = _keep_best(heap_key, heap_id, size, key, obj)
            if size == limit:
                bound = heap_key[0]
    return size, scored


@_jit(parallel=True)
def _block_kernel(
    queries: np.ndarray,
    data: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    rerank: int,
    stamp: bool,
    patience: int,
    metric: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
    out_visited: np.ndarray,
    short_ids: np.ndarray,
    short_kept: np.ndarray,
) -> None:
    """Parallel loop over query chunks of :func:`block_search` (results written to ``out_*`` or ``short_*``)."""
    m = queries.shape[0]
    for chunk in prange(n_chunks):
        _block_queries(
            queries, data, units, codes, tables, probe_tables, probe_keys, rerank, stamp, patience, metric,
            chunk * m // n_chunks, (chunk + 1) * m // n_chunks, out_scores, out_ids, out_visited, short_ids,
            short_kept,
        )  # fmt: skip


@_jit()
def _block_queries(
    queries: np.ndarray,
    data: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    rerank: int,
    stamp: bool,
    patience: int,
    metric: int,
    first: int,
    stop: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
    out_visited: np.ndarray,
    short_ids: np.ndarray,
    short_kept: np.ndarray,
) -> None:
    """The queries ``first .. stop - 1`` of :func:`block_search` in the calling thread (one block of scratch):
    each query's shortlist ranked exactly into ``out_*``, or, when ``short_ids`` has a row per query (the grouped
    re-rank, :mod:`cbir.indexes.kernels.grouped`), left in ``short_ids[i, :short_kept[i]]``."""
    k = out_ids.shape[1]
    grouped = short_ids.shape[0] == queries.shape[0]
    stamps = np.zeros(data.shape[0] if stamp else 1, dtype=np.int32)
    scratch = _shortlist_scratch(rerank, k)
    heap_key, heap_id, _, _, _, _ = scratch
    for i in range(first, stop):
        kept, scored = _score_blocks(
            units=units[i],
            probe_tables=probe_tables[i],
            probe_keys=probe_keys[i],
            tables=tables,
            codes=codes,
            stamp=stamp,
            stamps=stamps,
            current=np.int32(i - first + 1),
            patience=patience,
            heap_key=heap_key,
            heap_id=short_ids[i] if grouped else heap_id,
        )
        out_visited[i] = scored
        if grouped:
            short_kept[i] = kept
            continue
        _rerank_shortlist(queries[i], data, scratch, kept, metric, False, out_scores[i], out_ids[i])


@_jit()
def _block_one(
    queries: np.ndarray,
    data: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    k: int,
    rerank: int,
    stamp: bool,
    patience: int,
    metric: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query of :func:`block_search` (re-ranked on its own), its results allocated here: no numpy call from
    Python per query (each costs microseconds when the caches are cold, as they are between a server's queries)."""
    scores = np.full((1, k), np.inf if metric == METRIC_EUCLIDEAN else -np.inf, dtype=np.float32)
    ids = np.full((1, k), -1, dtype=np.int64)
    visited = np.zeros(1, dtype=np.int64)
    short_ids = np.empty((0, rerank), dtype=np.int64)
    short_kept = np.zeros(0, dtype=np.int64)
    _block_queries(
        queries, data, units, codes, tables, probe_tables, probe_keys, rerank, stamp, patience, metric, 0, 1, scores,
        ids, visited, short_ids, short_kept,
    )  # fmt: skip
    return scores, ids, visited


def block_search(
    queries: np.ndarray,
    data: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    k: int,
    rerank: int,
    metric: int,
    stamp: bool = False,
    patience: int = 0,
    grouped: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch search over bucket-ordered codes (numba, parallel over queries; one query runs in the calling thread).

    Args:
        queries: (m, d) float32 (unit rows for cosine); data: (n, d) float32 indexed vectors (the exact re-rank).
        units: (m, s) float32 queries in code units (:func:`cbir.indexes.pca.code_units`), or (m, w) uint64 their
            sign sketches (:func:`cbir.indexes.kernels.sketch.sign_sketches`) when ``codes`` are sketches.
        codes: (g·n, s) uint8 codes in bucket order (:func:`block_codes`), or (g·n, w) uint64 sign sketches
            (scored by popcount, :mod:`cbir.indexes.kernels.sketch`).
        tables: the CSR bucket layout; probe_tables / probe_keys: (m, P) int64 / uint64 probed buckets, best first,
            table -1 ending a shorter sequence (:func:`cbir.indexes.kernels.polytope.cross_polytope_probes`).
        k: results per query; rerank: R >= 1 members (best code distance) ranked exactly.
        metric: ``METRIC_EUCLIDEAN`` or ``METRIC_COSINE``; stamp: skip members met before; patience: 0 (probe every
            listed bucket) or P: stop after P probes in a row that left a full shortlist unchanged (module docstring).
        grouped: rank the shortlisted rows exactly grouped by row for the whole batch
            (:mod:`cbir.indexes.kernels.grouped`; the same answers) instead of query by query; None: grouped for
            a batch on one thread, where it takes 10-15 % less CPU; on several threads query by query, which
            measured 1.3-1.4x faster on two idle cores (``benchmarks/batch_blocks.py``: 0.052-0.055 against
            0.070-0.075 ms a query, load 0.8-1.5) and level with it on busy ones.

    Returns:
        scores (m, k) float32, ids (m, k) int64 (-1 padded), visited (m,) int64 = codes scored (with ``stamp``:
        distinct members; without: a member met in several tables counts each time).
    """
    m = len(queries)
    if units.shape[0] != m or probe_tables.shape != probe_keys.shape or probe_tables.shape[0] != m:
        raise ValueError("units, probe_tables and probe_keys must have one row per query")
    if codes.shape[0] != len(tables.bucket_ids) or codes.shape[1] != units.shape[1]:
        raise ValueError(f"codes {codes.shape} do not match the tables and the units {units.shape}")
    if rerank < 1 or patience < 0:
        raise ValueError(f"rerank must be >= 1 and patience >= 0, got {rerank} and {patience}")
    if m == 1 and not grouped:  # one query (a search engine's): one call, no parallel launch
        return _block_one(
            queries, data, units, codes, tables, probe_tables, probe_keys, int(k), int(rerank), bool(stamp),
            int(patience), int(metric),
        )  # fmt: skip
    scores, ids = _empty_results(m, k, metric)
    visited = np.zeros(m, dtype=np.int64)
    arguments = (queries, data, units, codes, tables, probe_tables, probe_keys)
    arguments += (int(rerank), bool(stamp), int(patience), int(metric))
    grouped = (m > 1 and numba.get_num_threads() == 1) if grouped is None else bool(grouped)
    short_ids = np.empty((m if grouped else 0, rerank), dtype=np.int64)
    short_kept = np.zeros(m if grouped else 0, dtype=np.int64)
    if m == 1:  # one query grouped (tests)
        _block_queries(*arguments, 0, 1, scores, ids, visited, short_ids, short_kept)
    else:
        _block_kernel(*arguments, _n_chunks(m), scores, ids, visited, short_ids, short_kept)
    if grouped:
        grouped_rerank(queries, data, short_ids, short_kept, int(metric), _n_chunks(m), scores, ids)
    return scores, ids, visited
