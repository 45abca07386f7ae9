"""One query of the bucket-ordered cross-polytope index in one numba call: projection, rotations, probing sequence,
blocks and exact re-rank.

Answering one query at a time (a search engine's mode, issue 20), each Python-level step of a query — a BLAS call,
a numba dispatch, a numpy allocation — runs on caches that the previous queries (or other jobs) evicted, and costs
several microseconds then. Here the whole query is one call: the projection of :mod:`.projection`, the rotations of
its hashing coordinates (the dense matrix when the index has one, else the fast transforms), the probing sequence of
:mod:`.polytope` and the block search of :mod:`.blocks`, each the same code the batch path runs. Measured side by
side with the same index making those calls one by one (load ~6): 0.224 → 0.169 ms a query (README, issue 20).
"""

from __future__ import annotations

import numpy as np

from cbir.indexes.kernels.blocks import _block_one
from cbir.indexes.kernels.common import BucketTables, _jit
from cbir.indexes.kernels.polytope import _probe_one, _rotate
from cbir.indexes.kernels.projection import _one_query_spaces
from cbir.indexes.kernels.sketch import query_code


@_jit(fastmath={"reassoc", "contract"})
def _rotate_dense(hashed: np.ndarray, rotation: np.ndarray, out: np.ndarray) -> None:
    """``out`` (F,) = hashed (r,) @ rotation (r, F): one row of the matrix at a time (a vectorised update)."""
    out[:] = 0.0
    for j in range(rotation.shape[0]):
        value = hashed[j]
        row = rotation[j]
        for f in range(row.shape[0]):
            out[f] += value * row[f]


@_jit()
def one_block_query(
    query: np.ndarray,
    mean: np.ndarray,
    rows: np.ndarray,
    hashed_dim: int,
    low: np.ndarray,
    inverse_step: np.float32,
    zero: np.ndarray,
    rotation: np.ndarray,
    signs: np.ndarray,
    n_tables: int,
    n_projections: int,
    last_dim: int,
    n_probes: int,
    data: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    k: int,
    rerank: int,
    stamp: bool,
    patience: int,
    metric: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One query's search of :class:`cbir.indexes.blocks.BlockPolytopeIndex`.

    Args:
        query: (1, d) float32 (a unit row for cosine); mean, rows, hashed_dim, low, inverse_step: the projection
            (:func:`cbir.indexes.kernels.projection.query_spaces`), whose first r = ``hashed_dim`` coordinates are
            hashed: rotated by ``rotation`` (r, G·D) float32, the dense rotations, or, when it has no rows, by the
            fast transforms of ``signs`` (G, R, D).
        zero: (s,) float32 the centre in code units (``-low / step``): where uint64 ``codes`` (sign sketches,
            :mod:`cbir.indexes.kernels.sketch`) put a bit; unused with uint8 codes.
        n_tables, n_projections, last_dim, n_probes: the probing sequence
            (:func:`cbir.indexes.kernels.polytope.cross_polytope_probes`).
        data, codes, tables, k, rerank, stamp, patience, metric: :func:`cbir.indexes.kernels.blocks.block_search`'s.

    Returns:
        scores (1, k) float32, ids (1, k) int64, visited (1,) int64, as :func:`block_search`.
    """
    n_functions, _, size = signs.shape
    dense = rotation.shape[0] > 0
    hashed, units = _one_query_spaces(query[0], mean, rows, hashed_dim, low, inverse_step)
    rotated = np.empty((1, n_functions, size), dtype=np.float32)
    if dense:
        _rotate_dense(hashed[0], rotation, rotated[0].reshape(n_functions * size))
    else:
        for f in range(n_functions):
            _rotate(hashed[0], signs[f], rotated[0, f])
    probe_tables, probe_keys, _ = _probe_one(rotated, n_tables, n_projections, last_dim, n_probes)
    scored_as = query_code(units, zero, codes)  # the units, or the query's sketch
    return _block_one(
        query, data, scored_as, codes, tables, probe_tables, probe_keys, k, rerank, stamp, patience, metric
    )  # fmt: skip
