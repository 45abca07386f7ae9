"""Nearest-neighbour indexes with one contract: exact sequential scan and the paper's E2LSH index.

Every index has ``fit(X)`` and ``search(Q, k) -> SearchResult(distances, ids, visited)`` (a named tuple, so
``scores, ids, visited = index.search(Q, k)`` works too):

* ``X`` (n, d) and ``Q`` (m, d) are converted to C-contiguous float32; NaN/inf, wrong ranks and dimension
  mismatches raise :class:`ValueError`.
* ``distances`` (m, k) float32: Euclidean distance (ascending) or cosine similarity (descending).
* ``ids`` (m, k) int64 row numbers into ``X``; ties are ordered by id; slots with no answer hold -1 and a
  score of +inf (euclidean) or -inf (cosine).
* ``visited`` (m,) int64: how many distinct objects had their distance computed for each query (the paper's
  "#Items"): ``n`` for the scan, the size of the candidate union for LSH; :data:`NOT_COUNTED` (-1) from an index
  that does not count them (hnswlib).

Indexes grow and shrink in place: ``add(X)`` appends rows (ids ``n .. n+m-1``; the scan appends to its matrix,
LSH hashes only the new rows with its fitted functions and merges them into its buckets, HNSW inserts them in its
graph) and ``remove(ids)`` marks rows deleted (tombstones, as FAISS' and hnswlib's ``mark_deleted``): a search asks
the index for ``k`` + the number of removed rows and drops them, so the ids of the other rows never change.

Indexes persist with :meth:`save` / :meth:`load` through :mod:`cbir.storage` (atomic, kind-checked).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import numpy as np

from cbir import kernels
from cbir.pca import PCA, Codebook, code_units, encode, fit_codebook, fit_pca, project, truncate
from cbir.storage import ArtifactError, load_artifact, save_artifact

BUILD_STAGE = "building the index"  # the stage name of fit's progress
# long work reports progress about this often (seconds), so that a page's progress bar keeps moving
PROGRESS_SECONDS = 0.5
# ``visited`` of an index that does not count its distance computations (hnswlib)
NOT_COUNTED = -1

Metric = Literal["euclidean", "cosine"]


class SearchResult(NamedTuple):
    """What every index's ``search(Q, k)`` returns (m queries, k results each)."""

    distances: np.ndarray  # (m, k) float32 distance ascending (euclidean) or similarity descending (cosine)
    ids: np.ndarray  # (m, k) int64 row numbers into the fitted X, -1 where no answer
    visited: np.ndarray  # (m,) int64 distinct objects whose distance was computed per query (NOT_COUNTED: unknown)


IndexT = TypeVar("IndexT", bound="BaseIndex")

# Rows of the query block times n: bounds the scan's temporary similarity matrix to ~128 MiB.
_SCAN_BLOCK_ELEMENTS = 1 << 25


