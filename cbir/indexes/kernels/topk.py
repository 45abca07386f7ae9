"""Distances and top-k: blocked squared distances with an early stop, the exact re-rank of candidates."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from cbir.indexes.kernels.common import METRIC_EUCLIDEAN, RowParallel, _jit
from cbir.indexes.kernels.probing import _above, _heap_pop, _heap_push, _heap_replace_top

# Only the reductions allow reassociation: it lets LLVM vectorise the sum (about 8x faster on AVX2/AVX-512),
# changing results in the last bits only. Everything else is compiled with strict IEEE semantics.

# Squared distances are summed in blocks of this many coordinates, so that a candidate whose partial sum
# already exceeds the current k-th best can be dropped without reading the rest of its row.
_DISTANCE_BLOCK = 256


@_jit(fastmath={"reassoc"})
def _squared_l2_range(a: np.ndarray, b: np.ndarray, start: int, stop: int) -> np.float32:
    # slices, not ``range(start, stop)`` indices: with an index of unknown sign numba emits wrap-around
    # handling for negative indices, which stops LLVM from vectorising the loop (3x slower)
    a_part = a[start:stop]
    b_part = b[start:stop]
    total = np.float32(0.0)
    for j in range(a_part.shape[0]):
        diff = a_part[j] - b_part[j]
        total += diff * diff
    return total


@_jit()
def _squared_l2(a: np.ndarray, b: np.ndarray, bound: np.float32) -> np.float32:
    """Squared distance, summed block by block in a fixed order.

    Stops early once the running sum exceeds ``bound`` and returns that partial sum: the remaining terms
    are non-negative and float addition is monotone, so the full sum would exceed ``bound`` too. The value
    returned when it does not stop early does not depend on ``bound``.
    """
    dim = a.shape[0]
    total = np.float32(0.0)
    for start in range(0, dim, _DISTANCE_BLOCK):
        total += _squared_l2_range(a, b, start, min(start + _DISTANCE_BLOCK, dim))
        if total > bound:
            break
    return total


@_jit(fastmath={"reassoc"})
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


@_jit()
def _ranking_key(query: np.ndarray, row: np.ndarray, metric: int, bound: np.float32) -> np.float32:
    """Smaller is better: squared distance, or minus the similarity for cosine (unit vectors).

    A euclidean key larger than ``bound`` may be returned as any value larger than ``bound`` (early exit).
    """
    if metric == METRIC_EUCLIDEAN:
        return _squared_l2(query, row, bound)
    return -_dot(query, row)


@_jit()
def _rerank_into(
    query: np.ndarray,
    data: np.ndarray,
    candidates: np.ndarray,
    metric: int,
    top_key: np.ndarray,
    top_id: np.ndarray,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """Exact top-k of ``candidates`` for one query, best first, ties by id; unused slots keep -1 / ±inf.

    ``top_key`` / ``top_id`` (k,) are scratch space for a max-heap of the k best (key, id) pairs seen.
    """
    k = out_ids.shape[0]
    size = 0
    bound = np.float32(np.inf)  # the k-th best key once the heap is full: worse candidates are dropped
    for c in range(candidates.shape[0]):
        obj = candidates[c]
        size = _keep_best(top_key, top_id, size, _ranking_key(query, data[obj], metric, bound), obj)
        if size == k:
            bound = top_key[0]
    _heap_results(top_key, top_id, size, metric, out_scores, out_ids)


@_jit()
def _keep_best(top_key: np.ndarray, top_id: np.ndarray, size: int, key: np.float32, obj: np.int64) -> int:
    """Offer (key, obj) to the max-heap ``top_key`` / ``top_id`` of the best ``len(top_key)`` pairs seen (smaller
    keys, ties by smaller id); returns the heap's new size."""
    if size < top_key.shape[0]:
        return _heap_push(top_key, top_id, size, key, obj, True)
    if _above(top_key[0], top_id[0], key, obj, True):
        _heap_replace_top(top_key, top_id, size, key, obj, True)
    return size


@_jit()
def _heap_results(
    top_key: np.ndarray, top_id: np.ndarray, size: int, metric: int, out_scores: np.ndarray, out_ids: np.ndarray
) -> None:
    """Empty the max-heap of :func:`_keep_best` into ``out_*`` ascending by (key, id): distances (the square root
    of the key) or similarities (minus the key); the heap is popped from the back."""
    for position in range(size - 1, -1, -1):
        key, obj, _ = _heap_pop(top_key, top_id, position + 1, True)
        out_ids[position] = obj
        out_scores[position] = np.sqrt(key) if metric == METRIC_EUCLIDEAN else -key


def _empty_results(m: int, k: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
    fill = np.inf if metric == METRIC_EUCLIDEAN else -np.inf
    return np.full((m, k), fill, dtype=np.float32), np.full((m, k), -1, dtype=np.int64)


@RowParallel
def _rerank_kernel(
    queries: np.ndarray,
    data: np.ndarray,
    cand_offsets: np.ndarray,
    cand_ids: np.ndarray,
    metric: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """Parallel loop of :func:`rerank_candidates` (arguments as there; results written to ``out_*``)."""
    m = queries.shape[0]
    k = out_ids.shape[1]
    for chunk in prange(n_chunks):
        top_key = np.empty(k, dtype=np.float32)
        top_id = np.empty(k, dtype=np.int64)
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            candidates = cand_ids[cand_offsets[i] : cand_offsets[i + 1]]
            _rerank_into(
                query=queries[i],
                data=data,
                candidates=candidates,
                metric=metric,
                top_key=top_key,
                top_id=top_id,
                out_scores=out_scores[i],
                out_ids=out_ids[i],
            )


def _n_chunks(m: int) -> int:
    """Work items of a parallel loop over m queries: a few per thread balances uneven candidate counts,
    and per-item scratch space is allocated once per item, not once per query."""
    return min(m, 4 * numba.get_num_threads())


def rerank_candidates(
    queries: np.ndarray, data: np.ndarray, cand_offsets: np.ndarray, cand_ids: np.ndarray, k: int, metric: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among per-query candidate lists (CSR), parallel over queries.

    Args:
        queries: (m, d) float32; data: (n, d) float32 (unit rows for cosine).
        cand_offsets: (m+1,) int64; cand_ids: (total,) int64 — candidates of query i are
            ``cand_ids[cand_offsets[i]:cand_offsets[i+1]]``.

    Returns:
        scores (m, k) float32 (distance ascending, or similarity descending) and ids (m, k) int64, padded
        with -1 / +inf (euclidean) or -inf (cosine).
    """
    m = queries.shape[0]
    scores, ids = _empty_results(m, k, metric)
    _rerank_kernel(
        queries=queries,
        data=data,
        cand_offsets=cand_offsets,
        cand_ids=cand_ids,
        metric=metric,
        n_chunks=_n_chunks(m),
        out_scores=scores,
        out_ids=ids,
    )
    return scores, ids
