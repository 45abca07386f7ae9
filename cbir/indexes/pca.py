"""Principal component analysis for the indexes: a reduced space to hash in and to score candidates in (as float32
coordinates, or as uint8 codes of a :class:`Codebook`).

Projecting onto the top ``r`` principal axes is an orthogonal projection of the centred vectors, so the
Euclidean distance of two projections never exceeds their distance in the full space: a cheap lower bound
that keeps most of the distance when the eigen-spectrum decays (as it does for CNN features).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cbir.indexes.threads import single_query

# Rows used to estimate the covariance: enough for a stable estimate of the leading axes, and bounded so that
# fitting takes about a second even at 2048-d (d² x rows multiply-adds) or a million rows.
_FIT_SAMPLE = 8192


class PCA(NamedTuple):
    """A fitted projection: ``reduced = (X - mean) @ components``."""

    mean: np.ndarray  # (d,) float32
    components: np.ndarray  # (d, r) float32, orthonormal columns, decreasing variance
    explained: np.ndarray  # (r,) float64 share of the total variance along each axis


def fit_pca(X: np.ndarray, n_components: int, seed: int = 0, sample: int = _FIT_SAMPLE) -> PCA:
    """Leading ``n_components`` principal axes of the rows of ``X`` (n, d) float32.

    The covariance is estimated from at most ``sample`` rows drawn with ``seed`` (all rows when fewer), centred
    in float64 and multiplied in float32 (BLAS), then decomposed in float64; ``n_components`` is capped at ``d``.
    Eigenvectors get a deterministic sign (largest coordinate positive): the same data gives the same axes.
    The eigendecomposition runs on one BLAS thread: LAPACK's tridiagonal reduction of a 1280 x 1280 matrix is
    memory-bound, and OpenBLAS' second thread waits for a core whenever the other one is busy (measured side by side
    on two shared cores, load 2.8: 0.44-0.45 s on one thread, 0.30-3.1 s on two; 0.6-0.9 against 2.5-4.6 s at
    load 8.5-9.4).
    """
    n, d = X.shape
    r = max(1, min(int(n_components), d))
    rows = X if n <= sample else X[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
    mean = np.asarray(rows, dtype=np.float64).mean(axis=0)
    centred = (rows - mean).astype(np.float32)
    covariance = (centred.T @ centred).astype(np.float64) / max(len(rows) - 1, 1)
    with single_query():  # BLAS on the calling thread only (reference counted, thread-safe)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:r]
    axes = eigenvectors[:, order]
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(r)])
    axes *= np.where(signs == 0, 1.0, signs)
    total = max(float(eigenvalues.clip(min=0).sum()), np.finfo(np.float64).tiny)
    return PCA(
        mean=mean.astype(np.float32),
        components=np.ascontiguousarray(axes, dtype=np.float32),
        explained=eigenvalues[order].clip(min=0) / total,
    )


def project(pca: PCA, X: np.ndarray) -> np.ndarray:
    """Coordinates of the rows of ``X`` (m, d) float32 on the axes: (m, r) float32 C-contiguous.

    Computed as ``X @ components - mean @ components`` so that no centred (m, d) copy of ``X`` is made.
    """
    reduced = np.asarray(X, dtype=np.float32) @ pca.components
    reduced -= pca.mean @ pca.components
    return np.ascontiguousarray(reduced, dtype=np.float32)


def truncate(pca: PCA, n_components: int) -> PCA:
    """The same projection onto its first ``n_components`` axes (the leading axes do not depend on how many are
    fitted, so one fit serves a hashing space and a larger scoring space)."""
    r = max(1, min(int(n_components), pca.components.shape[1]))
    return PCA(pca.mean, np.ascontiguousarray(pca.components[:, :r]), pca.explained[:r])


class Codebook(NamedTuple):
    """Scalar quantisation of reduced coordinates to uint8 codes, ``code = round((x - low) / step)``.

    One ``step`` for every axis (only the offsets differ), so the squared distance between a query in code units
    and a code is the squared distance in the reduced space divided by ``step²``: it ranks candidates the same
    way, up to the rounding (at most step/2 per coordinate), with a quarter of float32's bytes per coordinate.
    """

    low: np.ndarray  # (r,) float32 smallest indexed coordinate per axis
    step: float  # > 0: the widest axis' range / 255


def fit_codebook(reduced: np.ndarray) -> Codebook:
    """The codebook of the indexed coordinates ``reduced`` (n, r) float32: every row encodes without clipping."""
    low = reduced.min(axis=0).astype(np.float32)
    width = float((reduced.max(axis=0) - low).max()) if len(reduced) else 0.0
    return Codebook(low=low, step=max(width / 255.0, float(np.finfo(np.float32).tiny)))


def code_units(codebook: Codebook, reduced: np.ndarray) -> np.ndarray:
    """``(reduced - low) / step`` (m, r) float32 C-contiguous, unrounded: how queries are compared with codes."""
    return np.ascontiguousarray((reduced - codebook.low) / np.float32(codebook.step), dtype=np.float32)


def encode(codebook: Codebook, reduced: np.ndarray) -> np.ndarray:
    """uint8 codes (n, r) of ``reduced``; rows added after the fit that fall outside the range are clipped."""
    return np.clip(np.rint(code_units(codebook, reduced)), 0, 255).astype(np.uint8)
