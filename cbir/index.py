"""Nearest-neighbour indexes with one contract: exact sequential scan and the paper's E2LSH index.

Every index has ``fit(X)`` and ``search(Q, k) -> (scores, ids, visited)``:

* ``X`` (n, d) and ``Q`` (m, d) are converted to C-contiguous float32; NaN/inf, wrong ranks and dimension
  mismatches raise :class:`ValueError`.
* ``scores`` (m, k) float32: Euclidean distance (ascending) or cosine similarity (descending).
* ``ids`` (m, k) int64 row numbers into ``X``; ties are ordered by id; slots with no answer hold -1 and a
  score of +inf (euclidean) or -inf (cosine).
* ``visited`` (m,) int64: how many distinct objects had their distance computed for each query (the paper's
  "#Items"): ``n`` for the scan, the size of the candidate union for LSH.

Indexes persist with :meth:`save` / :meth:`load` through :mod:`cbir.storage` (atomic, kind-checked).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from cbir import kernels
from cbir.storage import ArtifactError, load_artifact, save_artifact

Metric = Literal["euclidean", "cosine"]
SearchResult = tuple[np.ndarray, np.ndarray, np.ndarray]
IndexT = TypeVar("IndexT", bound="BaseIndex")

# Rows of the query block times n: bounds the scan's temporary similarity matrix to ~128 MiB.
_SCAN_BLOCK_ELEMENTS = 1 << 25


def _check_metric(metric: str) -> str:
    if metric not in kernels.METRIC_CODES:
        raise ValueError(f"metric must be one of {sorted(kernels.METRIC_CODES)}, got {metric!r}")
    return metric


def _check_int(value: Any, name: str, minimum: int) -> int:
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


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel on tiny inputs, once per process.

    Called before timed work so that ``fit_seconds`` / ``search_seconds`` measure the algorithms, not the JIT.
    """
    global _WARM
    if _WARM:
        return
    rng = np.random.default_rng(0)
    points = rng.standard_normal((16, 4)).astype(np.float32)
    for metric in kernels.METRIC_CODES:
        SequentialScan(metric).fit(points).search(points[:2], 3)
        index = LSHIndex(2, 2, 1.0, metric=metric, probes=1).fit(points)
        index.search(points[:2], 3)
        index.probes = 0
        index.search(points[:2], 3)
        index.candidates(points[:2])
    _WARM = True


class BaseIndex:
    """Common base of the indexes: state, validation, persistence; subclasses implement ``_fit``, ``_search``."""

    kind: ClassVar[str]
    metric: str

    def __init__(self) -> None:
        self._data: np.ndarray | None = None

    # ---- public contract ---------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._data is not None

    @property
    def n_objects(self) -> int:
        """Number of indexed objects (0 before ``fit``)."""
        return 0 if self._data is None else int(self._data.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension (0 before ``fit``)."""
        return 0 if self._data is None else int(self._data.shape[1])

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters (enough to rebuild an equal, unfitted index)."""
        raise NotImplementedError

    def fit(self: IndexT, X: np.ndarray) -> IndexT:
        """Index the rows of ``X`` (n, d) float; replaces any previous content. Returns ``self``.

        A float32 C-contiguous ``X`` is referenced, not copied (collections are large): do not modify it in
        place while the index is in use.
        """
        data = _as_matrix(X, "X")
        if self.metric == "cosine":
            data = l2_normalize(data)
        self._fit(data)
        self._data = data
        return self

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
        k = _check_int(k, "k", 1)
        queries = _as_matrix(Q, "Q", dim=self.dim, allow_empty=True)
        if self.metric == "cosine":
            queries = l2_normalize(queries)
        return self._search(queries, k)

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
    def _check_fitted(self) -> None:
        if self._data is None:
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _fit(self, data: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {"data": self._data}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._data = np.ascontiguousarray(state["data"], dtype=np.float32)

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
        self.metric = _check_metric(metric)
        self._sq_norms: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"metric": self.metric}

    def _fit(self, data: np.ndarray) -> None:
        self._sq_norms = np.einsum("ij,ij->i", data, data, dtype=np.float32) if self.metric == "euclidean" else None

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
                chunk, data, offsets, np.ascontiguousarray(candidates, dtype=np.int64).ravel(), k, metric
            )
            scores[start : start + block] = chunk_scores
            ids[start : start + block] = chunk_ids
        return scores, ids, np.full(m, n, dtype=np.int64)


