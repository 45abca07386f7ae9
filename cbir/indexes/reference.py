"""The field's reference indexes behind cbir's index contract: FAISS HNSW (Malkov & Yashunin, 2018), FAISS IVF-Flat
(an inverted file over k-means cells) and hnswlib's HNSW.

They are what approximate search is measured against (ann-benchmarks): on this project's real features HNSW returns
90 % of the exact top-10 computing a few percent of the distances (``benchmarks/ann.py``). They answer the same
``fit(X)`` / ``search(Q, k) -> (distances, ids, visited)`` contract as the scan and LSH, so the pages and the
evaluation put them beside them without caring which index runs: the tuning and comparison pages show them as
reference points, and the Search page can pick one when it is the fastest index reaching the recall the user asks
for. ``visited``: FAISS HNSW's own count of distance computations (per batch: each query of a batch gets its mean,
exact for one query as the Search page asks); for IVF-Flat the sizes of the probed lists (every object in them is
compared; the ``n_lists`` centroid distances of the coarse step are not objects); hnswlib does not count them, so its
``visited`` is :data:`cbir.indexes.base.NOT_COUNTED`.

``add`` inserts natively (HNSW links new nodes into its graph, IVF assigns them to their nearest cell with the
trained centroids), ``remove`` is the base class's tombstones, ``save`` / ``load`` serialise the library's own index.

FAISS (``faiss-cpu``) and hnswlib are well-kept C++ libraries on PyPI; cbir does not write its own HNSW.
"""

from __future__ import annotations

import copy
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from cbir.core.errors import CbirError
from cbir.core.names import Metric
from cbir.indexes.base import BUILD_STAGE, NOT_COUNTED, PROGRESS_SECONDS, BaseIndex, SearchResult, check_int

DEFAULT_LINKS = 32  # M: neighbours per node; FAISS' and hnswlib's usual setting
DEFAULT_EF_SEARCH = 64
EF_CONSTRUCTION = 40  # FAISS' default (hnswlib is built with the same, so the two graphs compare)
DEFAULT_N_PROBE = 16
TRAIN_POINTS_PER_LIST = 50  # IVF's k-means trains on at most this many sampled rows per list
# k-means iterations of IVF's coarse quantizer (faiss' default 25): recall@10 0.9335 -> 0.9329 on the default set
# at 10, ~1.5 s less per build on two shared cores; at 5 (the comparison page's pair: its distractors added to the
# index built without them) 0.9414 -> 0.9392 with them, 0.9412 -> 0.9386 without (mAP 0.5814 -> 0.5819, 0.5887 ->
# 0.5894), for half of the k-means (most of the build)
TRAIN_ITERATIONS = 5
# faiss.cvar.hnsw_stats is process-global: searches that read it must not interleave (the app's sessions share it)
_STATS_LOCK = threading.Lock()
# hnswlib's ef is a setting of the index object, not of a search: set it and search under one lock
_HNSWLIB_LOCK = threading.Lock()

Progress = Callable[[str, int, int], None]


class PeerUnavailableError(CbirError):
    """faiss-cpu or hnswlib is not installed."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise PeerUnavailableError("the FAISS reference indexes need faiss: pip install faiss-cpu") from exc
    return faiss


def _hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError as exc:  # pragma: no cover - hnswlib is in requirements.txt
        raise PeerUnavailableError("the hnswlib reference index needs hnswlib: pip install hnswlib") from exc
    return hnswlib


def default_lists(n: int) -> int:
    """IVF's usual number of lists for ``n`` objects: about 4·sqrt(n) (at least 1, at most n)."""
    return int(min(max(1, round(4 * np.sqrt(n))), max(n, 1)))


def add_in_chunks(add: Callable[[np.ndarray], None], rows: np.ndarray, progress: Progress | None) -> None:
    """``add(rows)``; with ``progress``, in chunks sized to take about :data:`cbir.indexes.base.PROGRESS_SECONDS` each
    (a 1M graph takes minutes), reporting ``progress(BUILD_STAGE, rows done, rows)`` after each."""
    if progress is None:
        add(rows)
        return
    progress(BUILD_STAGE, 0, len(rows))
    start, chunk = 0, 256
    while start < len(rows):
        started = time.perf_counter()
        add(rows[start : start + chunk])
        elapsed = time.perf_counter() - started
        start += chunk
        progress(BUILD_STAGE, min(start, len(rows)), len(rows))
        chunk = int(np.clip(chunk * PROGRESS_SECONDS / max(elapsed, 1e-4), 64, 2 * chunk))


