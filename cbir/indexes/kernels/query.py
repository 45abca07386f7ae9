"""The LSH query kernel: candidates from the probed buckets (deduplicated, optionally counted and shortlisted)
and their exact ranking."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from cbir.indexes.kernels.candidates import _collect_candidates, _collect_listed, _sorted_candidates
from cbir.indexes.kernels.common import METRIC_EUCLIDEAN, BucketTables, RowParallel, _jit
from cbir.indexes.kernels.probing import (
    _above,
    _heap_pop,
    _heap_push,
    _heap_replace_top,
    _probe_workspace,
)
from cbir.indexes.kernels.topk import (
    _empty_results,
    _heap_results,
    _keep_best,
    _n_chunks,
    _ranking_key,
    _rerank_into,
    _squared_l2,
)

_MODE_SEARCH = 0  # top-k and visited
_MODE_COUNT = 1  # visited only
_MODE_FILL = 2  # visited and the sorted candidates, written to cand_ids at cand_offsets


class ProbeArgs(NamedTuple):
    """What a batch LSH query needs: the queries, the indexed data, the query slots and the index's tables.

    The arguments of :func:`lsh_search`, :func:`lsh_candidates` and :func:`query_reference`.
    """

    queries: np.ndarray  # (m, d) float32 C-contiguous (unit rows for cosine)
    data: np.ndarray  # (n, d) float32 C-contiguous indexed vectors
    codes: np.ndarray  # (m, g*h) int64 slot codes of the queries (slot_positions)
    fractions: np.ndarray  # (m, g*h) float64 positions inside the slots (slot_positions)
    n_tables: int
    n_projections: int
    bucket_width: float
    n_probes: int
    tables: BucketTables  # the index's bucket layout
    min_collisions: int = 1  # candidates are the ids found in at least this many probed buckets (1: the union)


class Shortlist(NamedTuple):
    """A cheaper candidate phase: score every candidate in a small space first, re-rank only the best exactly.

    The scoring space is any (n, r) embedding whose squared L2 distance approximates the ranking
    (:class:`cbir.indexes.lsh.LSHIndex` uses PCA coordinates, as float32 or as uint8 codes of
    :class:`cbir.indexes.pca.Codebook`
    with the queries in code units). The kept candidates are ranked exactly in increasing
    scoring distance. With ``lower_bound=True`` the caller guarantees that the scoring space is an orthogonal
    projection (so the scoring distance never exceeds the true one, unit rows for cosine): the exact ranking then
    stops at the first candidate whose scoring distance already exceeds the k-th best exact one, since no later
    candidate can enter the top k. The answer is the exact top-k of the kept candidates either way.
    """

    queries: np.ndarray  # (m, r) float32 C-contiguous queries in the scoring space
    data: np.ndarray  # (n, r) float32 or uint8 C-contiguous indexed objects in the scoring space (uint8: codes)
    size: int  # >= 1: candidates (best by scoring distance, ties by id) kept for the exact re-rank
    lower_bound: bool = False


class ListedProbes(NamedTuple):
    """A batch LSH query whose buckets are listed by the caller (cross-polytope LSH computes its probing sequence
    outside the search kernel): the arguments of :func:`lsh_search` / :func:`lsh_candidates` besides
    :class:`ProbeArgs`."""

    queries: np.ndarray  # (m, d) float32 C-contiguous (unit rows for cosine)
    data: np.ndarray  # (n, d) float32 C-contiguous indexed vectors
    probe_tables: np.ndarray  # (m, P) int64 table of each probed bucket, best first; -1 ends a shorter sequence
    probe_keys: np.ndarray  # (m, P) uint64 bucket key of each probe
    tables: BucketTables
    min_collisions: int = 1


@_jit()
def _shortlist_into(
    query: np.ndarray, data: np.ndarray, candidates: np.ndarray, heap_key: np.ndarray, heap_id: np.ndarray
) -> int:
    """The ``len(heap_key)`` candidates nearest to ``query`` by squared L2 in the scoring space (ties by id).

    Args:
        query: (r,) float32; data: (n, r) float32; candidates: (c,) int64 rows of ``data``.
        heap_key, heap_id: (s,) float32 / int64 scratch space; on return ``heap_id[:size]`` holds the kept ids
            (in heap order).

    Returns:
        size = min(s, c).
    """
    limit = heap_key.shape[0]
    size = 0
    bound = np.float32(np.inf)
    for c in range(candidates.shape[0]):
        obj = candidates[c]
        key = _squared_l2(query, data[obj], bound)
        # inline, not _keep_best: this runs for every candidate (a call each measured ~5 % slower in a batch)
        if size < limit:
            size = _heap_push(heap_key, heap_id, size, key, obj, True)
        elif _above(heap_key[0], heap_id[0], key, obj, True):
            _heap_replace_top(heap_key, heap_id, size, key, obj, True)
        if size == limit:
            bound = heap_key[0]
    return size


# Relative slack of the lower-bound stop: the scoring distance is summed in float32 in another order than the
# exact one, so it may exceed the exact value by a few ulps; stopping only clearly above the bound stays safe.
_BOUND_SLACK = np.float32(1e-4)


@_jit()
def _rerank_ordered_into(
    query: np.ndarray,
    data: np.ndarray,
    candidates: np.ndarray,
    low_keys: np.ndarray,
    metric: int,
    lower_bound: bool,
    top_key: np.ndarray,
    top_id: np.ndarray,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """:func:`_rerank_into` for candidates in increasing scoring distance ``low_keys`` (squared, float32).

    Good candidates come first, so the k-th best bound is tight early and most rows stop after their first
    distance block. With ``lower_bound`` the loop ends once a scoring distance proves that no remaining
    candidate can beat the k-th best (see :class:`Shortlist`).
    """
    k = out_ids.shape[0]
    size = 0
    bound = np.float32(np.inf)
    for c in range(candidates.shape[0]):
        if lower_bound and size == k:
            # smallest exact key the candidate can have: squared distance, or -(1 - d²/2) for unit vectors
            low = low_keys[c] * (np.float32(1.0) - _BOUND_SLACK)
            floor = low if metric == METRIC_EUCLIDEAN else np.float32(0.5) * low - np.float32(1.0)
            if floor > bound + _BOUND_SLACK * abs(bound):
                break
        obj = candidates[c]
        size = _keep_best(top_key, top_id, size, _ranking_key(query, data[obj], metric, bound), obj)
        if size == k:
            bound = top_key[0]
    _heap_results(top_key, top_id, size, metric, out_scores, out_ids)


@_jit()
def _shortlist_scratch(size: int, k: int) -> tuple[np.ndarray, ...]:
    """One worker's scratch space for a shortlist of ``size`` and its exact top-k (:func:`_rerank_shortlist`):
    (heap_key, heap_id, ordered_key, ordered_id) of ``size``, (top_key, top_id) of ``k``; float32 keys, int64 ids."""
    return (
        np.empty(size, dtype=np.float32),
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.float32),
        np.empty(size, dtype=np.int64),
        np.empty(k, dtype=np.float32),
        np.empty(k, dtype=np.int64),
    )


@_jit()
def _rerank_shortlist(
    query: np.ndarray,
    data: np.ndarray,
    scratch: tuple[np.ndarray, ...],
    kept: int,
    metric: int,
    lower_bound: bool,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """The exact top-k of a shortlist held in the max-heap ``scratch[0]`` / ``scratch[1]`` (its ``kept`` entries,
    keyed by scoring distance; :func:`_shortlist_scratch`): popped best first (ties by id) into the ordered arrays,
    then ranked by :func:`_rerank_ordered_into`."""
    heap_key, heap_id, ordered_key, ordered_id, top_key, top_id = scratch
    for position in range(kept - 1, -1, -1):
        ordered_key[position], ordered_id[position], _ = _heap_pop(heap_key, heap_id, position + 1, True)
    _rerank_ordered_into(
        query=query,
        data=data,
        candidates=ordered_id[:kept],
        low_keys=ordered_key[:kept],
        metric=metric,
        lower_bound=lower_bound,
        top_key=top_key,
        top_id=top_id,
        out_scores=out_scores,
        out_ids=out_ids,
    )


@RowParallel
def _lsh_kernel(
    queries: np.ndarray,
    data: np.ndarray,
    codes: np.ndarray,
    fractions: np.ndarray,
    n_tables: int,
    n_projections: int,
    bucket_width: float,
    n_probes: int,
    tables: BucketTables,
    min_collisions: int,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    short_queries: np.ndarray,
    short_data: np.ndarray,
    shortlist: int,
    lower_bound: bool,
    metric: int,
    mode: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
    out_visited: np.ndarray,
    cand_offsets: np.ndarray,
    cand_ids: np.ndarray,
) -> None:
    """Candidates of every query, then (by ``mode``) their exact top-k, only their count, or their ids.

    The leading arguments are the fields of :class:`ProbeArgs` (numba's parallel loops do not take nested
    named tuples), or, when ``probe_tables`` has columns, those of :class:`ListedProbes` (``codes`` etc. unused);
    ``short_queries`` / ``short_data`` / ``shortlist`` those of :class:`Shortlist` (``shortlist = 0``: every
    candidate is re-ranked exactly). Called with keywords only.
    """
    m = queries.shape[0]
    listed = probe_tables.shape[1] > 0
    n = data.shape[0]
    h = n_projections
    k = out_ids.shape[1]
    for chunk in prange(n_chunks):
        # per-worker scratch space, allocated once for the chunk's queries
        seen = np.zeros((n + 63) // 64, dtype=np.uint64)
        counting = n if min_collisions > 1 else 1
        counts = np.zeros(counting, dtype=np.int32)
        touched = np.empty(counting, dtype=np.int64)
        n_touched = np.zeros(1, dtype=np.int64)
        buffer = np.empty(n, dtype=np.int64)
        zero_deltas = np.zeros(h, dtype=np.int64)
        workspace = _probe_workspace(n_probes=n_probes, n_projections=h)
        scratch = _shortlist_scratch(max(shortlist, 1), k)
        short_key, short_id, _, _, top_key, top_id = scratch
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            if listed:
                count = _collect_listed(
                    probe_tables=probe_tables[i],
                    probe_keys=probe_keys[i],
                    tables=tables,
                    seen=seen,
                    buffer=buffer,
                    min_collisions=min_collisions,
                    counts=counts,
                    touched=touched,
                    n_touched=n_touched,
                )
            else:
                count = _collect_candidates(
                    codes=codes[i],
                    fractions=fractions[i],
                    n_tables=n_tables,
                    n_projections=h,
                    bucket_width=bucket_width,
                    n_probes=n_probes,
                    tables=tables,
                    seen=seen,
                    buffer=buffer,
                    zero_deltas=zero_deltas,
                    workspace=workspace,
                    min_collisions=min_collisions,
                    counts=counts,
                    touched=touched,
                    n_touched=n_touched,
                )
            for j in range(n_touched[0]):
                counts[touched[j]] = 0
            n_touched[0] = 0
            out_visited[i] = count
            # ascending ids: rows are then read in memory order, which the prefetcher likes
            candidates = _sorted_candidates(seen=seen, buffer=buffer, count=count)
            if mode == _MODE_COUNT:
                continue
            if mode == _MODE_FILL:
                cand_ids[cand_offsets[i] : cand_offsets[i] + count] = candidates
                continue
            if shortlist == 0:
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
                continue
            kept = _shortlist_into(
                query=short_queries[i], data=short_data, candidates=candidates, heap_key=short_key, heap_id=short_id
            )
            _rerank_shortlist(queries[i], data, scratch, kept, metric, lower_bound, out_scores[i], out_ids[i])


_NO_SHORTLIST = Shortlist(queries=np.zeros((0, 1), dtype=np.float32), data=np.zeros((0, 1), dtype=np.float32), size=0)


def _lsh_call(
    probe: ProbeArgs | ListedProbes,
    k: int,
    metric: int,
    mode: int,
    shortlist: Shortlist | None = None,
    cand_offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run :func:`_lsh_kernel` in ``mode``; returns (scores, ids, visited, cand_ids)."""
    m = probe.queries.shape[0]
    if isinstance(probe, ListedProbes):
        if probe.probe_tables.shape != (m, max(probe.probe_tables.shape[1], 1)) or probe.probe_keys.shape != (
            probe.probe_tables.shape
        ):
            raise ValueError("probe_tables and probe_keys must be (m, P >= 1) arrays, one row per query")
        listed = (probe.probe_tables, probe.probe_keys)
        probe = ProbeArgs(
            queries=probe.queries,
            data=probe.data,
            codes=np.zeros((m, 0), dtype=np.int64),
            fractions=np.zeros((m, 0), dtype=np.float64),
            n_tables=0,
            n_projections=1,
            bucket_width=1.0,
            n_probes=0,
            tables=probe.tables,
            min_collisions=probe.min_collisions,
        )
    else:
        listed = (np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.uint64))
    scores, ids = _empty_results(m, k, metric)
    visited = np.zeros(m, dtype=np.int64)
    offsets = np.zeros(m + 1, dtype=np.int64) if cand_offsets is None else cand_offsets
    cand_ids = np.empty(int(offsets[-1]), dtype=np.int64)
    short = _NO_SHORTLIST if shortlist is None else shortlist
    if short.size < 0 or (short.size > 0 and (len(short.queries) != m or len(short.data) != len(probe.data))):
        raise ValueError("the shortlist's queries and data must have the rows of the probe's queries and data")
    _lsh_kernel(
        queries=probe.queries,
        data=probe.data,
        codes=probe.codes,
        fractions=probe.fractions,
        n_tables=int(probe.n_tables),
        n_projections=int(probe.n_projections),
        bucket_width=float(probe.bucket_width),
        n_probes=int(probe.n_probes),
        tables=BucketTables(*probe.tables),
        min_collisions=int(probe.min_collisions),
        probe_tables=listed[0],
        probe_keys=listed[1],
        short_queries=short.queries,
        short_data=short.data,
        shortlist=int(short.size),
        lower_bound=bool(short.lower_bound),
        metric=metric,
        mode=mode,
        n_chunks=_n_chunks(m),
        out_scores=scores,
        out_ids=ids,
        out_visited=visited,
        cand_offsets=offsets,
        cand_ids=cand_ids,
    )
    return scores, ids, visited, cand_ids


