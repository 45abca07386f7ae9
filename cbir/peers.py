"""The field's reference index behind cbir's index contract: a FAISS HNSW graph (Malkov & Yashunin, 2018).

HNSW is what approximate search is measured against (ann-benchmarks): on this project's real features it returns
90 % of the exact top-10 computing a few percent of the distances (``benchmarks/ann.py``). It answers the same
``fit(X)`` / ``search(Q, k) -> (distances, ids, visited)`` contract as the scan and LSH, so the pages and the
evaluation put it beside them without caring which index runs: the tuning and comparison pages show it as a
reference point, and the Search page can pick it when it is the fastest index reaching the recall the user asks
for. ``visited`` is FAISS' own count of distance computations per query.

FAISS is a well-kept C++ library (``faiss-cpu`` on PyPI); cbir does not write its own HNSW.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from cbir.errors import CbirError
from cbir.index import BUILD_STAGE, PROGRESS_SECONDS, BaseIndex, SearchResult, check_int
from cbir.names import Metric

DEFAULT_LINKS = 32  # M: neighbours per node; FAISS' and hnswlib's usual setting
DEFAULT_EF_SEARCH = 64
EF_CONSTRUCTION = 40  # FAISS' default
# faiss.cvar.hnsw_stats is process-global: searches that read it must not interleave (the app's sessions share it)
_STATS_LOCK = threading.Lock()


class PeerUnavailableError(CbirError):
    """faiss-cpu is not installed."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise PeerUnavailableError("the HNSW reference index needs faiss: pip install faiss-cpu") from exc
    return faiss


class HNSWIndex(BaseIndex):
    """FAISS ``IndexHNSWFlat``: approximate k-NN on a navigable small-world graph.

    Args:
        metric: ``"euclidean"``, or ``"cosine"`` (rows are L2-normalised, ranked by L2 distance — the same order —
            and reported as cosine similarity ``1 - d² / 2``).
        n_links: M, graph neighbours per node (more: higher recall, more memory and build time).
        ef_search: candidate list size during search (more: higher recall, more distances computed).
    """

    kind: ClassVar[str] = "hnsw_index"

    def __init__(
        self, metric: Metric = "euclidean", n_links: int = DEFAULT_LINKS, ef_search: int = DEFAULT_EF_SEARCH
    ) -> None:
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.metric = metric
        self.n_links = check_int(n_links, "n_links", 2)
        self.ef_search = check_int(ef_search, "ef_search", 1)
        self._index: Any = None

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric, "n_links": self.n_links, "ef_search": self.ef_search}

    def _fit(self, data: np.ndarray) -> None:
        self._fit_reporting(data, None)

    def _fit_reporting(self, data: np.ndarray, progress: Callable[[str, int, int], None] | None) -> None:
        """Build the graph; with ``progress``, in chunks of rows sized to take about
        :data:`cbir.index.PROGRESS_SECONDS` each (a 1M graph takes minutes)."""
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(data.shape[1], self.n_links)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        if progress is None:
            index.add(data)
        else:
            progress(BUILD_STAGE, 0, len(data))
            start, chunk = 0, 256
            while start < len(data):
                started = time.perf_counter()
                index.add(data[start : start + chunk])
                elapsed = time.perf_counter() - started
                start += chunk
                progress(BUILD_STAGE, min(start, len(data)), len(data))
                chunk = int(np.clip(chunk * PROGRESS_SECONDS / max(elapsed, 1e-4), 64, 2 * chunk))
        self._index = index

    def copy(self) -> HNSWIndex:
        twin = super().copy()
        twin._index = _faiss().clone_index(self._index)  # faiss adds into the graph in place: copy it first
        return twin

    def _add(self, rows: np.ndarray) -> None:
        self._index.add(rows)  # HNSW inserts natively: each new node is linked into the existing graph

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        faiss = _faiss()
        m = len(queries)
        if m == 0:
            return SearchResult(np.empty((0, k), np.float32), np.empty((0, k), np.int64), np.empty(0, dtype=np.int64))
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        visited = np.empty(m, dtype=np.int64)
        squared = np.empty((m, k), dtype=np.float32)
        ids = np.empty((m, k), dtype=np.int64)
        with _STATS_LOCK:
            # one query at a time: FAISS counts distance computations per call, and visited is per query
            for i in range(m):
                faiss.cvar.hnsw_stats.reset()
                squared[i : i + 1], ids[i : i + 1] = self._index.search(queries[i : i + 1], k, params=params)
                visited[i] = faiss.cvar.hnsw_stats.ndis
        missing = ids < 0
        if self.metric == "cosine":
            scores = (1.0 - squared / 2.0).astype(np.float32)
            scores[missing] = -np.inf
        else:
            scores = np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
            scores[missing] = np.inf
        return SearchResult(scores, ids, np.minimum(visited, self.n_objects))

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "graph": _faiss().serialize_index(self._index)}

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._index = _faiss().deserialize_index(np.asarray(state["graph"]))
