"""What the bucket indexes share (E2LSH and cross-polytope LSH): PCA-space hashing, the shortlist scored on
float32 or uint8 codes and re-ranked exactly, bucket tables that grow in place, multi-probe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cbir.indexes import kernels
from cbir.indexes.base import (
    BaseIndex,
    Metric,
    SearchResult,
    check_int,
    check_metric,
)
from cbir.indexes.pca import PCA, Codebook, code_units, encode, fit_codebook, fit_pca, project, truncate


class BucketIndex(BaseIndex):
    """What the hashing indexes share (:class:`LSHIndex`, :class:`cbir.indexes.polytope.CrossPolytopeIndex`): bucket
    tables in
    the CSR layout of :class:`kernels.BucketTables`, ``probes``, ``min_collisions``, an optional PCA hashing space with
    a shortlist scored in it, and the search and candidate kernels. A subclass hashes (``_fit``,
    :meth:`_hash_space`) and says which buckets a query probes (:meth:`_probe`).

    The shortlist (``rerank=R``) scores every candidate in a small space and ranks only the best R exactly: by
    default the PCA coordinates hashing uses (float32; a lower bound of the true distance, so the exact ranking
    stops early), or with ``score_dim=s`` uint8 codes of the top s principal axes (:class:`cbir.indexes.pca.Codebook`: a
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
