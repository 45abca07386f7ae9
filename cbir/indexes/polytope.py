"""Cross-polytope LSH (Andoni, Indyk, Laarhoven, Razenshteyn & Schmidt, NIPS 2015), as FALCONN implements it, behind
the index contract of :mod:`cbir.indexes.base`.

A hash is the nearest vertex ±e_j of the cross-polytope to a pseudo-random rotation of the (centred) vector: an
angular hash, asymptotically optimal for cosine similarity. The rotation is FALCONN's (three rounds of random signs
and a fast Hadamard transform); it is linear, so the index materialises it once as a (d, L·k·D) matrix and hashes a
batch with one BLAS product (:func:`cbir.indexes.kernels.rotation_matrix`) when that is cheaper (PCA coordinates: d ≈
48,
D = 64), else applies L·k fast transforms per vector (:func:`cbir.indexes.kernels.rotate`; full CNN features: d = 1280,
D = 2048).

Because a hash has 2·D values instead of E2LSH's few slots, one or two hashes per table already make buckets of the
right size, and the multi-probe sequence (the next-nearest vertices, ranked over all tables at once) is FALCONN's.

The vectors are centred on the mean of the indexed data before hashing (FALCONN's advice: CNN features live in one
orthant, where all directions look alike); with ``reduce_dim`` they are hashed by their PCA coordinates instead
(centred by construction), which also enables the shortlist of :class:`cbir.indexes.lsh.LSHIndex` (``rerank``).
Candidates are ranked exactly with the index's metric, so ``metric="euclidean"`` works too (near points have
near directions from the centre), only without the theory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from cbir.indexes import kernels
from cbir.indexes.base import Metric, check_int
from cbir.indexes.buckets import BucketIndex
from cbir.indexes.pca import project

# Rotated coordinates computed at a time at fit (rows x g*h*D): bounds the temporary matrix to 128 MiB.
_HASH_ELEMENTS = 1 << 25
# How many more multiply-adds a BLAS product may do than the fast Hadamard transforms and still be faster.
_DENSE_ADVANTAGE = 8


def rotation_dim_for(dim: int) -> int:
    """The dimension the rotations work in: the smallest power of two >= ``dim`` (vectors are zero-padded)."""
    return 1 << max(0, int(dim) - 1).bit_length()


def hashes_for_bits(rotation_dim: int, bits: int) -> tuple[int, int]:
    """FALCONN's ``compute_k_parameters_for_bits``: (hashes per table, last_dim) giving about ``bits`` bits per
    table (a hash in D dimensions is worth log2(D) + 1 bits; the last one uses fewer coordinates to make up the
    rest). Choose bits ≈ log2(n) for buckets of a few objects."""
    bits_per_hash = rotation_dim_for(rotation_dim).bit_length()  # log2(D) + 1
    bits = check_int(bits, "bits", 1)
    count, remaining = divmod(bits, bits_per_hash)
    if remaining == 0:
        return count, rotation_dim_for(rotation_dim)
    return count + 1, 1 << (remaining - 1)


def bits_for(rotation_dim: int, n_projections: int, last_dim: int | None) -> int:
    """The inverse of :func:`hashes_for_bits`: the bits per table of ``n_projections`` hashes whose last one uses
    ``last_dim`` coordinates (``None``: all)."""
    dim = rotation_dim_for(rotation_dim)
    last = dim if last_dim is None else min(int(last_dim), dim)
    return (int(n_projections) - 1) * dim.bit_length() + last.bit_length()


class CrossPolytopeIndex(BucketIndex):
    """FALCONN's cross-polytope LSH index (see the module docstring).

    Args:
        n_tables: L >= 1 hash tables.
        n_projections: k >= 1 cross-polytope hashes concatenated per table.
        last_dim: None (all D coordinates) or the number of rotated coordinates the last hash of a table uses
            (capped at D; fewer: larger buckets), see :func:`hashes_for_bits`.
        metric: ``"euclidean"`` or ``"cosine"`` (the ranking; hashing is angular either way).
        seed: seed of the rotations (and of the PCA sample).
        probes: T >= 0; each query probes L·(1 + T) buckets, the cheapest over all tables (T = 0: its own L).
        reduce_dim: None (hash the centred vectors) or r principal axes to hash in.
        rerank: 0 or R >= 1 candidates kept by their PCA distance for the exact ranking (needs ``reduce_dim``).
        score_dim: None, or s: score the shortlist on uint8 codes of the top s principal axes (needs ``rerank``;
            see :class:`cbir.indexes.buckets.BucketIndex`).
        min_collisions: c >= 1; keep only the objects found in at least c probed buckets.
        n_rotations: rounds of random signs + Hadamard transform per hash (FALCONN: 3; 1 or 2 are cheaper and
            less random).
    """

    kind: ClassVar[str] = "cross_polytope_index"

    def __init__(
        self,
        n_tables: int = 8,
        n_projections: int = 1,
        last_dim: int | None = None,
        metric: Metric = "euclidean",
        seed: int = 0,
        probes: int = 0,
        reduce_dim: int | None = None,
        rerank: int = 0,
        min_collisions: int = 1,
        n_rotations: int = 3,
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
        self.last_dim = None if last_dim is None else check_int(last_dim, "last_dim", 1)
        self.n_rotations = check_int(n_rotations, "n_rotations", 1)
        self._center: np.ndarray | None = None
        self._signs: np.ndarray | None = None
        self._rotation: np.ndarray | None = None

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "n_tables": self.n_tables,
            "n_projections": self.n_projections,
            "last_dim": self.last_dim,
            "metric": self.metric,
            "seed": self.seed,
            "probes": self.probes,
            **self._shared_params(),
        }
        if self.n_rotations != 3:
            params["n_rotations"] = self.n_rotations
        return params

    @property
    def rotation_dim(self) -> int:
        """D, the power of two the rotations work in (0 before ``fit``)."""
        return 0 if self._signs is None else int(self._signs.shape[2])

    def _last_dim(self) -> int:
        return self.rotation_dim if self.last_dim is None else min(self.last_dim, self.rotation_dim)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._tables is not None:
            info["rotation_dim"] = self.rotation_dim
        return info

    def _hash_space(self, vectors: np.ndarray) -> np.ndarray:
        """The vectors hashing works on: PCA coordinates with ``reduce_dim``, else centred on the data's mean."""
        if self._pca is not None:
            return project(self._pca, vectors)
        assert self._center is not None
        return np.ascontiguousarray(vectors - self._center, dtype=np.float32)

    def _rotated(self, hashed: np.ndarray) -> np.ndarray:
        """The rotations (m, g*h, D) float32 of rows already in the hashed space (:meth:`_hash_space`)."""
        assert self._signs is not None
        if self._rotation is None:
            return kernels.rotate(hashed, self._signs)
        return (hashed @ self._rotation).reshape(len(hashed), self._signs.shape[0], self._signs.shape[2])

    def _codes(self, vectors: np.ndarray, in_hash_space: bool = False) -> np.ndarray:
        """The hashes (n, g*h) of rows, rotated a block at a time (bounded memory); the rows are taken to the
        hashing space block by block too, unless ``in_hash_space`` (they are there already)."""
        assert self._signs is not None
        codes = np.empty((len(vectors), self._signs.shape[0]), dtype=np.int64)
        block = max(1, _HASH_ELEMENTS // (self._signs.shape[0] * self._signs.shape[2]))
        for start in range(0, len(vectors), block):
            rows = vectors[start : start + block]
            rotated = self._rotated(rows if in_hash_space else self._hash_space(rows))
            codes[start : start + len(rotated)] = kernels.cross_polytope_codes(
                rotated, self.n_projections, self._last_dim()
            )
        return codes

    def _set_rotation(self, hashed_dim: int) -> None:
        """Materialise the rotations as a matrix when one BLAS product is cheaper than the fast transforms: a
        d-dimensional product costs d multiply-adds per rotated coordinate (fast in BLAS), a transform about
        n_rotations · (log2 D + 2) scalar operations."""
        assert self._signs is not None
        _, n_rotations, size = self._signs.shape
        dense = hashed_dim <= _DENSE_ADVANTAGE * n_rotations * (size.bit_length() + 1)
        self._rotation = kernels.rotation_matrix(self._signs, hashed_dim) if dense else None

    def _fit(self, data: np.ndarray) -> None:
        reduced = self._fit_reduced(data)  # with reduce_dim: the rows' PCA coordinates (the hashing space), once
        if reduced is None:
            self._center = data.mean(axis=0, dtype=np.float64).astype(np.float32)
            hashed_dim = data.shape[1]
        else:
            self._center = None
            hashed_dim = reduced.shape[1]
        # without PCA the rows are centred block by block (no centred copy of the data)
        self._hash_into_tables(data if reduced is None else reduced, hashed_dim, in_hash_space=reduced is not None)

    def _hash_into_tables(self, rows: np.ndarray, hashed_dim: int, in_hash_space: bool) -> None:
        """Draw the rotations for the current ``n_projections`` and fill the tables with ``rows`` (n, d) float32
        (already in the hashing space of ``hashed_dim`` coordinates if ``in_hash_space``)."""
        self._signs = kernels.draw_rotation_signs(
            rotation_dim_for(hashed_dim), self.n_tables * self.n_projections, self.n_rotations, self.seed
        )
        self._set_rotation(hashed_dim)
        keys = kernels.fold_keys(self._codes(rows, in_hash_space=in_hash_space), self.n_tables, self.n_projections)
        self._tables = kernels.build_tables(keys)

    def _probe(self, queries: np.ndarray, hashed: np.ndarray) -> kernels.ListedProbes:
        """The global probing sequence: L·(1 + probes) buckets, best first (FALCONN's multi-probe)."""
        probe_tables, probe_keys, _ = kernels.cross_polytope_probes(
            self._rotated(hashed),
            self.n_tables,
            self.n_projections,
            self._last_dim(),
            self.n_tables * (1 + self.probes),
        )
        return kernels.ListedProbes(
            queries=queries,
            data=self._data,
            probe_tables=probe_tables,
            probe_keys=probe_keys,
            tables=self.tables,
            min_collisions=self.min_collisions,
        )

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "center": self._center,
            **self._reduced_state(),
            "signs": self._signs,
            "tables": self.tables._asdict(),
            "probes": self.probes,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        center = state["center"]
        self._center = None if center is None else np.ascontiguousarray(center, dtype=np.float32)
        self._restore_reduced(state)
        self._signs = np.ascontiguousarray(state["signs"], dtype=np.float32)
        self._tables = kernels.BucketTables(**state["tables"])
        self.probes = state["probes"]
        hashed_dim = self.dim if self._pca is None else self._pca.components.shape[1]
        expected = (self.n_tables * self.n_projections, self.n_rotations, rotation_dim_for(hashed_dim))
        if self._signs.shape != expected or len(self._tables.bucket_ids) != self.n_tables * self.n_objects:
            raise ValueError(f"stored arrays do not match the parameters (signs {self._signs.shape})")
        self._set_rotation(hashed_dim)
