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
        self._sq_norms: np.ndarray | None = None
        self._product = threads.WideOrNarrow()  # a single query's product: on BLAS' threads or one, as measured

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric}

    def _fit(self, data: np.ndarray) -> None:
        self._sq_norms = np.einsum("ij,ij->i", data, data, dtype=np.float32) if self.metric == "euclidean" else None

    def _add(self, rows: np.ndarray) -> None:
        if self._sq_norms is not None:
            self._sq_norms = np.concatenate([self._sq_norms, np.einsum("ij,ij->i", rows, rows, dtype=np.float32)])

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._fit(self._data)

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        data = self._data
        n = data.shape[0]
        m = queries.shape[0]
        metric = kernels.METRIC_CODES[self.metric]
        shortlist = min(n, k + self._SHORTLIST_MARGIN)
        scores = np.empty((m, k), dtype=np.float32)
        ids = np.empty((m, k), dtype=np.int64)
        block = max(1, _SCAN_BLOCK_ELEMENTS // n)
        for start in range(0, m, block):
            chunk = queries[start : start + block]
            # smaller is better: ||x||² - 2 q·x (||q||² is constant per query), or -q·x for unit vectors
            with self._product.product():  # a single query's GEMV: on BLAS' threads when that is faster
                approx = chunk @ data.T
            approx *= -2.0 if metric == kernels.METRIC_EUCLIDEAN else -1.0
            if self._sq_norms is not None:
                approx += self._sq_norms
            if shortlist < n:
                candidates = np.argpartition(approx, shortlist - 1, axis=1)[:, :shortlist]
            else:
                candidates = np.broadcast_to(np.arange(n), (len(chunk), n))
            offsets = np.arange(0, (len(chunk) + 1) * shortlist, shortlist, dtype=np.int64)
            chunk_scores, chunk_ids = kernels.rerank_candidates(
                queries=chunk,
                data=data,
                cand_offsets=offsets,
                cand_ids=np.ascontiguousarray(candidates, dtype=np.int64).ravel(),
                k=k,
                metric=metric,
            )
            scores[start : start + block] = chunk_scores
            ids[start : start + block] = chunk_ids
        return SearchResult(scores, ids, np.full(m, n, dtype=np.int64))
