"""Cross-polytope LSH (Andoni et al. 2015; FALCONN): pseudo-random rotations, codes and multi-probe sequences."""

from __future__ import annotations

import numpy as np
from numba import prange

from cbir.indexes.kernels.common import RowParallel, _jit
from cbir.indexes.kernels.hashing import _tuple_key
from cbir.indexes.kernels.probing import _heap_pop, _heap_push
from cbir.indexes.kernels.topk import _n_chunks

# A cross-polytope hash of a vector x (zero-padded to D = 2^p coordinates) is the vertex ±e_j of the
# cross-polytope nearest to a random rotation y = R x: j = argmax |y_j|, code j if y_j > 0 else D + j. The
# rotation is FALCONN's pseudo-random one, ``n_rotations`` rounds of (random ±1 diagonal, then the normalised
# Walsh-Hadamard transform), O(D log D) per hash instead of D² for a Gaussian matrix. A table concatenates
# ``h`` hashes (function ``t*h + j``); the last one may use only the first ``last_dim`` rotated coordinates
# (codes in [0, 2*last_dim)) to tune the number of buckets between powers of two, as FALCONN does. The codes
# are folded into 64-bit bucket keys like E2LSH's (``_tuple_key`` with no deltas).
#
# Multi-probe (FALCONN): for one hash, the vertex ±e_j costs (max_i |y_i| ∓ y_j)², 0 for the hash itself; a
# probe's cost is the sum over its h hashes. The probing sequence is global over the tables: the cheapest
# probes of all tables, by a min-heap of partial probes; the popped one is completed at once with the cheapest
# vertex (cost 0) of each next hash, and each hash it passes pushes the alternative of its next-cheaper vertex.


def draw_rotation_signs(rotation_dim: int, n_functions: int, n_rotations: int, seed: int) -> np.ndarray:
    """The random diagonals of the pseudo-random rotations: (n_functions, n_rotations, rotation_dim) float32 ±1."""
    rng = np.random.default_rng(seed)
    return (2.0 * rng.integers(0, 2, size=(n_functions, n_rotations, rotation_dim)) - 1.0).astype(np.float32)


@_jit()
def _hadamard_in_place(x: np.ndarray) -> None:
    """Unnormalised fast Walsh-Hadamard transform of ``x`` (length a power of two), in place."""
    size = x.shape[0]
    half = 1
    while half < size:
        for start in range(0, size, 2 * half):
            for j in range(start, start + half):
                a = x[j]
                b = x[j + half]
                x[j] = a + b
                x[j + half] = a - b
        half *= 2


@_jit()
def _rotate(vector: np.ndarray, signs: np.ndarray, out: np.ndarray) -> None:
    """``out`` (D,) = the pseudo-random rotation (``signs`` (R, D)) of ``vector`` (d <= D,) zero-padded to D."""
    dim = vector.shape[0]
    size = out.shape[0]
    scale = np.float32(1.0 / np.sqrt(size))
    for j in range(dim):
        out[j] = vector[j]
    for j in range(dim, size):
        out[j] = 0.0
    for r in range(signs.shape[0]):
        for j in range(size):
            out[j] *= signs[r, j]
        _hadamard_in_place(out)
        for j in range(size):
            out[j] *= scale


@_jit()
def _nearest_vertex(rotated: np.ndarray, dim: int) -> tuple[int, np.float32]:
    """Cross-polytope code of ``rotated[:dim]`` (j for +e_j, dim + j for -e_j) and its largest |coordinate|."""
    best = rotated[0]
    code = 0
    if -rotated[0] > best:
        best = -rotated[0]
        code = dim
    for j in range(1, dim):
        value = rotated[j]
        if value > best:
            best = value
            code = j
        elif -value > best:
            best = -value
            code = dim + j
    return code, best


