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

    def _search_block(self, chunk: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids (len(chunk), k) of a block of queries small enough for one product with every row."""
        data = self._data
        n = data.shape[0]
        shortlist = min(n, k + self._SHORTLIST_MARGIN)
        # smaller is better: ||x||²/2 - q·x (half of ||q - x||² less the constant ||q||²/2), or -q·x for unit
        # vectors; one pass over the product each (a single query is mostly the product and such passes)
        approx = self._product.matmul(chunk, data.T)  # a single query's GEMV: on BLAS' threads when faster
        if self._half_norms is not None:
            np.subtract(self._half_norms, approx, out=approx)
        else:
            np.negative(approx, out=approx)
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
