"""E2LSH hashing: slot positions ``floor((p·a + b) / w)`` and their fold into one 64-bit key per table."""

from __future__ import annotations

import numpy as np
from numba import prange

from cbir.indexes.kernels.common import _KEY_SEED, _MIX_1, _MIX_2, _SHIFT_27, _SHIFT_30, _SHIFT_31, RowParallel, _jit


def draw_hash_functions(
    dim: int, n_tables: int, n_projections: int, bucket_width: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the ``g*h`` E2LSH functions: directions (dim, g*h) float32 ~ N(0, 1), offsets (g*h,) float64 ~ U[0, w)."""
    rng = np.random.default_rng(seed)
    n_functions = n_tables * n_projections
    directions = rng.standard_normal((dim, n_functions), dtype=np.float32)
    offsets = rng.uniform(0.0, bucket_width, size=n_functions)
    return directions, offsets


def slot_positions(projected: np.ndarray, offsets: np.ndarray, bucket_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer slot codes and fractional positions of projections.

    Args:
        projected: (m, g*h) float32, ``Q @ directions``.
        offsets: (g*h,) float64 ``b_i``.
        bucket_width: ``w``.

    Returns:
        codes (m, g*h) int64 ``floor((p·a + b) / w)`` and fractions (m, g*h) float64 in [0, 1), the position
        inside the slot (0 = on the left boundary), used by multi-probe.
    """
    scaled = (projected.astype(np.float64) + offsets) / bucket_width
    floored = np.floor(scaled)
    return floored.astype(np.int64), scaled - floored


@_jit(inline="always")
def _mix64(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> _SHIFT_30)) * _MIX_1
    x = (x ^ (x >> _SHIFT_27)) * _MIX_2
    return x ^ (x >> _SHIFT_31)


@_jit()
def _tuple_key(codes: np.ndarray, start: int, n_projections: int, deltas: np.ndarray) -> np.uint64:
    """Key of ``codes[start:start+h] + deltas`` (deltas may be all zero)."""
    key = _KEY_SEED
    for j in range(n_projections):
        key = _mix64(key ^ np.uint64(codes[start + j] + deltas[j]))
    return key


@RowParallel
def hash_keys(
    projected: np.ndarray, offsets: np.ndarray, bucket_width: float, n_tables: int, n_projections: int
) -> np.ndarray:
    """Bucket key of every object in every table.

    Args:
        projected: (n, g*h) float32 projections ``X @ directions``.
        offsets: (g*h,) float64.

    Returns:
        keys (g, n) uint64.
    """
    n = projected.shape[0]
    keys = np.empty((n_tables, n), dtype=np.uint64)
    for i in prange(n):
        for t in range(n_tables):
            key = _KEY_SEED
            for j in range(n_projections):
                col = t * n_projections + j
                code = np.int64(np.floor((np.float64(projected[i, col]) + offsets[col]) / bucket_width))
                key = _mix64(key ^ np.uint64(code))
            keys[t, i] = key
    return keys
