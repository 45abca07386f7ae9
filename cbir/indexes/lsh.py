"""The paper's E2LSH index: g tables of h projections ``floor((p·X + b) / w)``, with query-directed multi-probe,
PCA-space hashing, collision counting and probes tuned at fit time to a target recall."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from cbir.core.metrics import recall_at_k
from cbir.indexes import kernels
from cbir.indexes.base import (
    BUILD_STAGE,
    Metric,
    _as_matrix,
    check_int,
    l2_normalize,
)
from cbir.indexes.buckets import BucketIndex
from cbir.indexes.holdout import check_target_recall, pseudo_queries, without_self
from cbir.indexes.pca import fit_pca, project
from cbir.indexes.widths import default_bucket_width


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
            :func:`cbir.evaluation.evaluate.default_bucket_width`).
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
        self.target_recall = check_target_recall(target_recall)
        self.max_probes = check_int(max_probes, "max_probes", 0)
        self._directions: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        # learned at fit with target_recall (scikit-learn's trailing underscore): the constructor's probes stay
        self.probes_: int | None = None
        self.tuned_recall_: float | None = None

    @classmethod
    def for_data(cls, X: np.ndarray, width_factor: float, **params: Any) -> LSHIndex:
        """An unfitted index whose ``bucket_width`` is ``width_factor`` × the median pairwise distance of a sample
        of ``X`` in the space the index hashes in (PCA coordinates with ``reduce_dim``, unit rows for cosine).

        ``params`` are the other constructor arguments. Example (the best real-feature setting of
        ``benchmarks/ann.py``)::

            LSHIndex.for_data(X, 1.4, n_tables=16, n_projections=6, probes=2, reduce_dim=48, rerank=100,
                              min_collisions=3).fit(X)
        """
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
        if self.tuned_recall_ is not None:
            info.update(tuned_probes=self.probes_, tuned_recall=self.tuned_recall_)
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
        self.probes_, self.tuned_recall_ = None, None

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
            n_probes=self.search_probes,
            tables=self.tables,
            min_collisions=self.min_collisions,
        )

    @property
    def search_probes(self) -> int:
        """The probes a search uses: those learned at fit (``probes_``, with ``target_recall``), else ``probes``."""
        return self.probes if self.probes_ is None else self.probes_

    def _tune_probes(self) -> None:
        """Set ``probes_`` to the fewest of 0, 1, 2, 4, ... ``max_probes`` reaching ``target_recall`` (see class)."""
        assert self._data is not None and self.target_recall is not None
        n = self.n_objects
        k = min(self._TUNE_K, n - 1)
        if k < 1:
            self.probes_, self.tuned_recall_ = 0, 1.0
            return
        sample, queries, exact = pseudo_queries(self._data, self.metric, self.seed, self._TUNE_SAMPLE, k)
        candidates = [0, *(2**i for i in range(max(self.max_probes, 1).bit_length()) if 2**i <= self.max_probes)]
        for probes in candidates:
            self.probes_ = probes
            found = without_self(self._search(queries, k + 1).ids, sample, k)
            self.tuned_recall_ = float(recall_at_k(found, exact, k).mean())
            if self.tuned_recall_ >= self.target_recall:
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
            "tuned_probes": self.probes_,
            "tuned_recall": self.tuned_recall_,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._directions = np.ascontiguousarray(state["directions"], dtype=np.float32)
        self._offsets = np.ascontiguousarray(state["offsets"], dtype=np.float64)
        self._tables = kernels.BucketTables(**state["tables"])
        self._restore_reduced(state)
        if state.get("tuned_recall") is not None:  # learned at fit (indexes saved before probes_ set probes)
            self.probes_, self.tuned_recall_ = int(state["tuned_probes"]), float(state["tuned_recall"])
        hash_dim = self.dim if self._pca is None else self._pca.components.shape[1]
        expected = (hash_dim, self.n_tables * self.n_projections)
        if self._directions.shape != expected or len(self._tables.bucket_ids) != self.n_tables * self.n_objects:
            raise ValueError(f"stored arrays do not match the parameters (directions {self._directions.shape})")