def rotation_matrix(signs: np.ndarray, dim: int) -> np.ndarray:
    """The pseudo-random rotations of ``signs`` (F, R, D) as one dense matrix (dim, F*D) float32 for vectors of
    ``dim <= D`` coordinates: row i holds the rotations of the unit vector e_i (the map is linear).

    Hashing then costs one BLAS product ``X @ matrix`` for all F functions, cheaper than F fast Hadamard transforms
    when ``dim`` is small (PCA coordinates); the rotation itself is FALCONN's HD3 (:func:`_rotate`).
    """
    n_functions, _, size = signs.shape
    matrix = np.empty((dim, n_functions * size), dtype=np.float32)
    _rotation_matrix(signs=signs, out=matrix)
    return matrix


@_jit()
def _rotation_matrix(signs: np.ndarray, out: np.ndarray) -> None:
    n_functions, _, size = signs.shape
    unit = np.zeros(out.shape[0], dtype=np.float32)
    rotated = np.empty(size, dtype=np.float32)
    for i in range(out.shape[0]):
        unit[i] = 1.0
        for f in range(n_functions):
            _rotate(unit, signs[f], rotated)
            out[i, f * size : (f + 1) * size] = rotated
        unit[i] = 0.0


@RowParallel
def rotate(vectors: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The pseudo-random rotations (n, F, D) float32 of the rows of ``vectors`` (n, d <= D) by fast Hadamard
    transforms: equal to ``vectors @ rotation_matrix(signs, d)`` up to rounding, cheaper when d is large."""
    n = vectors.shape[0]
    n_functions, _, size = signs.shape
    rotated = np.empty((n, n_functions, size), dtype=np.float32)
    for i in prange(n):
        for f in range(n_functions):
            _rotate(vectors[i], signs[f], rotated[i, f])
    return rotated


@RowParallel
def cross_polytope_codes(rotated: np.ndarray, n_projections: int, last_dim: int) -> np.ndarray:
    """Cross-polytope codes (n, F) int64 of rotated vectors (n, F, D) float32; function ``f`` with
    ``f % n_projections == n_projections - 1`` uses the first ``last_dim`` coordinates only."""
    n, n_functions, size = rotated.shape
    codes = np.empty((n, n_functions), dtype=np.int64)
    for i in prange(n):
        for f in range(n_functions):
            dim = last_dim if f % n_projections == n_projections - 1 else size
            codes[i, f], _ = _nearest_vertex(rotated[i, f], dim)
    return codes


@RowParallel
def fold_keys(codes: np.ndarray, n_tables: int, n_projections: int) -> np.ndarray:
    """Bucket keys (g, n) uint64 of integer codes (n, g*h) int64: the fold of :func:`hash_keys_reference`."""
    n = codes.shape[0]
    keys = np.empty((n_tables, n), dtype=np.uint64)
    zero_deltas = np.zeros(n_projections, dtype=np.int64)
    for i in prange(n):
        for t in range(n_tables):
            keys[t, i] = _tuple_key(codes[i], t * n_projections, n_projections, zero_deltas)
    return keys


# Vertices of each hash ranked before the probing starts; the rest are ranked when a probe reaches them.
_FIRST_VERTICES = 8


@_jit()
def _cheapest_vertices(
    vector: np.ndarray,
    dim: int,
    own: int,
    best: np.float32,
    kept_value: np.ndarray,
    out_codes: np.ndarray,
    out_costs: np.ndarray,
) -> None:
    """The ``len(out_codes)`` cheapest vertices of one hash (``vector[:dim]`` rotated, ``own`` its code and ``best``
    its largest |coordinate|), cheapest first (ties by code), and their costs; +inf costs past the 2·dim vertices.

    The cheapest vertices are those of the largest signed coordinates: they are kept sorted by insertion, and most
    coordinates fail the first comparison (a heap was 4x slower). ``kept_value`` is scratch space.
    """
    count = out_codes.shape[0]
    kept = 0
    for vertex in range(2 * dim):
        value = vector[vertex] if vertex < dim else -vector[vertex - dim]
        if kept == count and value <= kept_value[kept - 1]:
            continue
        position = kept if kept < count else count - 1
        while position > 0 and kept_value[position - 1] < value:
            kept_value[position] = kept_value[position - 1]
            out_codes[position] = out_codes[position - 1]
            position -= 1
        kept_value[position] = value
        out_codes[position] = vertex
        kept = min(kept + 1, count)
    for a in range(count):
        gap = np.float64(best) - np.float64(kept_value[a])
        out_costs[a] = gap * gap if a < kept else np.inf
    out_codes[0] = own  # the hash itself, cost 0 (also when |coordinates| tie)
    out_costs[0] = 0.0


def cross_polytope_probes(
    rotated: np.ndarray, n_tables: int, n_projections: int, last_dim: int, n_probes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_probes`` cheapest buckets of each query over all tables (FALCONN's multi-probe sequence).

    Args:
        rotated: (m, g*h, D) float32 rotated queries (``queries @ rotation_matrix``).
        n_probes: P >= 1 buckets per query; the first g (cost 0) are the query's own buckets, table by table.

    Returns:
        tables (m, P) int64, keys (m, P) uint64 and costs (m, P) float64, cheapest first (ties: the earlier node
        of the search); rows end with table -1 when fewer than P buckets exist.
    """
    m = rotated.shape[0]
    if m == 1:  # one query (a search engine's): one call, no parallel launch
        return _probe_one(rotated, n_tables, n_projections, last_dim, n_probes)
    out_tables = np.full((m, n_probes), -1, dtype=np.int64)
    out_keys = np.zeros((m, n_probes), dtype=np.uint64)
    out_costs = np.full((m, n_probes), np.inf, dtype=np.float64)
    _cross_polytope_probes(
        rotated=rotated,
        n_tables=n_tables,
        n_projections=n_projections,
        last_dim=last_dim,
        n_chunks=_n_chunks(m),
        out_tables=out_tables,
        out_keys=out_keys,
        out_costs=out_costs,
    )
    return out_tables, out_keys, out_costs


@_jit()
def _probe_one(
    rotated: np.ndarray, n_tables: int, n_projections: int, last_dim: int, n_probes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`cross_polytope_probes` of one query, its results allocated here (no numpy call from Python)."""
    out_tables = np.full((1, n_probes), -1, dtype=np.int64)
    out_keys = np.zeros((1, n_probes), dtype=np.uint64)
    out_costs = np.full((1, n_probes), np.inf, dtype=np.float64)
    _probe_queries(rotated, n_tables, n_projections, last_dim, 0, 1, out_tables, out_keys, out_costs)
    return out_tables, out_keys, out_costs


@RowParallel
def _cross_polytope_probes(
    rotated: np.ndarray,
    n_tables: int,
    n_projections: int,
    last_dim: int,
    n_chunks: int,
    out_tables: np.ndarray,
    out_keys: np.ndarray,
    out_costs: np.ndarray,
) -> None:
    """Parallel loop of :func:`cross_polytope_probes` (results written to ``out_*``; P = their columns)."""
    m = rotated.shape[0]
    for chunk in prange(n_chunks):
        _probe_queries(
            rotated, n_tables, n_projections, last_dim, chunk * m // n_chunks, (chunk + 1) * m // n_chunks,
            out_tables, out_keys, out_costs,
        )  # fmt: skip


@_jit()
def _probe_queries(
    rotated: np.ndarray,
    n_tables: int,
    n_projections: int,
    last_dim: int,
    first: int,
    stop: int,
    out_tables: np.ndarray,
    out_keys: np.ndarray,
    out_costs: np.ndarray,
) -> None:
    """The probing sequences of the queries ``first .. stop - 1`` in the calling thread (scratch space allocated
    once for them)."""
    _, n_functions, size = rotated.shape
    n_probes = out_tables.shape[1]
    h = n_projections
    # a probe using the a-th cheapest vertex of one hash comes after a probes of its table and g - 1 of the others
    alternatives = max(1, min(2 * size, n_probes - n_tables + 1))
    capacity = 2 * (h + 1) * (n_probes + n_tables) + 8
    kept_value = np.empty(alternatives, dtype=np.float32)
    requested = np.zeros(n_functions, dtype=np.int64)
    alt_code = np.zeros((n_functions, alternatives), dtype=np.int64)
    alt_cost = np.full((n_functions, alternatives), np.inf, dtype=np.float64)
    heap_score = np.empty(capacity, dtype=np.float64)
    heap_node = np.empty(capacity, dtype=np.int64)
    node_table = np.empty(capacity, dtype=np.int64)
    node_hash = np.empty(capacity, dtype=np.int64)
    node_rank = np.empty(capacity, dtype=np.int64)
    node_choice = np.zeros((capacity, h), dtype=np.int64)
    choice = np.zeros(h, dtype=np.int64)
    codes = np.empty(h, dtype=np.int64)
    zero_deltas = np.zeros(h, dtype=np.int64)
    for i in range(first, stop):
        for f in range(n_functions):
            vector = rotated[i, f]
            dim = last_dim if f % h == h - 1 else size
            own, best = _nearest_vertex(vector, dim)
            # few probes ever reach past a hash's first vertices: rank a few now, more on demand (below)
            requested[f] = min(alternatives, _FIRST_VERTICES)
            _cheapest_vertices(
                vector=vector,
                dim=dim,
                own=own,
                best=best,
                kept_value=kept_value,
                out_codes=alt_code[f, : requested[f]],
                out_costs=alt_cost[f, : requested[f]],
            )
        size_heap = 0
        n_nodes = 0
        for t in range(n_tables):
            node_table[n_nodes] = t
            node_hash[n_nodes] = 0
            node_rank[n_nodes] = 0
            size_heap = _heap_push(heap_score, heap_node, size_heap, 0.0, n_nodes, False)
            n_nodes += 1
        found = 0
        while found < n_probes and size_heap > 0 and n_nodes + h <= capacity:  # (sized never to fill up)
            score, node, size_heap = _heap_pop(heap_score, heap_node, size_heap, False)
            t = node_table[node]
            hash_index = node_hash[node]
            rank = node_rank[node]
            for j in range(hash_index):
                choice[j] = node_choice[node, j]
            # the popped partial probe, completed with the cheapest vertex (cost 0) of each next hash, is the cheapest
            # probe left: walk down to it at once, pushing at each hash the alternative of its next-cheaper vertex
            # (a node per hash through the heap gave the same sequence but for exact ties of cost)
            while True:
                f = t * h + hash_index
                if rank + 1 == requested[f] and requested[f] < alternatives:
                    # the vertices of this hash ranked so far are used up: rank twice as many (those ranked keep their
                    # order; ranking all the alternatives at once, an insertion sort into up to P - g + 1 places,
                    # took 14-19 % of the probing: 21.7 -> 18.7 us a query at P = 72, README, issue 20)
                    dim = last_dim if f % h == h - 1 else size
                    own, best = _nearest_vertex(rotated[i, f], dim)
                    requested[f] = min(alternatives, 2 * requested[f])
                    _cheapest_vertices(
                        vector=rotated[i, f],
                        dim=dim,
                        own=own,
                        best=best,
                        kept_value=kept_value,
                        out_codes=alt_code[f, : requested[f]],
                        out_costs=alt_cost[f, : requested[f]],
                    )
                if rank + 1 < requested[f] and alt_cost[f, rank + 1] < np.inf:
                    # the same hash, its next-cheaper vertex
                    node_table[n_nodes] = t
                    node_hash[n_nodes] = hash_index
                    node_rank[n_nodes] = rank + 1
                    for j in range(hash_index):
                        node_choice[n_nodes, j] = choice[j]
                    child = score - alt_cost[f, rank] + alt_cost[f, rank + 1]
                    size_heap = _heap_push(heap_score, heap_node, size_heap, child, n_nodes, False)
                    n_nodes += 1
                choice[hash_index] = rank
                if hash_index == h - 1:
                    break
                hash_index += 1
                rank = 0
            for j in range(h):
                codes[j] = alt_code[t * h + j, choice[j]]
            out_tables[i, found] = t
            out_keys[i, found] = _tuple_key(codes, 0, h, zero_deltas)
            out_costs[i, found] = score
            found += 1
