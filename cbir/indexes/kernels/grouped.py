"""A batch of block searches with its exact re-rank grouped by indexed row (issue 20, item 4).

One query at a time, the exact re-rank of :func:`cbir.indexes.kernels.blocks.block_search` reads each query's R
shortlisted rows (a few KB each, scattered over the data) from memory: in a batch of m queries that is m·R random
row reads, a large share of a batch query's time once the blocks are scored. Grouped, a batch runs in three
steps:

1. per query (parallel over queries, each query's work serial): the probed blocks are scored into the query's
   shortlist of R (code distance, id) pairs, as one query does (:func:`cbir.indexes.kernels.blocks._score_blocks`);
2. the (query, shortlisted row) pairs are sorted by row (a counting sort), and each row, read once in memory order,
   is ranked exactly against every query that shortlisted it (parallel over runs of pairs);
3. per query, the exact top-k of its R keys (ties by id; serial).

The answers equal the per-query path's: the same shortlists, the same exact keys (full sums in the same order; the
per-query path's early exit only cuts keys that cannot enter the top k) and the same (key, id) order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cbir.indexes.kernels.common import _jit
from cbir.indexes.kernels.topk import _heap_results, _keep_best, _ranking_key


@_jit()
def _pairs_by_row(ids: np.ndarray, kept: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The shortlisted (query, row) pairs sorted by row (counting sort; queries ascending within a row).

    Args:
        ids: (m, R) int64 shortlists, the first ``kept[i]`` of row i used; n: rows of the data.

    Returns:
        rows (total,) int64 ascending and slots (total,) int64 = ``i * R + j``, the pair's place in ``ids``.
    """
    m, width = ids.shape
    starts = np.zeros(n + 1, dtype=np.int64)
    for i in range(m):
        for j in range(kept[i]):
            starts[ids[i, j] + 1] += 1
    for row in range(n):
        starts[row + 1] += starts[row]
    total = starts[n]
    rows = np.empty(total, dtype=np.int64)
    slots = np.empty(total, dtype=np.int64)
    for i in range(m):
        for j in range(kept[i]):
            row = ids[i, j]
            place = starts[row]
            rows[place] = row
            slots[place] = i * width + j
            starts[row] = place + 1
    return rows, slots


@_jit(parallel=True)
def _keys_by_row(
    queries: np.ndarray,
    data: np.ndarray,
    rows: np.ndarray,
    slots: np.ndarray,
    metric: int,
    n_chunks: int,
    out_keys: np.ndarray,
) -> None:
    """Exact ranking keys of the sorted pairs (``out_keys`` (m·R,) float32 at each pair's slot); each chunk is a
    run of pairs, so a row is read once (twice where a chunk boundary splits its run)."""
    total = rows.shape[0]
    width = out_keys.shape[0] // max(queries.shape[0], 1)
    inf = np.float32(np.inf)
    for chunk in prange(n_chunks):
        for p in range(chunk * total // n_chunks, (chunk + 1) * total // n_chunks):
            slot = slots[p]
            out_keys[slot] = _ranking_key(queries[slot // width], data[rows[p]], metric, inf)


@_jit()
def _top_k_of_keys(
    keys: np.ndarray, ids: np.ndarray, kept: np.ndarray, metric: int, out_scores: np.ndarray, out_ids: np.ndarray
) -> None:
    """Per query, the exact top-k of its ``kept[i]`` (key, id) pairs, best first, ties by id (serial: a few heap
    offers per query, cheaper than waking the workers for a third parallel loop)."""
    k = out_ids.shape[1]
    top_key = np.empty(k, dtype=np.float32)
    top_id = np.empty(k, dtype=np.int64)
    for i in range(ids.shape[0]):
        size = 0
        for j in range(kept[i]):
            size = _keep_best(top_key, top_id, size, keys[i, j], ids[i, j])
        _heap_results(top_key, top_id, size, metric, out_scores[i], out_ids[i])


def grouped_rerank(
    queries: np.ndarray,
    data: np.ndarray,
    ids: np.ndarray,
    kept: np.ndarray,
    metric: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """Steps 2 and 3 of the module docstring: the exact top-k (``out_*`` (m, k)) of each query's shortlist
    ``ids[i, :kept[i]]`` ((m, R) int64), ranking each shortlisted row once for all the queries that hold it."""
    rows, slots = _pairs_by_row(ids, kept, data.shape[0])
    keys = np.empty(ids.size, dtype=np.float32)
    _keys_by_row(queries, data, rows, slots, metric, n_chunks, keys)
    _top_k_of_keys(keys.reshape(ids.shape), ids, kept, metric, out_scores, out_ids)
