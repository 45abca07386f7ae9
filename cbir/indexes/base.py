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

Indexes persist with :meth:`save` / :meth:`load` through :mod:`cbir.core.storage` (atomic, kind-checked).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import numpy as np

from cbir.core.storage import ArtifactError, load_artifact, save_artifact
from cbir.indexes import kernels, threads

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


class BaseIndex:
    """Common base of the indexes: state, validation, persistence; subclasses implement ``_fit`` (or
    ``_fit_reporting``), ``_search``."""

    kind: ClassVar[str]
    # whether a search compares every indexed object (then ``visited`` is all of them, removed ones included)
    exhaustive: ClassVar[bool] = False
    # whether one query's search runs only serial numba code, no BLAS and no parallel kernel: then it needs no
    # single-query thread limits (cbir.indexes.threads), whose setting and restoring cost ~10 microseconds a query
    serial_single_query: ClassVar[bool] = False
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

    @property
    def fitted_params(self) -> dict[str, Any]:
        """The search settings chosen at fit (by name as in :attr:`params`, e.g. the probes a target recall chose),
        which a search uses instead of the constructor's; empty for an index that chooses none."""
        return {}

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
        if len(queries) == 1 and self.serial_single_query:
            return self._search_live(queries, k)
        with threads.queries(len(queries)):  # one query on one thread, a batch on all cores (cbir.indexes.threads)
            return self._search_live(queries, k)

    def _search_live(self, queries: np.ndarray, k: int) -> SearchResult:
        """:meth:`_search` leaving out the rows marked removed."""
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
        return SearchResult(distances, ids, self._live_visited(wider))

    def _live_visited(self, wider: SearchResult) -> np.ndarray:
        """``visited`` of a tombstoned search without the removed rows, so that it never exceeds the live objects.

        An exhaustive index compared every removed row; another one compared the removed rows it returned (all it
        met when it returned fewer than asked for) and perhaps some more, so what remains is capped at the live
        objects."""
        n_live = self.n_objects - len(self._removed)
        counted = wider.visited >= 0
        if self.exhaustive:
            live = wider.visited - len(self._removed)
        else:
            met = np.isin(wider.ids, self._removed).sum(axis=1)
            live = np.minimum(wider.visited - met, n_live)
        return np.where(counted, np.maximum(live, 0), wider.visited).astype(np.int64)

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
        """Read an index written by :meth:`save`; raises :class:`cbir.core.storage.ArtifactError` if unusable."""
        payload = load_artifact(path, cls.kind, mmap=True)  # large arrays: mapped, not read (core.storage)
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