def check_metric(metric: str) -> str:
    if metric not in kernels.METRIC_CODES:
        raise ValueError(f"metric must be one of {sorted(kernels.METRIC_CODES)}, got {metric!r}")
    return metric


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _as_matrix(values: Any, name: str, dim: int | None = None, allow_empty: bool = False) -> np.ndarray:
    """Validate a 2-D finite numeric array and return it as C-contiguous float32."""
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        hint = " (use reshape(1, -1) for a single vector)" if array.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {array.shape}{hint}")
    if array.shape[1] == 0 or (array.shape[0] == 0 and not allow_empty):
        raise ValueError(f"{name} must be non-empty, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} has dimension {array.shape[1]}, but the index was fitted on dimension {dim}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (float32); all-zero rows stay zero so their similarity to anything is 0."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))  # float64 sums, no float64 copy
    scale = (1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return np.ascontiguousarray(vectors * scale[:, None])


_WARM = False


WARM_UP_STAGE = "loading the numba kernels"  # the stage name of warm_up's progress


def warm_up(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Compile (or load from numba's cache) every kernel on tiny inputs, once per process.

    Called before timed work so that ``fit_seconds`` / ``search_seconds`` measure the algorithms, not the JIT.
    ``progress(WARM_UP_STAGE, done, total)`` after each group of kernels (a few seconds in all on two busy cores).
    """
    global _WARM
    if _WARM:
        return
    from cbir.polytope import CrossPolytopeIndex  # it builds on this module

    rng = np.random.default_rng(0)
    points = rng.standard_normal((16, 4)).astype(np.float32)

    def scan(metric: str) -> None:
        SequentialScan(metric).fit(points).search(points[:2], 3)  # type: ignore[arg-type]

    def lsh(metric: str) -> None:
        index = LSHIndex(2, 2, 1.0, metric=metric, probes=1).fit(points)  # type: ignore[arg-type]
        index.search(points[:2], 3)
        index.probes = 0
        index.search(points[:2], 3)
        index.candidates(points[:2])
        index.add(points[:2])  # merge_tables
        reduced = LSHIndex(2, 2, 1.0, metric=metric, reduce_dim=2, rerank=2)  # type: ignore[arg-type]
        reduced.fit(points).search(points[:2], 3)

    def polytope(options: dict[str, int]) -> None:
        index = CrossPolytopeIndex(2, 1, **options).fit(points)
        index.search(points[:2], 3)
        index.candidates(points[:2])

    steps = [functools.partial(step, metric) for metric in kernels.METRIC_CODES for step in (scan, lsh)]
    for options in ({"probes": 0}, {"probes": 2, "reduce_dim": 2, "rerank": 2}):
        steps.append(functools.partial(polytope, options))
    for done, step in enumerate(steps):
        if progress is not None:
            progress(WARM_UP_STAGE, done, len(steps))
        step()
    if progress is not None:
        progress(WARM_UP_STAGE, len(steps), len(steps))
    _WARM = True


class BaseIndex:
    """Common base of the indexes: state, validation, persistence; subclasses implement ``_fit`` (or
    ``_fit_reporting``), ``_search``."""

    kind: ClassVar[str]
    metric: str

    def __init__(self) -> None:
        self._data: np.ndarray | None = None
        self._removed = np.zeros(0, dtype=np.int64)  # sorted ids marked deleted

    # ---- public contract ---------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._data is not None

    @property
    def n_objects(self) -> int:
        """Number of indexed objects (0 before ``fit``)."""
        return 0 if self._data is None else int(self._data.shape[0])

    @property
    def n_removed(self) -> int:
        """Rows marked deleted by :meth:`remove` (still counted by :attr:`n_objects`, never returned)."""
        return len(self._removed)

    @property
    def removed(self) -> np.ndarray:
        """The ids marked deleted, ascending (a copy)."""
        return self._removed.copy()

    @property
    def dim(self) -> int:
        """Feature dimension (0 before ``fit``)."""
        return 0 if self._data is None else int(self._data.shape[1])

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters (enough to rebuild an equal, unfitted index)."""
        raise NotImplementedError

    def fit(self: IndexT, X: np.ndarray, progress: Callable[[str, int, int], None] | None = None) -> IndexT:
        """Index the rows of ``X`` (n, d) float; replaces any previous content. Returns ``self``.

        A float32 C-contiguous ``X`` is referenced, not copied (collections are large): do not modify it in
        place while the index is in use. ``progress("building the index", rows done, n)``: at least at the end;
        an index whose build takes long (HNSW) reports as it goes.
        """
        data = _as_matrix(X, "X")
        if self.metric == "cosine":
            data = l2_normalize(data)
        self._fit_reporting(data, progress)
        self._data = data
        self._removed = np.zeros(0, dtype=np.int64)
        return self

    def add(self, X: np.ndarray) -> np.ndarray:
        """Append the rows of ``X`` (m, d) to the fitted index without refitting; returns their ids
        (``n_objects .. n_objects + m - 1``). The fitted parameters (LSH's hash functions and PCA, its tuned probes)
        are kept: adding to an index fitted on ``A`` gives the index of ``A`` + ``X`` built with ``A``'s functions.
        """
        self._check_fitted()
        assert self._data is not None
        rows = _as_matrix(X, "X", dim=self.dim, allow_empty=True)
        if self.metric == "cosine":
            rows = l2_normalize(rows)
        first = self.n_objects
        if len(rows):
            self._add(rows)
            self._data = np.concatenate([self._data, rows])
        return np.arange(first, first + len(rows), dtype=np.int64)

    def remove(self, ids: Any) -> int:
        """Mark rows deleted (tombstones): they are never returned again, the other ids do not change. Returns how
        many were newly removed; an id out of range raises :class:`ValueError`."""
        self._check_fitted()
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        if len(ids) and (ids[0] < 0 or ids[-1] >= self.n_objects):
            raise ValueError(f"ids must be in [0, {self.n_objects}), got {ids[0]}..{ids[-1]}")
        before = len(self._removed)
        self._removed = np.union1d(self._removed, ids)
        return len(self._removed) - before

    def _fit_reporting(self, data: np.ndarray, progress: Callable[[str, int, int], None] | None) -> None:
        """``_fit``, then ``progress`` (an index with a long build overrides this to report as it goes, and then
        inherits a ``_fit`` that calls it without ``progress``)."""
        self._fit(data)
        if progress is not None:
            progress(BUILD_STAGE, len(data), len(data))

    def search(self, Q: np.ndarray, k: int) -> SearchResult:
        """k nearest indexed objects of each query row.

        Args:
            Q: (m, d) float queries, d equal to the fitted dimension (m may be 0).
            k: number of results per query (>= 1); fewer are returned (padded) when fewer exist.

        Returns:
            scores (m, k) float32 (distance ascending / similarity descending), ids (m, k) int64 padded with
            -1, visited (m,) int64 distinct objects compared per query.
        """
        self._check_fitted()
        k = check_int(k, "k", 1)
        queries = self._prepare_queries(Q)
        if not len(self._removed):
            return self._search(queries, k)
        # tombstones: ask for enough rows that k live ones remain, then drop the removed ones (order kept)
        wider = self._search(queries, min(k + len(self._removed), max(self.n_objects, k)))
        live = (wider.ids >= 0) & ~np.isin(wider.ids, self._removed)
        distances = np.full((len(queries), k), np.inf if self.metric == "euclidean" else -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row in range(len(queries)):
            kept = np.flatnonzero(live[row])[:k]
            distances[row, : len(kept)] = wider.distances[row, kept]
            ids[row, : len(kept)] = wider.ids[row, kept]
        return SearchResult(distances, ids, wider.visited)

    def copy(self: IndexT) -> IndexT:
        """An independent copy (arrays shared: ``add`` and ``remove`` replace them, never write into them), to grow
        while the original keeps answering."""
        return copy.copy(self)

    def describe(self) -> dict[str, Any]:
        """Parameters plus size information, for display."""
        return {"index": type(self).__name__, **self.params, "n_objects": self.n_objects, "dim": self.dim}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted index atomically (joblib envelope of kind :attr:`kind`)."""
        self._check_fitted()
        return save_artifact(path, self.kind, {"params": self.params, "state": self._state()})

    @classmethod
    def load(cls: type[IndexT], path: str | os.PathLike[str]) -> IndexT:
        """Read an index written by :meth:`save`; raises :class:`cbir.storage.ArtifactError` if unusable."""
        payload = load_artifact(path, cls.kind)
        try:
            index = cls(**payload["params"])
            index._restore(payload["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {path} is not a valid {cls.__name__}: {exc}") from exc
        return index

    # ---- for subclasses ----------------------------------------------------------------------------------
    def _prepare_queries(self, Q: np.ndarray, name: str = "Q") -> np.ndarray:
        """Validated float32 query rows of the fitted dimension, normalised for cosine."""
        queries = _as_matrix(Q, name, dim=self.dim, allow_empty=True)
        return l2_normalize(queries) if self.metric == "cosine" else queries

    def _check_fitted(self) -> None:
        if self._data is None:
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _fit(self, data: np.ndarray) -> None:
        """Build the index on ``data`` (n, d), normalised for cosine (``_data`` is set after). A subclass implements
        this, or :meth:`_fit_reporting` when its build reports progress as it goes: then this runs that without."""
        if type(self)._fit_reporting is BaseIndex._fit_reporting:  # neither is implemented: no endless recursion
            raise NotImplementedError(f"{type(self).__name__} implements neither _fit nor _fit_reporting")
        self._fit_reporting(data, None)

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        raise NotImplementedError

    def _add(self, rows: np.ndarray) -> None:
        """Index ``rows`` (m, d), normalised for cosine, as ids ``n_objects ..`` (``_data`` is extended after)."""
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {"data": self._data, "removed": self._removed}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._data = np.ascontiguousarray(state["data"], dtype=np.float32)
        self._removed = np.asarray(state.get("removed", np.zeros(0)), dtype=np.int64)

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({args})"


class SequentialScan(BaseIndex):
    """Exact k-NN by comparing each query with every indexed object.

    ``metric="euclidean"`` ranks by L2 distance (ascending); ``"cosine"`` ranks by cosine similarity
    (descending) computed on L2-normalised vectors. A BLAS matrix product shortlists ``k + 32`` objects per
    query, which are then re-scored with the same exact kernel the LSH index uses, so both indexes report
    bit-identical scores for the same pair and break ties by id the same way.
    """

    kind: ClassVar[str] = "scan_index"
    _SHORTLIST_MARGIN: ClassVar[int] = 32

    def __init__(self, metric: Metric = "euclidean") -> None:
        super().__init__()
        self.metric = check_metric(metric)
        self._sq_norms: np.ndarray | None = None

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


class BucketIndex(BaseIndex):
    """What the hashing indexes share (:class:`LSHIndex`, :class:`cbir.polytope.CrossPolytopeIndex`): bucket tables in
    the CSR layout of :class:`kernels.BucketTables`, ``probes``, ``min_collisions``, an optional PCA hashing space with
    a shortlist scored in it, and the search and candidate kernels. A subclass hashes (``_fit``,
    :meth:`_hash_space`) and says which buckets a query probes (:meth:`_probe`).

    The shortlist (``rerank=R``) scores every candidate in a small space and ranks only the best R exactly: by
    default the PCA coordinates hashing uses (float32; a lower bound of the true distance, so the exact ranking
    stops early), or with ``score_dim=s`` uint8 codes of the top s principal axes (:class:`cbir.pca.Codebook`: a
    quarter of the bytes per coordinate, so more axes — a better shortlist, a smaller R — for the same reads).
    """

    _probes: int
    _tables: kernels.BucketTables | None
    _pca: PCA | None
    _reduced: np.ndarray | None

    def __init__(
        self,
        n_tables: int,
        n_projections: int,
        metric: Metric,
        seed: int,
        probes: int,
        reduce_dim: int | None,
        rerank: int,
        min_collisions: int,
        score_dim: int | None,
    ) -> None:
        super().__init__()
        self.n_tables = check_int(n_tables, "n_tables", 1)
        self.n_projections = check_int(n_projections, "n_projections", 1)
        self.metric = check_metric(metric)
        self.seed = check_int(seed, "seed", 0)
        self.probes = probes
        self.reduce_dim = None if reduce_dim is None else check_int(reduce_dim, "reduce_dim", 1)
        self.rerank = check_int(rerank, "rerank", 0)
        if self.rerank and self.reduce_dim is None:
            raise ValueError("rerank needs reduce_dim: candidates are scored in the reduced space first")
        self.score_dim = None if score_dim is None else check_int(score_dim, "score_dim", 1)
        if self.score_dim is not None and not self.rerank:
            raise ValueError("score_dim needs rerank: it sets the space the shortlist is scored in")
        self.min_collisions = check_int(min_collisions, "min_collisions", 1)
        self._tables = None
        self._pca = None  # the hashing space (reduce_dim axes)
        self._reduced: np.ndarray | None = None  # (n, r) float32 coordinates or (n, s) uint8 codes: the shortlist's
        self._score_pca: PCA | None = None  # with score_dim: the scoring axes ...
        self._codebook: Codebook | None = None  # ... and their quantisation

    def _shared_params(self) -> dict[str, Any]:
        """The optional parameters every bucket index reports in ``params`` when they are set."""
        params: dict[str, Any] = {}
        if self.reduce_dim is not None:
            params["reduce_dim"] = self.reduce_dim
        if self.rerank:
            params["rerank"] = self.rerank
        if self.score_dim is not None:
            params["score_dim"] = self.score_dim
        if self.min_collisions > 1:
            params["min_collisions"] = self.min_collisions
        return params

    def _fit_reduced(self, data: np.ndarray) -> np.ndarray | None:
        """Fit the PCA hashing space (``reduce_dim``) and the shortlist's scoring space on the indexed rows: one PCA
        of max(reduce_dim, score_dim) axes, the leading ones hash. Returns the rows in the hashing space
        (:meth:`_hash_space`, computed once here), or ``None`` without ``reduce_dim``."""
        self._pca = self._reduced = self._score_pca = self._codebook = None
        if self.reduce_dim is None:
            return None
        pca = fit_pca(data, max(self.reduce_dim, self.score_dim or 0), seed=self.seed)
        self._pca = truncate(pca, self.reduce_dim)
        hashed = project(self._pca, data)
        if self.score_dim is not None:
            self._score_pca = truncate(pca, self.score_dim)
            scored = project(self._score_pca, data)
            self._codebook = fit_codebook(scored)
            self._reduced = encode(self._codebook, scored)
        elif self.rerank:
            self._reduced = hashed
        return hashed

    def _extend_reduced(self, rows: np.ndarray, hashed: np.ndarray) -> None:
        """Append the scoring-space rows of added ``rows`` (``hashed``: them in the hashing space)."""
        if self._reduced is None:
            return
        if self._codebook is not None:
            assert self._score_pca is not None
            new = encode(self._codebook, project(self._score_pca, rows))
        else:
            new = np.ascontiguousarray(hashed, dtype=np.float32)
        self._reduced = np.concatenate([self._reduced, new])

    def _reduced_state(self) -> dict[str, Any]:
        return {
            "pca": None if self._pca is None else self._pca._asdict(),
            "reduced": self._reduced,
            "score_pca": None if self._score_pca is None else self._score_pca._asdict(),
            "codebook": None if self._codebook is None else self._codebook._asdict(),
        }

    def _restore_reduced(self, state: Mapping[str, Any]) -> None:
        pca, reduced = state.get("pca"), state.get("reduced")
        score_pca, codebook = state.get("score_pca"), state.get("codebook")
        self._pca = None if pca is None else PCA(**pca)
        self._score_pca = None if score_pca is None else PCA(**score_pca)
        self._codebook = None if codebook is None else Codebook(**codebook)
        dtype = np.float32 if self._codebook is None else np.uint8
        self._reduced = None if reduced is None else np.ascontiguousarray(reduced, dtype=dtype)
        if (
            (self._pca is None) != (self.reduce_dim is None)
            or (self._codebook is None) != (self.score_dim is None)
            or (self._reduced is None) != (not self.rerank)
        ):
            raise ValueError("stored PCA does not match reduce_dim / rerank / score_dim")

    @property
    def probes(self) -> int:
        """Extra buckets probed per table; may be changed on a fitted index (no refit needed)."""
        return self._probes

    @probes.setter
    def probes(self, value: int) -> None:
        self._probes = check_int(value, "probes", 0)

    @property
    def tables(self) -> kernels.BucketTables:
        """The CSR bucket layout (read-only use)."""
        self._check_fitted()
        assert self._tables is not None
        return self._tables

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._tables is not None:
            bucket_sizes = np.diff(self._tables.bucket_starts)
            info.update(
                n_buckets=len(bucket_sizes),
                mean_bucket_size=float(bucket_sizes.mean()),
                max_bucket_size=int(bucket_sizes.max()),
                table_bytes=int(sum(array.nbytes for array in self._tables)),
            )
        if self._pca is not None:
            info["pca_explained_variance"] = float(self._pca.explained.sum())
        return info

    def _hash_space(self, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _probe(self, queries: np.ndarray, hashed: np.ndarray) -> kernels.ProbeArgs | kernels.ListedProbes:
        """The buckets :func:`kernels.lsh_search` probes for ``queries`` (``hashed``: them in the hashing space)."""
        raise NotImplementedError

    def _probe_args(self, queries: np.ndarray) -> tuple[Any, kernels.Shortlist | None]:
        """The probe and the shortlist of :func:`kernels.lsh_search` for ``queries`` (normalised for cosine)."""
        hashed = self._hash_space(queries)
        shortlist = None
        if self.rerank and self._reduced is not None:
            if self._codebook is not None:
                assert self._score_pca is not None
                scored = code_units(self._codebook, project(self._score_pca, queries))
                shortlist = kernels.Shortlist(queries=scored, data=self._reduced, size=self.rerank)
            else:
                # PCA is an orthogonal projection: reduced distances are lower bounds of the true ones
                shortlist = kernels.Shortlist(queries=hashed, data=self._reduced, size=self.rerank, lower_bound=True)
        return self._probe(queries, hashed), shortlist

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        probe, shortlist = self._probe_args(queries)
        return SearchResult(
            *kernels.lsh_search(probe=probe, k=k, metric=kernels.METRIC_CODES[self.metric], shortlist=shortlist)
        )

    def candidates(self, Q: np.ndarray) -> list[np.ndarray]:
        """Distinct candidate ids (ascending int64 arrays) each query would visit with the current ``probes``."""
        self._check_fitted()
        queries = self._prepare_queries(Q)
        probe, _ = self._probe_args(queries)
        offsets, ids = kernels.lsh_candidates(probe=probe)
        return [ids[offsets[i] : offsets[i + 1]] for i in range(len(queries))]


class LSHIndex(BucketIndex):
    """The paper's E2LSH index (Datar et al.), with optional query-directed multi-probe (Lv et al.), hashing in
    a PCA-reduced space and a cheap candidate phase.

    Each of ``n_tables`` (g) hash tables keys an object by ``h = n_projections`` slot numbers
    ``floor((p · a_i + b_i) / w)``, ``a_i ~ N(0, I)``, ``b_i ~ U[0, w)`` drawn from ``seed``. A query visits the
    union of its g buckets (plus, with ``probes=T``, the T cheapest neighbouring buckets of every table),
    and the distinct visited objects are ranked exactly with the metric. Fewer than k candidates is a normal
    answer: the rest of the row is padded with id -1.

    With ``reduce_dim=r`` the vectors are hashed by their coordinates on the top ``r`` principal axes of the
    indexed data (the same E2LSH functions, drawn in r dimensions), so ``bucket_width`` is in units of that
    space. With ``rerank=R`` as well, every candidate is first scored by its distance in the reduced space
    (r floats instead of d) and only the best ``R`` are ranked exactly in the full space; ``visited`` still
    counts every candidate. ``target_recall`` chooses ``probes`` at fit time: the fewest (from 0, 1, 2, 4, ...,
    ``max_probes``) whose recall@10 against the exact scan reaches it on a sample of the indexed objects used
    as queries (each ignoring itself). ``min_collisions=c`` keeps only the objects found in at least c probed
    buckets (collision counting, as in C2LSH): ``visited`` then counts those.

    With ``metric="cosine"`` the vectors are L2-normalised before hashing and ranking (Euclidean distance and
    cosine similarity are monotone on the unit sphere), so ``bucket_width`` is in units of the unit sphere.

    Args:
        n_tables: g >= 1, number of hash tables (more tables: more candidates, higher recall).
        n_projections: h >= 1, hash functions concatenated per table (more: smaller buckets).
        bucket_width: w > 0, slot length along each projection, in feature units (see
            :func:`cbir.evaluation.default_bucket_width`).
        metric: ``"euclidean"`` or ``"cosine"``.
        seed: seed of the random projections; same seed and data give the same index.
        probes: T >= 0 extra buckets probed per table per query (0 = plain E2LSH).
        reduce_dim: None (hash the full vectors) or r >= 1 principal axes to hash in (capped at the dimension).
        rerank: 0 (rank every candidate exactly) or R >= 1 candidates kept by their reduced-space distance for
            the exact ranking; needs ``reduce_dim``.
        target_recall: None, or a recall@10 in (0, 1] that chooses ``probes`` at fit time.
        max_probes: the largest ``probes`` ``target_recall`` may choose.
        min_collisions: c >= 1; the candidates are the objects found in at least c of the probed buckets
            (1 = the union, the paper's E2LSH; 2 or more keeps the objects that collide with the query in several
            tables, which are far more likely to be near, and computes no distance for the others).
        score_dim: None (score the shortlist on the float32 PCA coordinates hashing uses), or s: on uint8 codes of
            the top s principal axes (needs ``rerank``; see :class:`BucketIndex`).
    """

    kind: ClassVar[str] = "lsh_index"
    _TUNE_SAMPLE: ClassVar[int] = 200
    _HASH_CHUNK: ClassVar[int] = 1 << 17  # rows hashed between two progress reports (~0.2 s at 256 dimensions)
    _TUNE_K: ClassVar[int] = 10

    def __init__(
        self,
        n_tables: int = 4,
        n_projections: int = 2,
        bucket_width: float = 4.0,
        metric: Metric = "euclidean",
        seed: int = 0,
        probes: int = 0,
        reduce_dim: int | None = None,
        rerank: int = 0,
        target_recall: float | None = None,
        max_probes: int = 64,
        min_collisions: int = 1,
        score_dim: int | None = None,
    ) -> None:
        super().__init__(
            n_tables=n_tables,
            n_projections=n_projections,
            metric=metric,
            seed=seed,
            probes=probes,
            reduce_dim=reduce_dim,
            rerank=rerank,
            min_collisions=min_collisions,
            score_dim=score_dim,
        )
        if isinstance(bucket_width, bool) or not isinstance(bucket_width, Real) or not np.isfinite(bucket_width):
            raise ValueError(f"bucket_width must be a finite number, got {bucket_width!r}")
        if bucket_width <= 0:
            raise ValueError(f"bucket_width must be > 0, got {bucket_width}")
        self.bucket_width = float(bucket_width)
        if target_recall is not None:
            if isinstance(target_recall, bool) or not isinstance(target_recall, Real):
                raise ValueError(f"target_recall must be a number in (0, 1], got {target_recall!r}")
            if not 0.0 < target_recall <= 1.0:
                raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
            target_recall = float(target_recall)
        self.target_recall = target_recall
        self.max_probes = check_int(max_probes, "max_probes", 0)
        self._directions: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        self.tuned_recall: float | None = None

    @classmethod
    def for_data(cls, X: np.ndarray, width_factor: float, **params: Any) -> LSHIndex:
        """An unfitted index whose ``bucket_width`` is ``width_factor`` × the median pairwise distance of a sample
        of ``X`` in the space the index hashes in (PCA coordinates with ``reduce_dim``, unit rows for cosine).

        ``params`` are the other constructor arguments. Example (the best real-feature setting of
        ``benchmarks/ann.py``)::

            LSHIndex.for_data(X, 1.4, n_tables=16, n_projections=6, probes=2, reduce_dim=48, rerank=100,
                              min_collisions=3).fit(X)
        """
        from cbir.evaluation import default_bucket_width  # evaluation imports this module

        vectors = _as_matrix(X, "X")
        if params.get("metric", "euclidean") == "cosine":
            vectors = l2_normalize(vectors)
        seed = params.get("seed", 0)
        if params.get("reduce_dim") is not None:
            sample = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), min(len(vectors), 4096), False))]
            vectors = project(fit_pca(vectors, params["reduce_dim"], seed=seed), sample)
        width = default_bucket_width(vectors, "euclidean", fraction=float(width_factor), seed=seed)
        return cls(bucket_width=width, **params)

    @property
    def params(self) -> dict[str, Any]:
        params = {
            "n_tables": self.n_tables,
            "n_projections": self.n_projections,
            "bucket_width": self.bucket_width,
            "metric": self.metric,
            "seed": self.seed,
            "probes": self.probes,
        }
        # the options below appear only when used, so that plain E2LSH rows keep the paper's parameters
        params.update(self._shared_params())
        if self.target_recall is not None:
            params.update(target_recall=self.target_recall, max_probes=self.max_probes)
        return params

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.tuned_recall is not None:
            info["tuned_recall"] = self.tuned_recall
        return info

    def fit(self, X: np.ndarray, progress: Callable[[str, int, int], None] | None = None) -> LSHIndex:
        """Index the rows of ``X`` (see :meth:`BaseIndex.fit`); with ``target_recall``, choose ``probes`` too."""
        super().fit(X, progress)
        if self.target_recall is not None:
            self._tune_probes()
        return self

    def _hash_space(self, vectors: np.ndarray) -> np.ndarray:
        """The vectors hashing works on: their PCA coordinates with ``reduce_dim``, else themselves."""
        return vectors if self._pca is None else project(self._pca, vectors)

    def _fit_reporting(self, data: np.ndarray, progress: Callable[[str, int, int], None] | None) -> None:
        """Hash every row and build the bucket tables; with ``progress``, :data:`_HASH_CHUNK` rows then a few tables
        at a time (reported in rows: the hashing is the first half of the build, the tables the second)."""
        n, g = len(data), self.n_tables
        if progress is not None:
            progress(BUILD_STAGE, 0, n)
        reduced = self._fit_reduced(data)
        hashed = data if reduced is None else reduced  # the hashing space (_hash_space), projected once
        self._directions, self._offsets = kernels.draw_hash_functions(
            hashed.shape[1], self.n_tables, self.n_projections, self.bucket_width, self.seed
        )
        keys = np.empty((g, n), dtype=np.uint64)
        for start in range(0, n, self._HASH_CHUNK):
            rows = hashed[start : start + self._HASH_CHUNK]
            keys[:, start : start + len(rows)] = self._keys(rows)
            if progress is not None:
                progress(BUILD_STAGE, (start + len(rows)) // 2, n)
        if progress is None:
            self._tables = kernels.build_tables(keys)
        else:
            self._tables = kernels.build_tables_in_steps(
                keys, lambda done: progress(BUILD_STAGE, n // 2 + (n - n // 2) * done // g, n)
            )
        self.tuned_recall = None

    def _keys(self, hashed: np.ndarray) -> np.ndarray:
        """Bucket keys (g, n) of vectors already in the hashing space."""
        assert self._directions is not None and self._offsets is not None
        return kernels.hash_keys(
            np.ascontiguousarray(hashed @ self._directions, dtype=np.float32),
            self._offsets,
            self.bucket_width,
            self.n_tables,
            self.n_projections,
        )

    def _add(self, rows: np.ndarray) -> None:
        """Hash the new rows with the fitted functions (and PCA) and merge them into the buckets."""
        hashed = self._hash_space(rows)
        self._tables = kernels.merge_tables(self.tables, self._keys(hashed), self.n_objects)
        self._extend_reduced(rows, hashed)

    def _probe(self, queries: np.ndarray, hashed: np.ndarray) -> kernels.ProbeArgs:
        """E2LSH's probe: each table's slots and the query's place within them (for multi-probe)."""
        assert self._offsets is not None and self._directions is not None
        projected = np.ascontiguousarray(hashed @ self._directions, dtype=np.float32)
        codes, fractions = kernels.slot_positions(projected, self._offsets, self.bucket_width)
        return kernels.ProbeArgs(
            queries=queries,
            data=self._data,
            codes=codes,
            fractions=fractions,
            n_tables=self.n_tables,
            n_projections=self.n_projections,
            bucket_width=self.bucket_width,
            n_probes=self.probes,
            tables=self.tables,
            min_collisions=self.min_collisions,
        )

    def _tune_probes(self) -> None:
        """Set ``probes`` to the fewest of 0, 1, 2, 4, ... ``max_probes`` reaching ``target_recall`` (see class)."""
        from cbir.evaluation import recall_at_k  # evaluation imports this module

        assert self._data is not None and self.target_recall is not None
        n = self.n_objects
        k = min(self._TUNE_K, n - 1)
        if k < 1:
            self.probes, self.tuned_recall = 0, 1.0
            return
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(n, min(self._TUNE_SAMPLE, n), replace=False))
        queries = self._data[sample]
        exact = _without_self(SequentialScan(self.metric).fit(self._data).search(queries, k + 1).ids, sample, k)
        candidates = [0, *(2**i for i in range(max(self.max_probes, 1).bit_length()) if 2**i <= self.max_probes)]
        for probes in candidates:
            self.probes = probes
            found = _without_self(self._search(queries, k + 1).ids, sample, k)
            self.tuned_recall = float(recall_at_k(found, exact, k).mean())
            if self.tuned_recall >= self.target_recall:
                break

    def hash_codes(self, X: np.ndarray) -> np.ndarray:
        """Slot numbers of rows of ``X`` (m, d): (m, g, h) int64 (normalised first for cosine)."""
        self._check_fitted()
        vectors = self._prepare_queries(X, "X")
        probe, _ = self._probe_args(vectors)
        return probe.codes.reshape(len(vectors), self.n_tables, self.n_projections)

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "directions": self._directions,
            "offsets": self._offsets,
            "tables": self.tables._asdict(),
            **self._reduced_state(),
            "tuned_probes": self.probes,
            "tuned_recall": self.tuned_recall,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._directions = np.ascontiguousarray(state["directions"], dtype=np.float32)
        self._offsets = np.ascontiguousarray(state["offsets"], dtype=np.float64)
        self._tables = kernels.BucketTables(**state["tables"])
        self._restore_reduced(state)
        if "tuned_probes" in state:
            self.probes = state["tuned_probes"]
            self.tuned_recall = state.get("tuned_recall")
        hash_dim = self.dim if self._pca is None else self._pca.components.shape[1]
        expected = (hash_dim, self.n_tables * self.n_projections)
        if self._directions.shape != expected or len(self._tables.bucket_ids) != self.n_tables * self.n_objects:
            raise ValueError(f"stored arrays do not match the parameters (directions {self._directions.shape})")


def _without_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row that are not the row's own id (rows of ``ids``: (m, >= k+1))."""
    mask = ids != own[:, None]
    kept = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        values = ids[row][mask[row]][:k]
        kept[row, : len(values)] = values
    return kept
