"""Principal component analysis for the indexes: a reduced space to hash in and to score candidates in.

Projecting onto the top ``r`` principal axes is an orthogonal projection of the centred vectors, so the
Euclidean distance of two projections never exceeds their distance in the full space: a cheap lower bound
that keeps most of the distance when the eigen-spectrum decays (as it does for CNN features).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

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
    """
    n, d = X.shape
    r = max(1, min(int(n_components), d))
    rows = X if n <= sample else X[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
    mean = np.asarray(rows, dtype=np.float64).mean(axis=0)
    centred = (rows - mean).astype(np.float32)
    covariance = (centred.T @ centred).astype(np.float64) / max(len(rows) - 1, 1)
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