class LSHIndex(BaseIndex):
    """The paper's E2LSH index (Datar et al.), with optional query-directed multi-probe (Lv et al.).

    Each of ``n_tables`` (g) hash tables keys an object by ``h = n_projections`` slot numbers
    ``floor((p · a_i + b_i) / w)``, ``a_i ~ N(0, I)``, ``b_i ~ U[0, w)`` drawn from ``seed``. A query visits the
    union of its g buckets (plus, with ``probes=T``, the T cheapest neighbouring buckets of every table),
    and the distinct visited objects are ranked exactly with the metric. Fewer than k candidates is a normal
    answer: the rest of the row is padded with id -1.

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
    """

    kind: ClassVar[str] = "lsh_index"

    def __init__(
        self,
        n_tables: int = 4,
        n_projections: int = 2,
        bucket_width: float = 4.0,
        metric: Metric = "euclidean",
        seed: int = 0,
        probes: int = 0,
    ) -> None:
        super().__init__()
        self.n_tables = _check_int(n_tables, "n_tables", 1)
        self.n_projections = _check_int(n_projections, "n_projections", 1)
        if isinstance(bucket_width, bool) or not isinstance(bucket_width, Real) or not np.isfinite(bucket_width):
            raise ValueError(f"bucket_width must be a finite number, got {bucket_width!r}")
        if bucket_width <= 0:
            raise ValueError(f"bucket_width must be > 0, got {bucket_width}")
        self.bucket_width = float(bucket_width)
        self.metric = _check_metric(metric)
        self.seed = _check_int(seed, "seed", 0)
        self.probes = probes
        self._directions: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        self._tables: kernels.BucketTables | None = None

    @property
    def probes(self) -> int:
        """Neighbouring buckets probed per table; may be changed on a fitted index (no refit needed)."""
        return self._probes

    @probes.setter
    def probes(self, value: int) -> None:
        self._probes = _check_int(value, "probes", 0)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "n_tables": self.n_tables,
            "n_projections": self.n_projections,
            "bucket_width": self.bucket_width,
            "metric": self.metric,
            "seed": self.seed,
            "probes": self.probes,
        }

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
        return info

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        assert self._directions is not None
        return np.ascontiguousarray(vectors @ self._directions, dtype=np.float32)

    def _fit(self, data: np.ndarray) -> None:
        self._directions, self._offsets = kernels.draw_hash_functions(
            data.shape[1], self.n_tables, self.n_projections, self.bucket_width, self.seed
        )
        keys = kernels.hash_keys(
            self._project(data), self._offsets, self.bucket_width, self.n_tables, self.n_projections
        )
        self._tables = kernels.build_tables(keys)

    def _query_slots(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._offsets is not None
        return kernels.slot_positions(self._project(queries), self._offsets, self.bucket_width)

    def _probe_args(self, queries: np.ndarray) -> tuple[Any, ...]:
        """The leading arguments of :func:`kernels.lsh_search` / :func:`kernels.lsh_candidates` for ``queries``
        (already normalised for cosine): the queries, the data, their slots and the index parameters."""
        codes, fractions = self._query_slots(queries)
        return (
            queries,
            self._data,
            codes,
            fractions,
            self.n_tables,
            self.n_projections,
            self.bucket_width,
            self.probes,
            self.tables,
        )

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        return kernels.lsh_search(*self._probe_args(queries), k, kernels.METRIC_CODES[self.metric])

    def hash_codes(self, X: np.ndarray) -> np.ndarray:
        """Slot numbers of rows of ``X`` (m, d): (m, g, h) int64 (normalised first for cosine)."""
        self._check_fitted()
        vectors = _as_matrix(X, "X", dim=self.dim, allow_empty=True)
        if self.metric == "cosine":
            vectors = l2_normalize(vectors)
        codes, _ = self._query_slots(vectors)
        return codes.reshape(len(vectors), self.n_tables, self.n_projections)

    def candidates(self, Q: np.ndarray) -> list[np.ndarray]:
        """Distinct candidate ids (ascending int64 arrays) each query would visit with the current ``probes``."""
        self._check_fitted()
        queries = _as_matrix(Q, "Q", dim=self.dim, allow_empty=True)
        if self.metric == "cosine":
            queries = l2_normalize(queries)
        offsets, ids = kernels.lsh_candidates(*self._probe_args(queries))
        return [ids[offsets[i] : offsets[i + 1]] for i in range(len(queries))]

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "directions": self._directions,
            "offsets": self._offsets,
            "tables": self.tables._asdict(),
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._directions = np.ascontiguousarray(state["directions"], dtype=np.float32)
        self._offsets = np.ascontiguousarray(state["offsets"], dtype=np.float64)
        self._tables = kernels.BucketTables(**state["tables"])
        expected = (self.dim, self.n_tables * self.n_projections)
        if self._directions.shape != expected or len(self._tables.bucket_ids) != self.n_tables * self.n_objects:
            raise ValueError(f"stored arrays do not match the parameters (directions {self._directions.shape})")
