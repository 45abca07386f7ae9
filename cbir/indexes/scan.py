"""The exact sequential scan: the reference every index is measured against (recall@k)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from cbir.indexes import kernels, threads
from cbir.indexes.base import (
    _SCAN_BLOCK_ELEMENTS,
    BaseIndex,
    Metric,
    SearchResult,
    check_int,
    check_metric,
)


class SequentialScan(BaseIndex):
    """Exact k-NN by comparing each query with every indexed object.

    ``metric="euclidean"`` ranks by L2 distance (ascending); ``"cosine"`` ranks by cosine similarity
    (descending) computed on L2-normalised vectors. A BLAS matrix product shortlists ``k + 32`` objects per
    query, which are then re-scored with the same exact kernel the LSH index uses, so both indexes report
    bit-identical scores for the same pair and break ties by id the same way.
    """

    kind: ClassVar[str] = "scan_index"
    exhaustive: ClassVar[bool] = True
    _SHORTLIST_MARGIN: ClassVar[int] = 32

    def __init__(self, metric: Metric = "euclidean") -> None:
        super().__init__()
        self.metric = check_metric(metric)
        self._half_norms: np.ndarray | None = None  # ||x||²/2 per row (euclidean)
        self._product = threads.WideOrNarrow()  # a single query's product: on BLAS' threads or one, as measured

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric}

    def _fit(self, data: np.ndarray) -> None:
        self._half_norms = self._halved_norms(data) if self.metric == "euclidean" else None

    def _add(self, rows: np.ndarray) -> None:
        if self._half_norms is not None:
            self._half_norms = np.concatenate([self._half_norms, self._halved_norms(rows)])

    @staticmethod
    def _halved_norms(rows: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", rows, rows, dtype=np.float32) * np.float32(0.5)

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._fit(self._data)

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        n = self._data.shape[0]
        m = queries.shape[0]
        visited = np.full(m, n, dtype=np.int64)
        block = max(1, _SCAN_BLOCK_ELEMENTS // n)
        if m <= block:  # one block (a single query): its answer as it is
            return SearchResult(*self._search_block(queries, k), visited)
        scores = np.empty((m, k), dtype=np.float32)
        ids = np.empty((m, k), dtype=np.int64)
        for start in range(0, m, block):
            scores[start : start + block], ids[start : start + block] = self._search_block(
                queries[start : start + block], k
            )
        return SearchResult(scores, ids, visited)

    def _approximate_keys(self, queries: np.ndarray) -> np.ndarray:
        """(m, n) float32 ranking keys of prepared ``queries`` against every row from one matrix product, smaller is
        better: ||x||²/2 - q·x (half of ||q - x||² less the constant ||q||²/2), or -q·x for unit vectors; one pass
        over the product each (a single query is mostly the product and such passes). Close to the exact keys, not
        equal: a shortlist of them is re-ranked exactly."""
        assert self._data is not None
        approx = self._product.matmul(queries, self._data.T)  # a single query's GEMV: on BLAS' threads when faster
        if self._half_norms is not None:
            np.subtract(self._half_norms, approx, out=approx)
        else:
            np.negative(approx, out=approx)
        return approx  # type: ignore[no-any-return]

    def _search_block(self, chunk: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids (len(chunk), k) of a block of queries small enough for one product with every row."""
        data = self._data
        n = data.shape[0]
        shortlist = min(n, k + self._SHORTLIST_MARGIN)
        approx = self._approximate_keys(chunk)
        if shortlist < n:
            candidates = np.argpartition(approx, shortlist - 1, axis=1)[:, :shortlist]
        else:
            candidates = np.broadcast_to(np.arange(n), (len(chunk), n))
        return kernels.rerank_candidates(
            queries=chunk,
            data=data,
            cand_offsets=np.arange(0, (len(chunk) + 1) * shortlist, shortlist, dtype=np.int64),
            cand_ids=np.ascontiguousarray(candidates, dtype=np.int64).ravel(),
            k=k,
            metric=kernels.METRIC_CODES[self.metric],
        )


class CandidateRanking:
    """The exact top-k of the same queries within many candidate sets of the same rows (an LSH sweep: one set per
    setting), for one matrix product in all: the scan's approximate keys of every query against every row are
    computed and ranked once; each candidate set then shortlists its ``k + margin`` best-ranked candidates, which
    are re-ranked by the exact kernel every index re-ranks with (:func:`cbir.indexes.kernels.rerank_candidates`).
    So the answer is an index's that re-ranks those candidates exactly (E2LSH's search: the same scores, ids and
    ties by id) whenever the margin covers the keys' rounding, as the scan's own shortlist does.

    Args:
        scan: a fitted :class:`SequentialScan` (its rows and metric).
        Q: (m, d) float queries.
    """

    def __init__(self, scan: SequentialScan, Q: np.ndarray) -> None:
        scan._check_fitted()
        self._scan = scan
        self._queries = scan._prepare_queries(Q)
        with threads.queries(len(self._queries)):
            keys = scan._approximate_keys(self._queries)
        self._order = np.argsort(keys, axis=1, kind="stable").astype(np.int32)  # (m, n): rows best first
        self._rank = np.empty_like(self._order)  # (m, n): each row's place in its query's order
        np.put_along_axis(self._rank, self._order, np.arange(keys.shape[1], dtype=np.int32)[None, :], axis=1)

    def top_k(self, candidates: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids (m, k) of each query's exact top-k among ``candidates[i]`` (int ids of the scan's rows),
        best first, ties by id, padded with -1 and ±inf like :meth:`SequentialScan.search`."""
        k = check_int(k, "k", 1)
        m, n = self._rank.shape
        if len(candidates) != m:
            raise ValueError(f"candidates has {len(candidates)} sets for {m} queries")
        counts = np.fromiter(map(len, candidates), dtype=np.int64, count=m)
        query = np.repeat(np.arange(m, dtype=np.int64), counts)
        flat = np.concatenate([*candidates, np.zeros(0, dtype=np.int64)]).astype(np.int64, copy=False)
        # each query's candidates in the order of its keys: one sort of (query, rank) pairs
        ranked = np.sort(query * n + self._rank[query, flat])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        place = np.arange(len(ranked)) - np.repeat(starts, counts)
        shortlist = min(n, k + SequentialScan._SHORTLIST_MARGIN)  # as the scan's own search
        kept = ranked[place < shortlist]
        short_ids = self._order[kept // n, kept % n].astype(np.int64)
        short_counts = np.minimum(counts, shortlist)
        offsets = np.concatenate([[0], np.cumsum(short_counts)]).astype(np.int64)
        assert self._scan._data is not None
        return kernels.rerank_candidates(  # type: ignore[no-any-return]
            queries=self._queries,
            data=self._scan._data,
            cand_offsets=offsets,
            cand_ids=short_ids,
            k=k,
            metric=kernels.METRIC_CODES[self._scan.metric],
        )