class PeerIndex(BaseIndex):
    """What the peers share: the metric (cosine: rows L2-normalised by the base class, ranked by L2 distance — the
    same order — and reported as cosine similarity ``1 - d² / 2``) and the scores from the libraries' squared L2."""

    def __init__(self, metric: Metric = "euclidean") -> None:
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.metric = metric
        self._index: Any = None

    def _result(self, squared: np.ndarray, ids: np.ndarray, visited: np.ndarray) -> SearchResult:
        """The contract's result from squared L2 distances and ids (-1: no answer)."""
        ids = np.asarray(ids, dtype=np.int64)
        missing = ids < 0
        if self.metric == "cosine":
            scores = (1.0 - squared / 2.0).astype(np.float32)
            scores[missing] = -np.inf
        else:
            scores = np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)
            scores[missing] = np.inf
        counted = visited >= 0
        visited = np.where(counted, np.minimum(visited, self.n_objects), NOT_COUNTED).astype(np.int64)
        return SearchResult(scores, ids, visited)

    @staticmethod
    def _empty(k: int) -> SearchResult:
        return SearchResult(np.empty((0, k), np.float32), np.empty((0, k), np.int64), np.empty(0, dtype=np.int64))


class FaissIndex(PeerIndex):
    """A FAISS index behind the contract: copy, add, save and load go through FAISS' own clone and serialisation."""

    def copy(self) -> FaissIndex:
        twin = super().copy()
        twin._index = _faiss().clone_index(self._index)  # faiss adds in place: copy it first
        return twin

    def _add(self, rows: np.ndarray) -> None:
        self._index.add(rows)

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "graph": _faiss().serialize_index(self._index)}

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._index = _faiss().deserialize_index(np.asarray(state["graph"]))


class HNSWIndex(FaissIndex):
    """FAISS ``IndexHNSWFlat``: approximate k-NN on a navigable small-world graph.

    Args:
        metric: ``"euclidean"`` or ``"cosine"`` (see :class:`PeerIndex`).
        n_links: M, graph neighbours per node (more: higher recall, more memory and build time).
        ef_search: candidate list size during search (more: higher recall, more distances computed).
    """

    kind: ClassVar[str] = "hnsw_index"

    def __init__(
        self, metric: Metric = "euclidean", n_links: int = DEFAULT_LINKS, ef_search: int = DEFAULT_EF_SEARCH
    ) -> None:
        super().__init__(metric)
        self.n_links = check_int(n_links, "n_links", 2)
        self.ef_search = check_int(ef_search, "ef_search", 1)

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric, "n_links": self.n_links, "ef_search": self.ef_search}

    def _fit_reporting(self, data: np.ndarray, progress: Progress | None) -> None:
        index = _faiss().IndexHNSWFlat(data.shape[1], self.n_links)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        add_in_chunks(index.add, data, progress)
        self._index = index

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        faiss = _faiss()
        m = len(queries)
        if m == 0:
            return self._empty(k)
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        with _STATS_LOCK:
            # the batch at once, in FAISS' threads (as the other indexes search theirs): FAISS counts the distance
            # computations of the whole call, so each query gets the batch's mean (exact for one query)
            faiss.cvar.hnsw_stats.reset()
            squared, ids = self._index.search(queries, k, params=params)
            computed = int(faiss.cvar.hnsw_stats.ndis)
        return self._result(squared, ids, np.full(m, round(computed / m), dtype=np.int64))


