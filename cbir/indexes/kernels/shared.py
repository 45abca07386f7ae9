"""A batch's probed buckets scored once for all the queries that probe them (issue 20, item 4).

Query by query (:func:`cbir.indexes.kernels.blocks.block_search`), a bucket probed by several queries of a batch is
read and converted from uint8 once per query. Here a batch runs in three steps:

1. each (query, probe) pair's bucket is looked up (parallel over queries), and the pairs are sorted by bucket (a
   counting sort; queries ascending within a bucket);
2. the sorted pairs are cut into one run per thread; a run converts each bucket's block of codes to float32 once
   and scores it against every query of the run that probes it, into that run's own shortlist of the query
   (a max-heap of the best R distinct (code distance, id) pairs: no two threads write the same heap);
3. per query (parallel over queries), the runs' shortlists are merged into the best R distinct pairs and ranked
   exactly, as one query's shortlist is (:func:`cbir.indexes.kernels.query._rerank_shortlist`).

The shortlist is the best R distinct members by (code distance, id) over every probed bucket, whatever the order the
buckets are met in; query by query a member whose code distance equals the R-th best's exactly is kept only if it
was met first. Apart from such exact ties the answers and the visited counts (codes scored) are the same. Without
``patience`` (which follows the probing order) and ``stamp`` only.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cbir.indexes.kernels.common import BucketTables, _jit
from cbir.indexes.kernels.grouped import grouped_rerank
from cbir.indexes.kernels.query import _rerank_shortlist, _shortlist_scratch
from cbir.indexes.kernels.tables import _find_bucket
from cbir.indexes.kernels.topk import _code_distance, _in_heap, _keep_best


@_jit(parallel=True)
def _probed_buckets(
    tables: BucketTables, probe_tables: np.ndarray, probe_keys: np.ndarray, n_chunks: int, out: np.ndarray
) -> None:
    """``out`` (m, P) int64: the bucket (a row of ``tables.bucket_starts``) of each probe, -1 where it is empty or
    the sequence has ended."""
    m, n_probes = probe_tables.shape
    for chunk in prange(n_chunks):
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            for p in range(n_probes):
                t = probe_tables[i, p]
                if t < 0:
                    out[i, p] = -1
                    continue
                lo, hi = tables.table_offsets[t], tables.table_offsets[t + 1]
                out[i, p] = _find_bucket(tables.bucket_keys, lo, hi, probe_keys[i, p])


@_jit()
def _pairs_by_bucket(
    buckets: np.ndarray, bucket_starts: np.ndarray, n_runs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (query, bucket) pairs of ``buckets`` (m, P) sorted by bucket (counting sort; queries ascending within a
    bucket): (pair_bucket, pair_query) (total,) int64, and the bounds (n_runs + 1,) int64 of ``n_runs`` runs of
    them with about as many codes to score each (a pair scores its bucket's members)."""
    n_buckets = bucket_starts.shape[0] - 1
    m, n_probes = buckets.shape
    starts = np.zeros(n_buckets + 1, dtype=np.int64)
    for i in range(m):
        for p in range(n_probes):
            if buckets[i, p] >= 0:
                starts[buckets[i, p] + 1] += 1
    for b in range(n_buckets):
        starts[b + 1] += starts[b]
    total = starts[n_buckets]
    pair_bucket = np.empty(total, dtype=np.int64)
    pair_query = np.empty(total, dtype=np.int64)
    for i in range(m):
        for p in range(n_probes):
            b = buckets[i, p]
            if b >= 0:
                place = starts[b]
                pair_bucket[place] = b
                pair_query[place] = i
                starts[b] = place + 1
    work = 0
    for p in range(total):
        work += bucket_starts[pair_bucket[p] + 1] - bucket_starts[pair_bucket[p]]
    bounds = np.full(n_runs + 1, total, dtype=np.int64)
    bounds[0] = 0
    run, done = 1, 0
    for p in range(total):
        while run < n_runs and done >= work * run // n_runs:
            bounds[run] = p
            run += 1
        done += bucket_starts[pair_bucket[p] + 1] - bucket_starts[pair_bucket[p]]
    return pair_bucket, pair_query, bounds