def lsh_search(
    probe: ProbeArgs | ListedProbes, k: int, metric: int, shortlist: Shortlist | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch LSH query (numba, parallel over queries).

    Args:
        probe: the queries, data, query slots and tables (E2LSH), or the buckets to probe (:class:`ListedProbes`).
        k: results per query; metric: ``METRIC_EUCLIDEAN`` or ``METRIC_COSINE``.
        shortlist: optional cheaper candidate phase; ``None`` re-ranks every candidate exactly.

    Returns:
        scores (m, k) float32, ids (m, k) int64 (-1 padded), visited (m,) int64 = distinct candidates (each had
        a distance computed: in the scoring space, and in the full space if it reached the shortlist).
    """
    scores, ids, visited, _ = _lsh_call(probe, k, metric, _MODE_SEARCH, shortlist=shortlist)
    return scores, ids, visited


def lsh_candidates(probe: ProbeArgs | ListedProbes) -> tuple[np.ndarray, np.ndarray]:
    """Candidate sets of each query as CSR ``(offsets (m+1,) int64, ids int64)``, ids ascending within a query."""
    _, _, visited, _ = _lsh_call(probe, 1, METRIC_EUCLIDEAN, _MODE_COUNT)
    offsets = np.zeros(len(visited) + 1, dtype=np.int64)
    np.cumsum(visited, out=offsets[1:])
    _, _, _, cand_ids = _lsh_call(probe, 1, METRIC_EUCLIDEAN, _MODE_FILL, cand_offsets=offsets)
    return offsets, cand_ids
