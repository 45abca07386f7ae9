"""Query-directed multi-probe (Lv et al. 2007): the perturbation sequence, and the binary heaps it shares with
the top-k."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cbir.indexes.kernels.common import _jit

# Binary heaps over parallel (key, id) arrays, shared by the multi-probe min-heap (``largest_first=False``:
# smallest (cost, node) on top) and the top-k max-heap (``True``: the worst kept answer on top). Ties are
# broken by id in the same direction, so equal keys pop in id order.


@_jit()
def max_heap_nodes(n_probes: int, n_projections: int) -> int:
    """Capacity of the shift/expand heap: each pop pushes at most two sets."""
    return 2 * (4 * n_probes + 4 * n_projections + 8) + 1


@_jit(inline="always")
def _above(key_a, id_a, key_b, id_b, largest_first: bool) -> bool:
    """Whether (key_a, id_a) belongs above (key_b, id_b) in the heap."""
    if largest_first:
        return key_a > key_b or (key_a == key_b and id_a > id_b)
    return key_a < key_b or (key_a == key_b and id_a < id_b)


@_jit()
def _heap_push(keys, ids, size, key, item, largest_first):
    """Add (key, item) to a heap of ``size`` entries; returns the new size."""
    i = size
    keys[i] = key
    ids[i] = item
    while i > 0:
        parent = (i - 1) >> 1
        if not _above(keys[i], ids[i], keys[parent], ids[parent], largest_first):
            break
        keys[i], keys[parent] = keys[parent], keys[i]
        ids[i], ids[parent] = ids[parent], ids[i]
        i = parent
    return size + 1


@_jit()
def _heap_replace_top(keys, ids, size, key, item, largest_first):
    """Put (key, item) in place of the top entry and restore the heap order."""
    keys[0] = key
    ids[0] = item
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _above(keys[child + 1], ids[child + 1], keys[child], ids[child], largest_first):
            child += 1
        if not _above(keys[child], ids[child], keys[i], ids[i], largest_first):
            break
        keys[i], keys[child] = keys[child], keys[i]
        ids[i], ids[child] = ids[child], ids[i]
        i = child


@_jit()
def _heap_pop(keys, ids, size, largest_first):
    """Remove the top entry; returns (key, id, new size). The freed slot ``size - 1`` is left untouched."""
    key = keys[0]
    item = ids[0]
    size -= 1
    _heap_replace_top(keys, ids, size, keys[size], ids[size], largest_first)
    return key, item, size


class ProbeWorkspace(NamedTuple):
    """Scratch arrays of :func:`_perturbation_sets` (allocated once per worker by :func:`_probe_workspace`).

    With ``h = n_projections``, ``T = max(n_probes, 1)`` and ``c = max_heap_nodes(T, h)``.
    """

    single_cost: np.ndarray  # (2h,) float64 cost of moving one coordinate one slot
    single_coord: np.ndarray  # (2h,) int64 the coordinate moved
    single_delta: np.ndarray  # (2h,) int64 the move, -1 or +1
    heap_score: np.ndarray  # (c,) float64 min-heap of perturbation-set costs
    heap_node: np.ndarray  # (c,) int64 pool row of each heap entry
    pool: np.ndarray  # (c, 2h) int64 perturbation sets as indices into the sorted singles
    pool_size: np.ndarray  # (c,) int64 elements of each pool row
    coord_used: np.ndarray  # (h,) int64 all zero between sets
    out_deltas: np.ndarray  # (T, h) int64 the perturbation vectors found, cheapest first
    out_scores: np.ndarray  # (T,) float64 their costs


@_jit()
def _probe_workspace(n_probes: int, n_projections: int) -> ProbeWorkspace:
    """A :class:`ProbeWorkspace` for ``n_probes`` probes of tables of ``h = n_projections`` functions."""
    h = n_projections
    capacity = max_heap_nodes(n_probes, h)
    rows = max(n_probes, 1)
    return ProbeWorkspace(
        single_cost=np.empty(2 * h, dtype=np.float64),
        single_coord=np.empty(2 * h, dtype=np.int64),
        single_delta=np.empty(2 * h, dtype=np.int64),
        heap_score=np.empty(capacity, dtype=np.float64),
        heap_node=np.empty(capacity, dtype=np.int64),
        pool=np.empty((capacity, 2 * h), dtype=np.int64),
        pool_size=np.empty(capacity, dtype=np.int64),
        coord_used=np.zeros(h, dtype=np.int64),
        out_deltas=np.zeros((rows, h), dtype=np.int64),
        out_scores=np.zeros(rows, dtype=np.float64),
    )


@_jit()
def _perturbation_sets(fractions: np.ndarray, bucket_width: float, n_probes: int, workspace: ProbeWorkspace) -> int:
    """Write the ``n_probes`` cheapest valid perturbation vectors into ``workspace``; return how many.

    ``workspace`` is a :class:`ProbeWorkspace`; the vectors land in its ``out_deltas`` rows and their costs in
    ``out_scores``.
    """
    single_cost = workspace.single_cost
    single_coord = workspace.single_coord
    single_delta = workspace.single_delta
    heap_score = workspace.heap_score
    heap_node = workspace.heap_node
    pool = workspace.pool
    pool_size = workspace.pool_size
    coord_used = workspace.coord_used
    out_deltas = workspace.out_deltas
    out_scores = workspace.out_scores
    h = fractions.shape[0]
    n_single = 2 * h
    # costs of moving one coordinate one slot left (-1) or right (+1)
    for j in range(h):
        left = fractions[j] * bucket_width
        right = (1.0 - fractions[j]) * bucket_width
        single_cost[2 * j] = left * left
        single_coord[2 * j] = j
        single_delta[2 * j] = -1
        single_cost[2 * j + 1] = right * right
        single_coord[2 * j + 1] = j
        single_delta[2 * j + 1] = 1
    # stable insertion sort of the 2h singles by cost, in place (tiny arrays; no allocation per table)
    for a in range(1, n_single):
        cost, coord, delta = single_cost[a], single_coord[a], single_delta[a]
        b = a - 1
        while b >= 0 and single_cost[b] > cost:
            single_cost[b + 1], single_coord[b + 1], single_delta[b + 1] = (
                single_cost[b],
                single_coord[b],
                single_delta[b],
            )
            b -= 1
        single_cost[b + 1], single_coord[b + 1], single_delta[b + 1] = cost, coord, delta

    capacity = heap_score.shape[0]
    n_nodes = 1
    pool[0, 0] = 0
    pool_size[0] = 1
    size = _heap_push(heap_score, heap_node, 0, single_cost[0], 0, False)
    found = 0
    while found < n_probes and size > 0:
        score, node, size = _heap_pop(heap_score, heap_node, size, False)
        length = pool_size[node]
        # a set is valid when no coordinate is moved both ways (coord_used is all zero between sets)
        valid = True
        for e in range(length):
            c = single_coord[pool[node, e]]
            if coord_used[c]:
                valid = False
            coord_used[c] = 1
        for e in range(length):
            coord_used[single_coord[pool[node, e]]] = 0
        if valid:
            out_deltas[found, :] = 0
            for e in range(length):
                element = pool[node, e]
                out_deltas[found, single_coord[element]] = single_delta[element]
            out_scores[found] = score
            found += 1
        last = pool[node, length - 1]
        if last + 1 < n_single:
            if n_nodes + 2 > capacity:
                break  # capacity is sized so this does not happen for sane n_probes; stop rather than fail
            # grow 0 = shift (replace the largest element by the next one), 1 = expand (append the next one)
            for grow in range(2):
                for e in range(length):
                    pool[n_nodes, e] = pool[node, e]
                pool[n_nodes, length - 1 + grow] = last + 1
                pool_size[n_nodes] = length + grow
                if grow == 0:
                    child_score = score - single_cost[last] + single_cost[last + 1]
                else:
                    child_score = score + single_cost[last + 1]
                size = _heap_push(heap_score, heap_node, size, child_score, n_nodes, False)
                n_nodes += 1
    return found


@_jit()
def perturbation_sequence(fractions: np.ndarray, bucket_width: float, n_probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest ``n_probes`` perturbation vectors for one table, in increasing cost.

    Args:
        fractions: (h,) float64, position of the query inside each slot, in [0, 1).

    Returns:
        deltas (T, h) int64 in {-1, 0, 1} and their costs (T,) float64, ``T <= min(n_probes, 3**h - 1)``.
    """
    workspace = _probe_workspace(n_probes=n_probes, n_projections=fractions.shape[0])
    found = _perturbation_sets(fractions=fractions, bucket_width=bucket_width, n_probes=n_probes, workspace=workspace)
    return workspace.out_deltas[:found], workspace.out_scores[:found]
