"""One query's projection onto the principal axes in one numba call, without BLAS.

A single query of :class:`cbir.indexes.blocks.BlockPolytopeIndex` projects its d coordinates onto w principal axes
(d = 1280, w = 128 on the default collection: a 655 KB float32 matrix, read from memory that the previous queries
evicted). As a BLAS product of one row (numpy's ``(1, d) @ (d, w)``), then numpy's slicing and scaling, it cost
more than the rest of the query's hashing (issue 20: README, "Where one query's time goes"). Here the centred query
is dotted with the axes (rows of a (w, d) float32 matrix, four at a time: four independent sums per pass over the
query, 1.8x faster than one dot product at a time), and the code units are computed in the same call. The rotation
of the hashing coordinates, a (1, 48) @ (48, 512) product, stays in BLAS: done in this call too, it measured
slower end to end (though faster alone, with warm caches).

A batch keeps BLAS (:func:`query_spaces`): there the products are large and pack their matrices once for all rows.
Both compute the same float32 projection up to the order of the sums.
"""

from __future__ import annotations

import numpy as np

from cbir.indexes.kernels.common import _jit


@_jit(fastmath={"reassoc", "contract"})
def _project_one(query: np.ndarray, mean: np.ndarray, rows: np.ndarray, centred: np.ndarray, out: np.ndarray) -> None:
    """``out`` (w,) = (query - mean) @ rows.T for one query (d,) float32; ``centred`` (d,) is scratch.

    Four axes at a time: four independent sums per pass over the query (one dot product at a time is bound by the
    latency of its one chain of vector additions: 1.8x slower, measured)."""
    for j in range(query.shape[0]):
        centred[j] = query[j] - mean[j]
    w = rows.shape[0]
    quads = w - w % 4
    for c in range(0, quads, 4):
        a0, a1, a2, a3 = rows[c], rows[c + 1], rows[c + 2], rows[c + 3]
        t0 = t1 = t2 = t3 = np.float32(0.0)
        for j in range(centred.shape[0]):
            x = centred[j]
            t0 += x * a0[j]
            t1 += x * a1[j]
            t2 += x * a2[j]
            t3 += x * a3[j]
        out[c], out[c + 1], out[c + 2], out[c + 3] = t0, t1, t2, t3
    for c in range(quads, w):
        total = np.float32(0.0)
        for j in range(centred.shape[0]):
            total += centred[j] * rows[c, j]
        out[c] = total


@_jit()
def _one_query_spaces(
    query: np.ndarray,
    mean: np.ndarray,
    rows: np.ndarray,
    hashed_dim: int,
    low: np.ndarray,
    inverse_step: np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`query_spaces` for one query (d,): hashed (1, r) and units (1, s) float32."""
    projected = np.empty(rows.shape[0], dtype=np.float32)
    _project_one(query, mean, rows, np.empty(query.shape[0], dtype=np.float32), projected)
    hashed = np.empty((1, hashed_dim), dtype=np.float32)
    hashed[0] = projected[:hashed_dim]
    units = np.empty((1, low.shape[0]), dtype=np.float32)
    for c in range(low.shape[0]):
        units[0, c] = (projected[c] - low[c]) * inverse_step
    return hashed, units


def query_spaces(
    queries: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray],
    mean: np.ndarray,
    hashed_dim: int,
    low: np.ndarray,
    step: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The queries' hashing coordinates (m, r) and code units (m, s) float32, C-contiguous: one query in one numba
    call (``(x - mean) @ axes``), a batch through BLAS (``x @ axes - mean @ axes``, as
    :func:`cbir.indexes.pca.project`).

    Args:
        queries: (m, d) float32; mean: (d,) float32, the data's mean the axes are centred on.
        axes: the principal axes, (d, w) float32 and as rows (w, d) C-contiguous: ``(columns, rows)``; w >= r, s.
        hashed_dim: r, the leading axes hashed; low: (s,) float32 and step > 0, the codebook of the s scored axes
            (code units = (coordinate - low) / step).
    """
    columns, rows = axes
    inverse_step = np.float32(1.0 / step)
    if len(queries) == 1:
        return _one_query_spaces(queries[0], mean, rows, int(hashed_dim), low, inverse_step)
    projected = queries @ columns
    projected -= mean @ columns
    hashed = np.ascontiguousarray(projected[:, :hashed_dim])
    units = projected[:, : len(low)] - low
    units *= inverse_step
    return hashed, np.ascontiguousarray(units)