@_jit(parallel=True)
def _score_runs(
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    pair_bucket: np.ndarray,
    pair_query: np.ndarray,
    bounds: np.ndarray,
    widest: int,
    heap_key: np.ndarray,
    heap_id: np.ndarray,
    heap_size: np.ndarray,
    visited: np.ndarray,
) -> None:
    """Step 2 of the module docstring: run ``r`` of the sorted pairs (``bounds[r] .. bounds[r + 1] - 1``) into
    ``heap_*[r]`` ((runs, m, R) keys and ids, (runs, m) sizes) and ``visited[r]`` (runs, m); ``widest``: the largest
    bucket's members."""
    n_runs, _, limit = heap_key.shape
    width = codes.shape[1]
    bucket_ids = tables.bucket_ids
    for run in prange(n_runs):
        block = np.empty((max(widest, 1), width), dtype=np.float32)
        current = -1
        for p in range(bounds[run], bounds[run + 1]):
            bucket = pair_bucket[p]
            start, stop = tables.bucket_starts[bucket], tables.bucket_starts[bucket + 1]
            if bucket != current:  # the block once in float32 for every query of the run probing it
                for row in range(stop - start):
                    for j in range(width):
                        block[row, j] = codes[start + row, j]
                current = bucket
            i = pair_query[p]
            keys, ids = heap_key[run, i], heap_id[run, i]
            size = heap_size[run, i]
            visited[run, i] += stop - start
            query = units[i]
            for row in range(stop - start):
                key = _code_distance(query, block[row])
                if size == limit and key > keys[0]:
                    continue  # worse than the worst kept (an equal key: by id, in _keep_best)
                obj = bucket_ids[start + row]
                if _in_heap(ids, size, obj):
                    continue
                size = _keep_best(keys, ids, size, key, obj)
            heap_size[run, i] = size


@_jit(parallel=True)
def _merge_and_rank(
    queries: np.ndarray,
    data: np.ndarray,
    heap_key: np.ndarray,
    heap_id: np.ndarray,
    heap_size: np.ndarray,
    metric: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
    short_ids: np.ndarray,
    short_kept: np.ndarray,
) -> None:
    """Step 3 of the module docstring: per query, the best R distinct pairs of the runs' shortlists, ranked exactly
    into ``out_*`` (m, k), or, when ``short_ids`` has a row per query (the re-rank grouped by row), left in
    ``short_ids[i, :short_kept[i]]``."""
    m = queries.shape[0]
    n_runs, _, limit = heap_key.shape
    for chunk in prange(n_chunks):
        scratch = _shortlist_scratch(limit, out_ids.shape[1])
        keys, ids = scratch[0], scratch[1]
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            size = 0
            for run in range(n_runs):
                for j in range(heap_size[run, i]):
                    key, obj = heap_key[run, i, j], heap_id[run, i, j]
                    if size == limit and key > keys[0]:
                        continue
                    if _in_heap(ids, size, obj):
                        continue
                    size = _keep_best(keys, ids, size, key, obj)
            if short_ids.shape[0] == m:
                short_ids[i, :size] = ids[:size]
                short_kept[i] = size
            else:
                _rerank_shortlist(queries[i], data, scratch, size, metric, False, out_scores[i], out_ids[i])


def shared_block_search(
    queries: np.ndarray,
    data: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    rerank: int,
    metric: int,
    n_runs: int,
    n_chunks: int,
    grouped: bool,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
    out_visited: np.ndarray,
) -> None:
    """:func:`cbir.indexes.kernels.blocks.block_search` of a batch (its arguments; no ``patience``, no ``stamp``)
    with each probed bucket scored once per run of ``n_runs`` (one per thread) for all the queries probing it, the
    shortlists ranked query by query or, ``grouped``, by row (:mod:`cbir.indexes.kernels.grouped`); results written
    to ``out_*``. The module docstring has the steps."""
    m = len(queries)
    buckets = np.empty(probe_tables.shape, dtype=np.int64)
    _probed_buckets(tables, probe_tables, probe_keys, n_chunks, buckets)
    pair_bucket, pair_query, bounds = _pairs_by_bucket(buckets, tables.bucket_starts, n_runs)
    widest = int(np.diff(tables.bucket_starts).max()) if len(tables.bucket_starts) > 1 else 0
    heap_key = np.empty((n_runs, m, rerank), dtype=np.float32)
    heap_id = np.empty((n_runs, m, rerank), dtype=np.int64)
    heap_size = np.zeros((n_runs, m), dtype=np.int64)
    visited = np.zeros((n_runs, m), dtype=np.int64)
    _score_runs(units, codes, tables, pair_bucket, pair_query, bounds, widest, heap_key, heap_id, heap_size, visited)
    short_ids = np.empty((m if grouped else 0, rerank), dtype=np.int64)
    short_kept = np.zeros(m if grouped else 0, dtype=np.int64)
    _merge_and_rank(
        queries, data, heap_key, heap_id, heap_size, metric, n_chunks, out_scores, out_ids, short_ids, short_kept
    )
    if grouped:
        grouped_rerank(queries, data, short_ids, short_kept, metric, n_chunks, out_scores, out_ids)
    out_visited[:] = visited.sum(axis=0)