class IVFFlatIndex(FaissIndex):
    """FAISS ``IndexIVFFlat``: k-means cells (the coarse quantiser), each object stored in its nearest cell's list;
    a query compares itself with every object of the ``n_probe`` lists whose centroids are nearest.

    Args:
        metric: ``"euclidean"`` or ``"cosine"`` (see :class:`PeerIndex`).
        n_lists: k-means cells; ``None``: :func:`default_lists` of the fitted rows (about 4·sqrt(n)).
        n_probe: lists searched per query (more: higher recall, more objects visited; capped at the lists).
        seed: seed of the training sample and of k-means.
    """

    kind: ClassVar[str] = "ivf_flat_index"

    def __init__(
        self, metric: Metric = "euclidean", n_lists: int | None = None, n_probe: int = DEFAULT_N_PROBE, seed: int = 0
    ) -> None:
        super().__init__(metric)
        self.n_lists = None if n_lists is None else check_int(n_lists, "n_lists", 1)
        self.n_probe = check_int(n_probe, "n_probe", 1)
        self.seed = check_int(seed, "seed", 0)
        self._sizes = np.zeros(0, dtype=np.int64)

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric, "n_lists": self.n_lists, "n_probe": self.n_probe, "seed": self.seed}

    @property
    def lists(self) -> int:
        """The fitted index's number of lists (0 before ``fit``)."""
        return 0 if self._index is None else int(self._index.nlist)

    def _fit_reporting(self, data: np.ndarray, progress: Progress | None) -> None:
        faiss = _faiss()
        n, dim = data.shape
        lists = min(self.n_lists or default_lists(n), n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
        index.cp.seed = self.seed
        index.cp.min_points_per_centroid = 1  # small collections: no "please provide more points" warning
        index.cp.niter = TRAIN_ITERATIONS
        sample = min(n, TRAIN_POINTS_PER_LIST * lists)
        rows = np.random.default_rng(self.seed).choice(n, sample, replace=False) if sample < n else slice(None)
        index.train(np.ascontiguousarray(data[rows]))
        add_in_chunks(index.add, data, progress)
        self._index = index
        self._count_lists()

    def _count_lists(self) -> None:
        invlists = self._index.invlists
        self._sizes = np.array([invlists.list_size(i) for i in range(self._index.nlist)], dtype=np.int64)

    def _add(self, rows: np.ndarray) -> None:
        self._index.add(rows)
        self._count_lists()

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._count_lists()

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        faiss = _faiss()
        if len(queries) == 0:
            return self._empty(k)
        n_probe = min(self.n_probe, self.lists)
        # the coarse step once, by hand, so that the probed lists (and so the objects compared) are known per query
        centroid_distances, probed = self._index.quantizer.search(queries, n_probe)
        squared = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        # the C++ call: faiss' Python wrapper of search_preassigned takes no parameters, and setting the index's
        # own nprobe would race between sessions sharing it
        self._index.search_preassigned_c(
            len(queries),
            faiss.swig_ptr(queries),
            k,
            faiss.swig_ptr(probed),
            faiss.swig_ptr(centroid_distances),
            faiss.swig_ptr(squared),
            faiss.swig_ptr(ids),
            False,
            faiss.SearchParametersIVF(nprobe=n_probe),
        )
        visited = np.where(probed >= 0, self._sizes[np.maximum(probed, 0)], 0).sum(axis=1)
        return self._result(squared, ids, visited)


class HnswlibIndex(PeerIndex):
    """hnswlib's HNSW (the ann-benchmarks reference implementation) with the same M and construction ef as
    :class:`HNSWIndex`. hnswlib does not count distance computations: ``visited`` is
    :data:`cbir.indexes.base.NOT_COUNTED` (the evaluation reports it as unknown).

    Args:
        metric: ``"euclidean"`` or ``"cosine"`` (see :class:`PeerIndex`).
        n_links: M, graph neighbours per node.
        ef: candidate list size during search (at least k).
    """

    kind: ClassVar[str] = "hnswlib_index"

    def __init__(self, metric: Metric = "euclidean", n_links: int = DEFAULT_LINKS, ef: int = DEFAULT_EF_SEARCH) -> None:
        super().__init__(metric)
        self.n_links = check_int(n_links, "n_links", 2)
        self.ef = check_int(ef, "ef", 1)

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric, "n_links": self.n_links, "ef": self.ef}

    def _fit_reporting(self, data: np.ndarray, progress: Progress | None) -> None:
        index = _hnswlib().Index(space="l2", dim=data.shape[1])
        index.init_index(max_elements=len(data), M=self.n_links, ef_construction=EF_CONSTRUCTION, random_seed=0)
        added = [0]

        def add(rows: np.ndarray) -> None:
            index.add_items(rows, np.arange(added[0], added[0] + len(rows)))
            added[0] += len(rows)

        add_in_chunks(add, data, progress)
        self._index = index

    def copy(self) -> HnswlibIndex:
        twin = super().copy()
        twin._index = copy.deepcopy(self._index)  # hnswlib adds in place: copy it first
        return twin

    def _add(self, rows: np.ndarray) -> None:
        first = self._index.get_current_count()
        self._index.resize_index(first + len(rows))
        self._index.add_items(rows, np.arange(first, first + len(rows)))

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        if len(queries) == 0:
            return self._empty(k)
        reachable = min(k, self.n_objects)  # hnswlib refuses to return more rows than it holds
        with _HNSWLIB_LOCK:
            self._index.set_ef(max(self.ef, reachable))
            try:
                ids, squared = self._index.knn_query(queries, k=reachable)
            except RuntimeError:  # fewer than k found (a tiny or sparse graph): search exhaustively
                self._index.set_ef(self.n_objects)
                ids, squared = self._index.knn_query(queries, k=reachable)
        if reachable < k:
            pad = k - reachable
            ids = np.pad(ids.astype(np.int64), ((0, 0), (0, pad)), constant_values=-1)
            squared = np.pad(squared, ((0, 0), (0, pad)))
        return self._result(squared, ids, np.full(len(queries), NOT_COUNTED, dtype=np.int64))

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "graph": np.frombuffer(pickle.dumps(self._index), dtype=np.uint8)}

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._index = pickle.loads(np.asarray(state["graph"], dtype=np.uint8).tobytes())  # our artifact
