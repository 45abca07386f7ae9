"""numba kernels for exact re-ranking and the E2LSH index, with pure-numpy references.

Everything here takes and returns plain numpy arrays; the classes in :mod:`cbir.indexes.base` own validation and
state. The numpy ``*_reference`` functions implement the same algorithms the slow, obvious way and exist
so that tests can assert the numba kernels return the same keys, buckets, candidates and top-k answers.

Hashing (Datar et al., E2LSH; the paper's Section 3)
    ``h_i(p) = floor((p · a_i + b_i) / w)`` with ``a_i ~ N(0, I)`` and ``b_i ~ U[0, w)``. Table ``t`` uses
    the ``h`` consecutive hash functions ``t*h .. t*h + h - 1``. The matrix product ``X @ A`` for all
    ``g*h`` functions is done once with BLAS (float32); the affine shift, division and floor are done in
    float64 so that the same projection always lands in the same slot.

Bucket keys
    The ``h`` integer codes of a table are folded into one 64-bit key with the splitmix64 finaliser
    (``key = mix(key XOR code)`` per code). Each step is a bijection of the running state, so two tuples
    collide only by a chance 64-bit coincidence (~``n_buckets² / 2**65`` per table: about 1e-10 for a
    million buckets). A collision can only *add* candidates to a query (they are re-ranked exactly), never
    lose one, so it costs a little time, not correctness.

Bucket layout (CSR, per table)
    ``table_offsets`` (g+1,) slices ``bucket_keys`` (sorted unique keys of each table) and
    ``bucket_starts`` (n_buckets+1,) slices ``bucket_ids`` (g*n,): the ids of one bucket, ascending.

Candidate phase
    The ids of the probed buckets are deduplicated with a per-worker bitmap (n/64 words) and read back in
    ascending id order (sorted when few, off the bitmap when many), so rows are fetched in memory order.
    Optionally (``ProbeArgs.min_collisions = c > 1``) only ids found in at least c probed buckets are kept
    (collision counting). Optionally (:class:`Shortlist`) every candidate is first scored in a small space
    (PCA coordinates) and only the best ``size`` are ranked exactly, best first, stopping early when the small
    space gives a lower bound that no remaining candidate can beat.

Cross-polytope LSH (FALCONN; :mod:`cbir.indexes.polytope`)
    Hashes are the nearest cross-polytope vertices of pseudo-random rotations (see the section's comment); their
    codes are folded into the same keys and tables, and the query's probing sequence, computed outside the search
    kernel, is passed to it as (table, key) pairs (:class:`ListedProbes`).

Multi-probe (Lv et al., VLDB 2007, query-directed probing)
    For slot coordinate ``j`` with fractional position ``f_j`` inside its slot, moving to the left
    neighbour costs ``(f_j*w)²`` and to the right one ``((1-f_j)*w)²``. Perturbation sets are generated
    in increasing total cost with the min-heap *shift/expand* method over the ``2h`` sorted single
    perturbations; sets that move one coordinate both ways are skipped.
"""

from __future__ import annotations

import functools
import itertools
import types
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from cbir.indexes import threads

METRIC_EUCLIDEAN = 0
METRIC_COSINE = 1
METRIC_CODES = {"euclidean": METRIC_EUCLIDEAN, "cosine": METRIC_COSINE}

# nogil: a kernel that runs for seconds (a 1M build, a batch search) leaves the GIL to the app's other threads (the
# progress bar's clock, the server's event loop); cache: compiled once per machine, loaded from disk after that.
_jit = functools.partial(njit, cache=True, nogil=True)


class RowParallel:
    """A kernel parallel over rows (``prange``) and its serial twin, compiled from the same source without
    ``parallel``: a call inside :func:`cbir.indexes.threads.single_query` runs the twin, which enters no parallel
    region (so wakes no worker thread); other calls run the parallel kernel. The twin is a copy of the function
    under its own name, so that numba's on-disk cache keeps the two compilations apart."""

    def __init__(self, function: Callable[..., object]) -> None:
        self.parallel = _jit(parallel=True)(function)
        twin = types.FunctionType(
            function.__code__, function.__globals__, f"{function.__name__}_serial", function.__defaults__
        )
        twin.__qualname__ = f"{function.__qualname__}_serial"
        twin.__doc__ = function.__doc__
        self.serial = _jit()(twin)
        functools.update_wrapper(self, function)

    def __call__(self, *args: object, **kwargs: object) -> object:
        kernel = self.serial if threads.in_single_query() else self.parallel
        return kernel(*args, **kwargs)


_KEY_SEED = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_SHIFT_30 = np.uint64(30)
_SHIFT_27 = np.uint64(27)
_SHIFT_31 = np.uint64(31)


class BucketTables(NamedTuple):
    """CSR bucket layout of ``g`` hash tables over ``n`` objects (see module docstring)."""

    table_offsets: np.ndarray  # (g+1,) int64 into bucket_keys
    bucket_keys: np.ndarray  # (n_buckets,) uint64, sorted within each table
    bucket_starts: np.ndarray  # (n_buckets+1,) int64 into bucket_ids
    bucket_ids: np.ndarray  # (g*n,) int64, ascending within each bucket


# ----------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------


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


def hash_keys_reference(codes: np.ndarray, n_tables: int, n_projections: int) -> np.ndarray:
    """numpy version of the key fold: codes (n, g*h) int64 -> keys (g, n) uint64."""
    n = codes.shape[0]
    keys = np.full((n_tables, n), _KEY_SEED, dtype=np.uint64)
    as_unsigned = codes.astype(np.uint64)  # two's complement wrap, as in the kernel
    for t in range(n_tables):
        for j in range(n_projections):
            x = keys[t] ^ as_unsigned[:, t * n_projections + j]
            x = (x ^ (x >> _SHIFT_30)) * _MIX_1
            x = (x ^ (x >> _SHIFT_27)) * _MIX_2
            keys[t] = x ^ (x >> _SHIFT_31)
    return keys


# ----------------------------------------------------------------------------------------------------------
# Bucket tables
# ----------------------------------------------------------------------------------------------------------


@RowParallel
def _build_tables(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_tables, n = keys.shape
    order = np.empty((n_tables, n), dtype=np.int64)
    n_unique = np.zeros(n_tables, dtype=np.int64)
    for t in prange(n_tables):
        row = keys[t]
        sorted_ids = np.argsort(row, kind="mergesort")  # stable: ids ascending inside a bucket
        order[t] = sorted_ids
        count = 1 if n > 0 else 0
        for i in range(1, n):
            if row[sorted_ids[i]] != row[sorted_ids[i - 1]]:
                count += 1
        n_unique[t] = count
    table_offsets = np.zeros(n_tables + 1, dtype=np.int64)
    for t in range(n_tables):
        table_offsets[t + 1] = table_offsets[t] + n_unique[t]
    n_buckets = table_offsets[n_tables]
    bucket_keys = np.empty(n_buckets, dtype=np.uint64)
    bucket_starts = np.empty(n_buckets + 1, dtype=np.int64)
    bucket_starts[n_buckets] = n_tables * n
    bucket_ids = np.empty(n_tables * n, dtype=np.int64)
    for t in prange(n_tables):
        row = keys[t]
        bucket = table_offsets[t] - 1
        for i in range(n):
            obj = order[t, i]
            bucket_ids[t * n + i] = obj
            if i == 0 or row[obj] != row[order[t, i - 1]]:
                bucket += 1
                bucket_keys[bucket] = row[obj]
                bucket_starts[bucket] = t * n + i
    return table_offsets, bucket_keys, bucket_starts, bucket_ids


def build_tables(keys: np.ndarray) -> BucketTables:
    """Group objects by key into the CSR layout; keys (g, n) uint64 (numba, parallel over tables)."""
    return BucketTables(*_build_tables(np.ascontiguousarray(keys, dtype=np.uint64)))


def build_tables_in_steps(keys: np.ndarray, step: Callable[[int], None]) -> BucketTables:
    """:func:`build_tables` a few tables at a time (as many as numba has threads), calling ``step(tables done)``
    after each group, then joined: the same arrays, with progress for a long build (7 tables of 1M objects take
    ~7 s on two cores)."""
    n_tables, n = keys.shape
    group = max(1, numba.get_num_threads())
    offsets, bucket_keys, starts, ids = [np.zeros(1, dtype=np.int64)], [], [], []
    for first in range(0, n_tables, group):
        part = build_tables(keys[first : first + group])
        offsets.append(part.table_offsets[1:] + offsets[-1][-1])
        bucket_keys.append(part.bucket_keys)
        starts.append(part.bucket_starts[:-1] + first * n)  # positions in the joined bucket_ids
        ids.append(part.bucket_ids)
        step(min(first + group, n_tables))
    starts.append(np.array([n_tables * n], dtype=np.int64))
    return BucketTables(
        np.concatenate(offsets).astype(np.int64),
        np.concatenate(bucket_keys),
        np.concatenate(starts).astype(np.int64),
        np.concatenate(ids),
    )


def build_tables_reference(keys: np.ndarray) -> BucketTables:
    """numpy version of :func:`build_tables` (same arrays)."""
    n_tables, n = keys.shape
    table_offsets = [0]
    all_keys, all_starts, all_ids = [], [], []
    for t in range(n_tables):
        order = np.argsort(keys[t], kind="stable")
        unique, first = np.unique(keys[t][order], return_index=True)
        all_keys.append(unique)
        all_starts.append(first + t * n)
        all_ids.append(order)
        table_offsets.append(table_offsets[-1] + len(unique))
    return BucketTables(
        np.asarray(table_offsets, dtype=np.int64),
        np.concatenate(all_keys).astype(np.uint64),
        np.append(np.concatenate(all_starts), n_tables * n).astype(np.int64),
        np.concatenate(all_ids).astype(np.int64),
    )


@_jit()
def _merge_table(
    bucket_keys: np.ndarray,
    bucket_starts: np.ndarray,
    bucket_ids: np.ndarray,
    lo: int,
    hi: int,
    new_keys: np.ndarray,
    order: np.ndarray,
    n_old: int,
    out_keys: np.ndarray,
    out_starts: np.ndarray,
    out_ids: np.ndarray,
    bucket: int,
    position: int,
    write: bool,
) -> int:
    """Merge the old buckets ``bucket_keys[lo:hi]`` of one table with the new objects (keys ``new_keys``, visited in
    ``order``: keys ascending, ids ascending among equal keys; ids ``n_old + j``). With ``write`` the merged buckets
    are written from ``out_keys[bucket]`` / ``out_ids[position]``. Returns the number of merged buckets."""
    m = len(new_keys)
    i = lo
    j = 0
    count = 0
    while i < hi or j < m:
        if j >= m or (i < hi and bucket_keys[i] < new_keys[order[j]]):
            key = bucket_keys[i]
            take_old = True
            take_new = False
        elif i >= hi or new_keys[order[j]] < bucket_keys[i]:
            key = new_keys[order[j]]
            take_old = False
            take_new = True
        else:
            key = bucket_keys[i]
            take_old = True
            take_new = True
        if write:
            out_keys[bucket + count] = key
            out_starts[bucket + count] = position
            if take_old:
                for p in range(bucket_starts[i], bucket_starts[i + 1]):
                    out_ids[position] = bucket_ids[p]
                    position += 1
        if take_old:
            i += 1
        if take_new:
            while j < m and new_keys[order[j]] == key:
                if write:
                    out_ids[position] = n_old + order[j]
                    position += 1
                j += 1
        count += 1
    return count


@_jit()
def _merge_tables(
    table_offsets: np.ndarray,
    bucket_keys: np.ndarray,
    bucket_starts: np.ndarray,
    bucket_ids: np.ndarray,
    new_keys: np.ndarray,
    n_old: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_tables, m = new_keys.shape
    n = n_old + m
    orders = np.empty((n_tables, m), dtype=np.int64)
    out_offsets = np.zeros(n_tables + 1, dtype=np.int64)
    empty_keys = np.empty(0, dtype=np.uint64)
    empty_ids = np.empty(0, dtype=np.int64)
    for t in range(n_tables):
        orders[t] = np.argsort(new_keys[t], kind="mergesort")  # stable: new ids ascending inside a bucket
        found = _merge_table(
            bucket_keys, bucket_starts, bucket_ids, table_offsets[t], table_offsets[t + 1], new_keys[t], orders[t],
            n_old, empty_keys, empty_ids, empty_ids, 0, 0, False,
        )  # fmt: skip
        out_offsets[t + 1] = out_offsets[t] + found
    n_buckets = out_offsets[n_tables]
    out_keys = np.empty(n_buckets, dtype=np.uint64)
    out_starts = np.empty(n_buckets + 1, dtype=np.int64)
    out_starts[n_buckets] = n_tables * n
    out_ids = np.empty(n_tables * n, dtype=np.int64)
    for t in range(n_tables):
        _merge_table(
            bucket_keys, bucket_starts, bucket_ids, table_offsets[t], table_offsets[t + 1], new_keys[t], orders[t],
            n_old, out_keys, out_starts, out_ids, out_offsets[t], t * n, True,
        )  # fmt: skip
    return out_offsets, out_keys, out_starts, out_ids


def merge_tables(tables: BucketTables, new_keys: np.ndarray, n_old: int) -> BucketTables:
    """The buckets of ``n_old`` objects (``tables``) plus ``m`` new objects with ids ``n_old .. n_old+m-1`` and
    keys ``new_keys`` (g, m) uint64: the same arrays :func:`build_tables` gives for the concatenated keys, in one
    merge pass per table (the old objects are not re-hashed, their buckets are copied in order)."""
    return BucketTables(*_merge_tables(*tables, np.ascontiguousarray(new_keys, dtype=np.uint64), np.int64(n_old)))


def table_keys_reference(tables: BucketTables, n: int) -> np.ndarray:
    """numpy: the (g, n) key of every object in every table, read back from the CSR layout."""
    n_tables = len(tables.table_offsets) - 1
    keys = np.zeros((n_tables, n), dtype=np.uint64)
    for t in range(n_tables):
        for bucket in range(tables.table_offsets[t], tables.table_offsets[t + 1]):
            ids = tables.bucket_ids[tables.bucket_starts[bucket] : tables.bucket_starts[bucket + 1]]
            keys[t, ids] = tables.bucket_keys[bucket]
    return keys


def merge_tables_reference(tables: BucketTables, new_keys: np.ndarray, n_old: int) -> BucketTables:
    """numpy version of :func:`merge_tables`: rebuild from all keys."""
    return build_tables_reference(np.concatenate([table_keys_reference(tables, n_old), new_keys], axis=1))


@_jit()
def _find_bucket(bucket_keys: np.ndarray, lo: int, hi: int, key: np.uint64) -> int:
    """Index of ``key`` in the sorted slice ``bucket_keys[lo:hi]``, or -1.

    (An interpolation search, the keys being uniform 64-bit hashes, was measured slower: its reads depend on
    each other, while the first levels of a binary search stay in cache across queries.)
    """
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if bucket_keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and bucket_keys[lo] == key:
        return lo
    return -1


# ----------------------------------------------------------------------------------------------------------
# Multi-probe perturbation sequence
# ----------------------------------------------------------------------------------------------------------


@_jit()
def max_heap_nodes(n_probes: int, n_projections: int) -> int:
    """Capacity of the shift/expand heap: each pop pushes at most two sets."""
    return 2 * (4 * n_probes + 4 * n_projections + 8) + 1


# Binary heaps over parallel (key, id) arrays, shared by the multi-probe min-heap (``largest_first=False``:
# smallest (cost, node) on top) and the top-k max-heap (``True``: the worst kept answer on top). Ties are
# broken by id in the same direction, so equal keys pop in id order.


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


def perturbation_sequence_reference(
    fractions: np.ndarray, bucket_width: float, n_probes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over all ``3**h - 1`` perturbation vectors, sorted by cost (for tests; small h only)."""
    left = (np.asarray(fractions, dtype=np.float64) * bucket_width) ** 2
    right = ((1.0 - np.asarray(fractions, dtype=np.float64)) * bucket_width) ** 2
    vectors = np.array([v for v in itertools.product((-1, 0, 1), repeat=len(fractions)) if any(v)], dtype=np.int64)
    costs = np.where(vectors < 0, left, 0.0).sum(axis=1) + np.where(vectors > 0, right, 0.0).sum(axis=1)
    order = np.argsort(costs, kind="stable")[:n_probes]
    return vectors[order], costs[order]


# ----------------------------------------------------------------------------------------------------------
# Distances and top-k
# ----------------------------------------------------------------------------------------------------------

# Only the reductions allow reassociation: it lets LLVM vectorise the sum (about 8x faster on AVX2/AVX-512),
# changing results in the last bits only. Everything else is compiled with strict IEEE semantics.

# Squared distances are summed in blocks of this many coordinates, so that a candidate whose partial sum
# already exceeds the current k-th best can be dropped without reading the rest of its row.
_DISTANCE_BLOCK = 256


@_jit(fastmath={"reassoc"})
def _squared_l2_range(a: np.ndarray, b: np.ndarray, start: int, stop: int) -> np.float32:
    # slices, not ``range(start, stop)`` indices: with an index of unknown sign numba emits wrap-around
    # handling for negative indices, which stops LLVM from vectorising the loop (3x slower)
    a_part = a[start:stop]
    b_part = b[start:stop]
    total = np.float32(0.0)
    for j in range(a_part.shape[0]):
        diff = a_part[j] - b_part[j]
        total += diff * diff
    return total


@_jit()
def _squared_l2(a: np.ndarray, b: np.ndarray, bound: np.float32) -> np.float32:
    """Squared distance, summed block by block in a fixed order.

    Stops early once the running sum exceeds ``bound`` and returns that partial sum: the remaining terms
    are non-negative and float addition is monotone, so the full sum would exceed ``bound`` too. The value
    returned when it does not stop early does not depend on ``bound``.
    """
    dim = a.shape[0]
    total = np.float32(0.0)
    for start in range(0, dim, _DISTANCE_BLOCK):
        total += _squared_l2_range(a, b, start, min(start + _DISTANCE_BLOCK, dim))
        if total > bound:
            break
    return total


@_jit(fastmath={"reassoc"})
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


@_jit()
def _ranking_key(query: np.ndarray, row: np.ndarray, metric: int, bound: np.float32) -> np.float32:
    """Smaller is better: squared distance, or minus the similarity for cosine (unit vectors).

    A euclidean key larger than ``bound`` may be returned as any value larger than ``bound`` (early exit).
    """
    if metric == METRIC_EUCLIDEAN:
        return _squared_l2(query, row, bound)
    return -_dot(query, row)


@_jit()
def _rerank_into(
    query: np.ndarray,
    data: np.ndarray,
    candidates: np.ndarray,
    metric: int,
    top_key: np.ndarray,
    top_id: np.ndarray,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """Exact top-k of ``candidates`` for one query, best first, ties by id; unused slots keep -1 / ±inf.

    ``top_key`` / ``top_id`` (k,) are scratch space for a max-heap of the k best (key, id) pairs seen.
    """
    k = out_ids.shape[0]
    size = 0
    bound = np.float32(np.inf)  # the k-th best key once the heap is full: worse candidates are dropped
    for c in range(candidates.shape[0]):
        obj = candidates[c]
        key = _ranking_key(query, data[obj], metric, bound)
        if size < k:
            size = _heap_push(top_key, top_id, size, key, obj, True)
        elif _above(top_key[0], top_id[0], key, obj, True):
            _heap_replace_top(top_key, top_id, size, key, obj, True)
        if size == k:
            bound = top_key[0]
    # pop the max-heap from the back so the output is ascending by (key, id)
    for position in range(size - 1, -1, -1):
        key, obj, _ = _heap_pop(top_key, top_id, position + 1, True)
        out_ids[position] = obj
        out_scores[position] = np.sqrt(key) if metric == METRIC_EUCLIDEAN else -key


def _empty_results(m: int, k: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
    fill = np.inf if metric == METRIC_EUCLIDEAN else -np.inf
    return np.full((m, k), fill, dtype=np.float32), np.full((m, k), -1, dtype=np.int64)


@RowParallel
def _rerank_kernel(
    queries: np.ndarray,
    data: np.ndarray,
    cand_offsets: np.ndarray,
    cand_ids: np.ndarray,
    metric: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """Parallel loop of :func:`rerank_candidates` (arguments as there; results written to ``out_*``)."""
    m = queries.shape[0]
    k = out_ids.shape[1]
    for chunk in prange(n_chunks):
        top_key = np.empty(k, dtype=np.float32)
        top_id = np.empty(k, dtype=np.int64)
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            candidates = cand_ids[cand_offsets[i] : cand_offsets[i + 1]]
            _rerank_into(
                query=queries[i],
                data=data,
                candidates=candidates,
                metric=metric,
                top_key=top_key,
                top_id=top_id,
                out_scores=out_scores[i],
                out_ids=out_ids[i],
            )


def _n_chunks(m: int) -> int:
    """Work items of a parallel loop over m queries: a few per thread balances uneven candidate counts,
    and per-item scratch space is allocated once per item, not once per query."""
    return min(m, 4 * numba.get_num_threads())


def rerank_candidates(
    queries: np.ndarray, data: np.ndarray, cand_offsets: np.ndarray, cand_ids: np.ndarray, k: int, metric: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among per-query candidate lists (CSR), parallel over queries.

    Args:
        queries: (m, d) float32; data: (n, d) float32 (unit rows for cosine).
        cand_offsets: (m+1,) int64; cand_ids: (total,) int64 — candidates of query i are
            ``cand_ids[cand_offsets[i]:cand_offsets[i+1]]``.

    Returns:
        scores (m, k) float32 (distance ascending, or similarity descending) and ids (m, k) int64, padded
        with -1 / +inf (euclidean) or -inf (cosine).
    """
    m = queries.shape[0]
    scores, ids = _empty_results(m, k, metric)
    _rerank_kernel(
        queries=queries,
        data=data,
        cand_offsets=cand_offsets,
        cand_ids=cand_ids,
        metric=metric,
        n_chunks=_n_chunks(m),
        out_scores=scores,
        out_ids=ids,
    )
    return scores, ids


# ----------------------------------------------------------------------------------------------------------
# Cross-polytope LSH (Andoni, Indyk, Laarhoven, Razenshteyn, Schmidt, NIPS 2015; FALCONN)
# ----------------------------------------------------------------------------------------------------------
#
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
# probes of all tables, by a min-heap that extends a partial probe either with the next-cheaper vertex of its
# current hash or by fixing it and moving to the next hash (whose cheapest vertex costs 0).


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


def rotations_reference(vectors: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """numpy version of ``vectors @ rotation_matrix(signs, d)`` with a dense Hadamard matrix: (n, F, D) float64."""
    n_functions, n_rotations, size = signs.shape
    hadamard = np.ones((1, 1))
    while hadamard.shape[0] < size:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    hadamard /= np.sqrt(size)
    padded = np.zeros((len(vectors), size))
    padded[:, : vectors.shape[1]] = vectors
    rotated = np.empty((len(vectors), n_functions, size))
    for f in range(n_functions):
        y = padded
        for r in range(n_rotations):
            y = (y * signs[f, r]) @ hadamard
        rotated[:, f] = y
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


def cross_polytope_codes_reference(rotated: np.ndarray, n_projections: int, last_dim: int) -> np.ndarray:
    """numpy version of :func:`cross_polytope_codes`."""
    n, n_functions, size = rotated.shape
    codes = np.empty((n, n_functions), dtype=np.int64)
    for f in range(n_functions):
        dim = last_dim if f % n_projections == n_projections - 1 else size
        y = rotated[:, f, :dim]
        codes[:, f] = np.argmax(np.concatenate([y, -y], axis=1), axis=1)
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
    m, n_functions, size = rotated.shape
    n_probes = out_tables.shape[1]
    h = n_projections
    # a probe using the a-th cheapest vertex of one hash comes after a probes of its table and g - 1 of the others
    alternatives = max(1, min(2 * size, n_probes - n_tables + 1))
    capacity = 2 * (h + 1) * (n_probes + n_tables) + 8
    for chunk in prange(n_chunks):
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
        codes = np.empty(h, dtype=np.int64)
        zero_deltas = np.zeros(h, dtype=np.int64)
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            for f in range(n_functions):
                vector = rotated[i, f]
                dim = last_dim if f % h == h - 1 else size
                own, best = _nearest_vertex(vector, dim)
                # few probes ever reach past a hash's first vertices: rank a few now, all on demand (below)
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
            while found < n_probes and size_heap > 0:
                score, node, size_heap = _heap_pop(heap_score, heap_node, size_heap, False)
                t = node_table[node]
                hash_index = node_hash[node]
                if hash_index == h:
                    for j in range(h):
                        codes[j] = alt_code[t * h + j, node_choice[node, j]]
                    out_tables[i, found] = t
                    out_keys[i, found] = _tuple_key(codes, 0, h, zero_deltas)
                    out_costs[i, found] = score
                    found += 1
                    continue
                if n_nodes + 2 > capacity:
                    break  # sized so this does not happen; stop rather than fail
                f = t * h + hash_index
                rank = node_rank[node]
                if rank + 1 == requested[f] and requested[f] < alternatives:
                    dim = last_dim if f % h == h - 1 else size
                    own, best = _nearest_vertex(rotated[i, f], dim)
                    requested[f] = alternatives
                    _cheapest_vertices(
                        vector=rotated[i, f],
                        dim=dim,
                        own=own,
                        best=best,
                        kept_value=kept_value,
                        out_codes=alt_code[f],
                        out_costs=alt_cost[f],
                    )
                if rank + 1 < requested[f] and alt_cost[f, rank + 1] < np.inf:
                    # the same hash, its next-cheaper vertex
                    node_table[n_nodes] = t
                    node_hash[n_nodes] = hash_index
                    node_rank[n_nodes] = rank + 1
                    node_choice[n_nodes, :hash_index] = node_choice[node, :hash_index]
                    child = score - alt_cost[f, rank] + alt_cost[f, rank + 1]
                    size_heap = _heap_push(heap_score, heap_node, size_heap, child, n_nodes, False)
                    n_nodes += 1
                # this vertex fixed, on to the next hash (its cheapest vertex costs 0)
                node_table[n_nodes] = t
                node_hash[n_nodes] = hash_index + 1
                node_rank[n_nodes] = 0
                node_choice[n_nodes, :hash_index] = node_choice[node, :hash_index]
                node_choice[n_nodes, hash_index] = rank
                size_heap = _heap_push(heap_score, heap_node, size_heap, score, n_nodes, False)
                n_nodes += 1


def cross_polytope_probes_reference(
    rotated: np.ndarray, n_tables: int, n_projections: int, last_dim: int, n_probes: int
) -> list[list[tuple[float, int, np.uint64]]]:
    """Brute force over every combination of vertices of every table: each query's ``n_probes`` cheapest
    (cost, table, key), sorted by cost (for tests; small D and h only)."""
    rotated = np.asarray(rotated, dtype=np.float64)
    codes = cross_polytope_codes_reference(rotated, n_projections, last_dim)
    size = rotated.shape[2]
    h = n_projections
    result = []
    for i in range(len(rotated)):
        probes = []
        for t in range(n_tables):
            options = []
            for j in range(h):
                y = rotated[i, t * h + j]
                dim = last_dim if j == h - 1 else size
                best = np.abs(y[:dim]).max()
                costs = np.concatenate([(best - y[:dim]) ** 2, (best + y[:dim]) ** 2])
                costs[codes[i, t * h + j]] = 0.0
                options.append(list(enumerate(costs)))
            for combination in itertools.product(*options):
                combo_codes = np.array([[code for code, _ in combination]], dtype=np.int64)
                key = hash_keys_reference(combo_codes, 1, h)[0, 0]
                probes.append((float(sum(cost for _, cost in combination)), t, key))
        probes.sort(key=lambda probe: probe[0])
        result.append(probes[:n_probes])
    return result


# ----------------------------------------------------------------------------------------------------------
# LSH query
# ----------------------------------------------------------------------------------------------------------

_MODE_SEARCH = 0  # top-k and visited
_MODE_COUNT = 1  # visited only
_MODE_FILL = 2  # visited and the sorted candidates, written to cand_ids at cand_offsets


class ProbeArgs(NamedTuple):
    """What a batch LSH query needs: the queries, the indexed data, the query slots and the index's tables.

    The arguments of :func:`lsh_search`, :func:`lsh_candidates` and :func:`query_reference`.
    """

    queries: np.ndarray  # (m, d) float32 C-contiguous (unit rows for cosine)
    data: np.ndarray  # (n, d) float32 C-contiguous indexed vectors
    codes: np.ndarray  # (m, g*h) int64 slot codes of the queries (slot_positions)
    fractions: np.ndarray  # (m, g*h) float64 positions inside the slots (slot_positions)
    n_tables: int
    n_projections: int
    bucket_width: float
    n_probes: int
    tables: BucketTables  # the index's bucket layout
    min_collisions: int = 1  # candidates are the ids found in at least this many probed buckets (1: the union)


class Shortlist(NamedTuple):
    """A cheaper candidate phase: score every candidate in a small space first, re-rank only the best exactly.

    The scoring space is any (n, r) embedding whose squared L2 distance approximates the ranking
    (:class:`cbir.indexes.lsh.LSHIndex` uses PCA coordinates, as float32 or as uint8 codes of
    :class:`cbir.indexes.pca.Codebook`
    with the queries in code units). The kept candidates are ranked exactly in increasing
    scoring distance. With ``lower_bound=True`` the caller guarantees that the scoring space is an orthogonal
    projection (so the scoring distance never exceeds the true one, unit rows for cosine): the exact ranking then
    stops at the first candidate whose scoring distance already exceeds the k-th best exact one, since no later
    candidate can enter the top k. The answer is the exact top-k of the kept candidates either way.
    """

    queries: np.ndarray  # (m, r) float32 C-contiguous queries in the scoring space
    data: np.ndarray  # (n, r) float32 or uint8 C-contiguous indexed objects in the scoring space (uint8: codes)
    size: int  # >= 1: candidates (best by scoring distance, ties by id) kept for the exact re-rank
    lower_bound: bool = False


class ListedProbes(NamedTuple):
    """A batch LSH query whose buckets are listed by the caller (cross-polytope LSH computes its probing sequence
    outside the search kernel): the arguments of :func:`lsh_search` / :func:`lsh_candidates` besides
    :class:`ProbeArgs`."""

    queries: np.ndarray  # (m, d) float32 C-contiguous (unit rows for cosine)
    data: np.ndarray  # (n, d) float32 C-contiguous indexed vectors
    probe_tables: np.ndarray  # (m, P) int64 table of each probed bucket, best first; -1 ends a shorter sequence
    probe_keys: np.ndarray  # (m, P) uint64 bucket key of each probe
    tables: BucketTables
    min_collisions: int = 1


@_jit()
def _probe_bucket(
    codes: np.ndarray,
    start: int,
    n_projections: int,
    deltas: np.ndarray,
    tables: BucketTables,
    lo: int,
    hi: int,
    seen: np.ndarray,
    buffer: np.ndarray,
    count: int,
    min_collisions: int,
    counts: np.ndarray,
    touched: np.ndarray,
    n_touched: np.ndarray,
) -> int:
    """:func:`_gather_bucket` of the bucket ``codes[start:start+h] + deltas`` of the table ``bucket_keys[lo:hi]``."""
    return _gather_bucket(
        key=_tuple_key(codes, start, n_projections, deltas),
        tables=tables,
        lo=lo,
        hi=hi,
        seen=seen,
        buffer=buffer,
        count=count,
        min_collisions=min_collisions,
        counts=counts,
        touched=touched,
        n_touched=n_touched,
    )


@_jit()
def _gather_bucket(
    key: np.uint64,
    tables: BucketTables,
    lo: int,
    hi: int,
    seen: np.ndarray,
    buffer: np.ndarray,
    count: int,
    min_collisions: int,
    counts: np.ndarray,
    touched: np.ndarray,
    n_touched: np.ndarray,
) -> int:
    """Append the ids of the bucket ``key`` of the table ``bucket_keys[lo:hi]`` whose bit in ``seen`` is not set
    yet to ``buffer[count:]`` (setting it); returns the new count.

    With ``min_collisions > 1`` an id is appended when the bucket is the ``min_collisions``-th one it is found in:
    ``counts`` (n,) int32 counts the finds, ``touched[:n_touched[0]]`` lists the ids counted so far.
    """
    bucket = _find_bucket(tables.bucket_keys, lo, hi, key)
    if bucket < 0:
        return count
    bucket_ids = tables.bucket_ids
    for p in range(tables.bucket_starts[bucket], tables.bucket_starts[bucket + 1]):
        obj = bucket_ids[p]
        if min_collisions > 1:
            found = counts[obj] + 1
            counts[obj] = found
            if found == 1:
                touched[n_touched[0]] = obj
                n_touched[0] += 1
            if found != min_collisions:
                continue
        word = obj >> 6
        bit = np.uint64(1) << np.uint64(obj & 63)
        if not seen[word] & bit:
            seen[word] |= bit
            buffer[count] = obj
            count += 1
    return count


@_jit()
def _collect_listed(
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    tables: BucketTables,
    seen: np.ndarray,
    buffer: np.ndarray,
    min_collisions: int,
    counts: np.ndarray,
    touched: np.ndarray,
    n_touched: np.ndarray,
) -> int:
    """:func:`_collect_candidates` for a probe sequence given as (table, key) pairs (``probe_tables[p] < 0`` ends
    it): the distinct ids of those buckets, written to ``buffer``; returns the count."""
    count = 0
    for p in range(probe_tables.shape[0]):
        t = probe_tables[p]
        if t < 0:
            break
        count = _gather_bucket(
            key=probe_keys[p],
            tables=tables,
            lo=tables.table_offsets[t],
            hi=tables.table_offsets[t + 1],
            seen=seen,
            buffer=buffer,
            count=count,
            min_collisions=min_collisions,
            counts=counts,
            touched=touched,
            n_touched=n_touched,
        )
    return count


@_jit()
def _sorted_candidates(seen: np.ndarray, buffer: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` ids gathered in ``buffer``, ascending, and ``seen`` cleared for the next query.

    Small sets are sorted; a set large against the bitmap's ``n / 64`` words is read off the bitmap in id order
    instead (one pass over the words, no comparison sort: at a million objects and 20,000 candidates this
    is ~50x cheaper than sorting).
    """
    n_words = seen.shape[0]
    if count * 8 < n_words:
        candidates = buffer[:count]
        candidates.sort()
        for c in range(count):
            seen[candidates[c] >> 6] = 0
        return candidates
    position = 0
    for word in range(n_words):
        bits = seen[word]
        if bits == 0:
            continue
        seen[word] = 0
        base = word << 6
        while bits:
            low = bits & (~bits + np.uint64(1))  # lowest set bit
            buffer[position] = base + _bit_index(low)
            position += 1
            bits ^= low
    return buffer[:position]


@_jit(inline="always")
def _bit_index(single_bit: np.uint64) -> int:
    """Index (0-63) of the one set bit of ``single_bit`` (binary search over halves)."""
    index = 0
    x = single_bit
    if x >= np.uint64(1) << np.uint64(32):
        x >>= np.uint64(32)
        index += 32
    if x >= np.uint64(1) << np.uint64(16):
        x >>= np.uint64(16)
        index += 16
    if x >= np.uint64(1) << np.uint64(8):
        x >>= np.uint64(8)
        index += 8
    if x >= np.uint64(1) << np.uint64(4):
        x >>= np.uint64(4)
        index += 4
    if x >= np.uint64(1) << np.uint64(2):
        x >>= np.uint64(2)
        index += 2
    if x >= np.uint64(1) << np.uint64(1):
        index += 1
    return index


@_jit()
def _collect_candidates(
    codes: np.ndarray,
    fractions: np.ndarray,
    n_tables: int,
    n_projections: int,
    bucket_width: float,
    n_probes: int,
    tables: BucketTables,
    seen: np.ndarray,
    buffer: np.ndarray,
    zero_deltas: np.ndarray,
    workspace: ProbeWorkspace,
    min_collisions: int,
    counts: np.ndarray,
    touched: np.ndarray,
    n_touched: np.ndarray,
) -> int:
    """Distinct ids in the query's buckets (plus probed neighbours), written to ``buffer``; returns the count.

    ``codes`` / ``fractions`` (g*h,) are the query's slots. ``seen`` ((n + 63) // 64,) uint64 is a bitmap that
    dedups ids across tables (all zero on entry; :func:`_sorted_candidates` clears it again).
    ``zero_deltas`` (h,) is all zero. With ``min_collisions > 1`` only ids found in that many probed buckets are
    kept (see :func:`_probe_bucket`); ``counts`` is all zero on entry and the caller clears the ``touched`` ids.
    """
    h = n_projections
    count = 0
    for t in range(n_tables):
        lo = tables.table_offsets[t]
        hi = tables.table_offsets[t + 1]
        count = _probe_bucket(
            codes=codes,
            start=t * h,
            n_projections=h,
            deltas=zero_deltas,
            tables=tables,
            lo=lo,
            hi=hi,
            seen=seen,
            buffer=buffer,
            count=count,
            min_collisions=min_collisions,
            counts=counts,
            touched=touched,
            n_touched=n_touched,
        )
        if n_probes > 0:
            n_found = _perturbation_sets(
                fractions=fractions[t * h : (t + 1) * h],
                bucket_width=bucket_width,
                n_probes=n_probes,
                workspace=workspace,
            )
            for p in range(n_found):
                count = _probe_bucket(
                    codes=codes,
                    start=t * h,
                    n_projections=h,
                    deltas=workspace.out_deltas[p],
                    tables=tables,
                    lo=lo,
                    hi=hi,
                    seen=seen,
                    buffer=buffer,
                    count=count,
                    min_collisions=min_collisions,
                    counts=counts,
                    touched=touched,
                    n_touched=n_touched,
                )
    return count


@_jit()
def _shortlist_into(
    query: np.ndarray, data: np.ndarray, candidates: np.ndarray, heap_key: np.ndarray, heap_id: np.ndarray
) -> int:
    """The ``len(heap_key)`` candidates nearest to ``query`` by squared L2 in the scoring space (ties by id).

    Args:
        query: (r,) float32; data: (n, r) float32; candidates: (c,) int64 rows of ``data``.
        heap_key, heap_id: (s,) float32 / int64 scratch space; on return ``heap_id[:size]`` holds the kept ids
            (in heap order).

    Returns:
        size = min(s, c).
    """
    limit = heap_key.shape[0]
    size = 0
    bound = np.float32(np.inf)
    for c in range(candidates.shape[0]):
        obj = candidates[c]
        key = _squared_l2(query, data[obj], bound)
        if size < limit:
            size = _heap_push(heap_key, heap_id, size, key, obj, True)
        elif _above(heap_key[0], heap_id[0], key, obj, True):
            _heap_replace_top(heap_key, heap_id, size, key, obj, True)
        if size == limit:
            bound = heap_key[0]
    return size


# Relative slack of the lower-bound stop: the scoring distance is summed in float32 in another order than the
# exact one, so it may exceed the exact value by a few ulps; stopping only clearly above the bound stays safe.
_BOUND_SLACK = np.float32(1e-4)


@_jit()
def _rerank_ordered_into(
    query: np.ndarray,
    data: np.ndarray,
    candidates: np.ndarray,
    low_keys: np.ndarray,
    metric: int,
    lower_bound: bool,
    top_key: np.ndarray,
    top_id: np.ndarray,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """:func:`_rerank_into` for candidates in increasing scoring distance ``low_keys`` (squared, float32).

    Good candidates come first, so the k-th best bound is tight early and most rows stop after their first
    distance block. With ``lower_bound`` the loop ends once a scoring distance proves that no remaining
    candidate can beat the k-th best (see :class:`Shortlist`).
    """
    k = out_ids.shape[0]
    size = 0
    bound = np.float32(np.inf)
    for c in range(candidates.shape[0]):
        if lower_bound and size == k:
            # smallest exact key the candidate can have: squared distance, or -(1 - d²/2) for unit vectors
            low = low_keys[c] * (np.float32(1.0) - _BOUND_SLACK)
            floor = low if metric == METRIC_EUCLIDEAN else np.float32(0.5) * low - np.float32(1.0)
            if floor > bound + _BOUND_SLACK * abs(bound):
                break
        obj = candidates[c]
        key = _ranking_key(query, data[obj], metric, bound)
        if size < k:
            size = _heap_push(top_key, top_id, size, key, obj, True)
        elif _above(top_key[0], top_id[0], key, obj, True):
            _heap_replace_top(top_key, top_id, size, key, obj, True)
        if size == k:
            bound = top_key[0]
    for position in range(size - 1, -1, -1):
        key, obj, _ = _heap_pop(top_key, top_id, position + 1, True)
        out_ids[position] = obj
        out_scores[position] = np.sqrt(key) if metric == METRIC_EUCLIDEAN else -key


@RowParallel
def _lsh_kernel(
    queries: np.ndarray,
    data: np.ndarray,
    codes: np.ndarray,
    fractions: np.ndarray,
    n_tables: int,
    n_projections: int,
    bucket_width: float,
    n_probes: int,
    tables: BucketTables,
    min_collisions: int,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    short_queries: np.ndarray,
    short_data: np.ndarray,
    shortlist: int,
    lower_bound: bool,
    metric: int,
    mode: int,
    n_chunks: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
    out_visited: np.ndarray,
    cand_offsets: np.ndarray,
    cand_ids: np.ndarray,
) -> None:
    """Candidates of every query, then (by ``mode``) their exact top-k, only their count, or their ids.

    The leading arguments are the fields of :class:`ProbeArgs` (numba's parallel loops do not take nested
    named tuples), or, when ``probe_tables`` has columns, those of :class:`ListedProbes` (``codes`` etc. unused);
    ``short_queries`` / ``short_data`` / ``shortlist`` those of :class:`Shortlist` (``shortlist = 0``: every
    candidate is re-ranked exactly). Called with keywords only.
    """
    m = queries.shape[0]
    listed = probe_tables.shape[1] > 0
    n = data.shape[0]
    h = n_projections
    k = out_ids.shape[1]
    for chunk in prange(n_chunks):
        # per-worker scratch space, allocated once for the chunk's queries
        seen = np.zeros((n + 63) // 64, dtype=np.uint64)
        counting = n if min_collisions > 1 else 1
        counts = np.zeros(counting, dtype=np.int32)
        touched = np.empty(counting, dtype=np.int64)
        n_touched = np.zeros(1, dtype=np.int64)
        buffer = np.empty(n, dtype=np.int64)
        zero_deltas = np.zeros(h, dtype=np.int64)
        workspace = _probe_workspace(n_probes=n_probes, n_projections=h)
        top_key = np.empty(k, dtype=np.float32)
        top_id = np.empty(k, dtype=np.int64)
        short_key = np.empty(max(shortlist, 1), dtype=np.float32)
        short_id = np.empty(max(shortlist, 1), dtype=np.int64)
        ordered_key = np.empty(max(shortlist, 1), dtype=np.float32)
        ordered_id = np.empty(max(shortlist, 1), dtype=np.int64)
        for i in range(chunk * m // n_chunks, (chunk + 1) * m // n_chunks):
            if listed:
                count = _collect_listed(
                    probe_tables=probe_tables[i],
                    probe_keys=probe_keys[i],
                    tables=tables,
                    seen=seen,
                    buffer=buffer,
                    min_collisions=min_collisions,
                    counts=counts,
                    touched=touched,
                    n_touched=n_touched,
                )
            else:
                count = _collect_candidates(
                    codes=codes[i],
                    fractions=fractions[i],
                    n_tables=n_tables,
                    n_projections=h,
                    bucket_width=bucket_width,
                    n_probes=n_probes,
                    tables=tables,
                    seen=seen,
                    buffer=buffer,
                    zero_deltas=zero_deltas,
                    workspace=workspace,
                    min_collisions=min_collisions,
                    counts=counts,
                    touched=touched,
                    n_touched=n_touched,
                )
            for j in range(n_touched[0]):
                counts[touched[j]] = 0
            n_touched[0] = 0
            out_visited[i] = count
            # ascending ids: rows are then read in memory order, which the prefetcher likes
            candidates = _sorted_candidates(seen=seen, buffer=buffer, count=count)
            if mode == _MODE_COUNT:
                continue
            if mode == _MODE_FILL:
                cand_ids[cand_offsets[i] : cand_offsets[i] + count] = candidates
                continue
            if shortlist == 0:
                _rerank_into(
                    query=queries[i],
                    data=data,
                    candidates=candidates,
                    metric=metric,
                    top_key=top_key,
                    top_id=top_id,
                    out_scores=out_scores[i],
                    out_ids=out_ids[i],
                )
                continue
            kept = _shortlist_into(
                query=short_queries[i], data=short_data, candidates=candidates, heap_key=short_key, heap_id=short_id
            )
            # best scoring distance first (ties by id)
            for position in range(kept - 1, -1, -1):
                ordered_key[position], ordered_id[position], _ = _heap_pop(short_key, short_id, position + 1, True)
            _rerank_ordered_into(
                query=queries[i],
                data=data,
                candidates=ordered_id[:kept],
                low_keys=ordered_key[:kept],
                metric=metric,
                lower_bound=lower_bound,
                top_key=top_key,
                top_id=top_id,
                out_scores=out_scores[i],
                out_ids=out_ids[i],
            )


_NO_SHORTLIST = Shortlist(queries=np.zeros((0, 1), dtype=np.float32), data=np.zeros((0, 1), dtype=np.float32), size=0)


def _lsh_call(
    probe: ProbeArgs | ListedProbes,
    k: int,
    metric: int,
    mode: int,
    shortlist: Shortlist | None = None,
    cand_offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run :func:`_lsh_kernel` in ``mode``; returns (scores, ids, visited, cand_ids)."""
    m = probe.queries.shape[0]
    if isinstance(probe, ListedProbes):
        if probe.probe_tables.shape != (m, max(probe.probe_tables.shape[1], 1)) or probe.probe_keys.shape != (
            probe.probe_tables.shape
        ):
            raise ValueError("probe_tables and probe_keys must be (m, P >= 1) arrays, one row per query")
        listed = (probe.probe_tables, probe.probe_keys)
        probe = ProbeArgs(
            queries=probe.queries,
            data=probe.data,
            codes=np.zeros((m, 0), dtype=np.int64),
            fractions=np.zeros((m, 0), dtype=np.float64),
            n_tables=0,
            n_projections=1,
            bucket_width=1.0,
            n_probes=0,
            tables=probe.tables,
            min_collisions=probe.min_collisions,
        )
    else:
        listed = (np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.uint64))
    scores, ids = _empty_results(m, k, metric)
    visited = np.zeros(m, dtype=np.int64)
    offsets = np.zeros(m + 1, dtype=np.int64) if cand_offsets is None else cand_offsets
    cand_ids = np.empty(int(offsets[-1]), dtype=np.int64)
    short = _NO_SHORTLIST if shortlist is None else shortlist
    if short.size < 0 or (short.size > 0 and (len(short.queries) != m or len(short.data) != len(probe.data))):
        raise ValueError("the shortlist's queries and data must have the rows of the probe's queries and data")
    _lsh_kernel(
        queries=probe.queries,
        data=probe.data,
        codes=probe.codes,
        fractions=probe.fractions,
        n_tables=int(probe.n_tables),
        n_projections=int(probe.n_projections),
        bucket_width=float(probe.bucket_width),
        n_probes=int(probe.n_probes),
        tables=BucketTables(*probe.tables),
        min_collisions=int(probe.min_collisions),
        probe_tables=listed[0],
        probe_keys=listed[1],
        short_queries=short.queries,
        short_data=short.data,
        shortlist=int(short.size),
        lower_bound=bool(short.lower_bound),
        metric=metric,
        mode=mode,
        n_chunks=_n_chunks(m),
        out_scores=scores,
        out_ids=ids,
        out_visited=visited,
        cand_offsets=offsets,
        cand_ids=cand_ids,
    )
    return scores, ids, visited, cand_ids


def lsh_search(
    probe: ProbeArgs | ListedProbes, k: int, metric: int, shortlist: Shortlist | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch LSH query (numba, parallel over queries).

    Args:
        probe: the queries, data, query slots and tables (E2LSH), or the buckets to probe (:class:`ListedProbes`).
        k: results per query; metric: ``METRIC_EUCLIDEAN`` or ``METRIC_COSINE``.
        shortlist: optional cheaper candidate phase; ``None`` re-ranks every candidate exactly.

    Returns:
        scores (m, k) float32, ids (m, k) int64 (-1 padded), visited (m,) int64 = distinct candidates (each had
        a distance computed: in the scoring space, and in the full space if it reached the shortlist).
    """
    scores, ids, visited, _ = _lsh_call(probe, k, metric, _MODE_SEARCH, shortlist=shortlist)
    return scores, ids, visited


def lsh_candidates(probe: ProbeArgs | ListedProbes) -> tuple[np.ndarray, np.ndarray]:
    """Candidate sets of each query as CSR ``(offsets (m+1,) int64, ids int64)``, ids ascending within a query."""
    _, _, visited, _ = _lsh_call(probe, 1, METRIC_EUCLIDEAN, _MODE_COUNT)
    offsets = np.zeros(len(visited) + 1, dtype=np.int64)
    np.cumsum(visited, out=offsets[1:])
    _, _, _, cand_ids = _lsh_call(probe, 1, METRIC_EUCLIDEAN, _MODE_FILL, cand_offsets=offsets)
    return offsets, cand_ids


def _reference_buckets(probe: ProbeArgs | ListedProbes, i: int) -> list[np.ndarray]:
    """The id lists of the buckets query ``i`` probes (numpy; for :func:`query_reference`)."""
    tables = probe.tables
    pairs = []
    if isinstance(probe, ListedProbes):
        for t, key in zip(probe.probe_tables[i], probe.probe_keys[i], strict=True):
            if t < 0:
                break
            pairs.append((int(t), key))
    else:
        h = probe.n_projections
        for t in range(probe.n_tables):
            table_codes = probe.codes[i, t * h : (t + 1) * h]
            deltas = [np.zeros(h, dtype=np.int64)]
            if probe.n_probes > 0:
                probe_deltas, _ = perturbation_sequence_reference(
                    probe.fractions[i, t * h : (t + 1) * h], probe.bucket_width, probe.n_probes
                )
                deltas.extend(probe_deltas)
            pairs.extend((t, hash_keys_reference((table_codes + delta)[None, :], 1, h)[0, 0]) for delta in deltas)
    found = []
    for t, key in pairs:
        lo, hi = tables.table_offsets[t], tables.table_offsets[t + 1]
        table_keys = tables.bucket_keys[lo:hi]
        position = np.searchsorted(table_keys, key)
        if position < len(table_keys) and table_keys[position] == key:
            bucket = lo + position
            found.append(tables.bucket_ids[tables.bucket_starts[bucket] : tables.bucket_starts[bucket + 1]])
    return found


def query_reference(
    probe: ProbeArgs | ListedProbes, k: int, metric: int, shortlist: Shortlist | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """numpy version of :func:`lsh_search` (same arguments); also returns each query's sorted candidate ids."""
    queries, data, min_collisions = probe.queries, probe.data, probe.min_collisions
    m = queries.shape[0]
    scores, ids = _empty_results(m, k, metric)
    visited = np.zeros(m, dtype=np.int64)
    candidates_per_query = []
    for i in range(m):
        found = _reference_buckets(probe, i)
        candidates, finds = np.unique(np.concatenate(found), return_counts=True) if found else (np.empty(0, int), [])
        candidates = candidates[np.asarray(finds) >= min_collisions].astype(np.int64)
        candidates_per_query.append(candidates)
        visited[i] = len(candidates)
        # the kernel's lower-bound stop and candidate order do not change the answer: the exact top-k of the kept
        if shortlist is not None and shortlist.size > 0 and len(candidates) > shortlist.size:
            low = ((shortlist.data[candidates].astype(np.float64) - shortlist.queries[i]) ** 2).sum(axis=1)
            candidates = np.sort(candidates[np.lexsort((candidates, low))[: shortlist.size]])
        if len(candidates) == 0:
            continue
        rows = data[candidates].astype(np.float64)
        query = queries[i].astype(np.float64)
        if metric == METRIC_EUCLIDEAN:
            key_values = np.sqrt(((rows - query) ** 2).sum(axis=1))
        else:
            key_values = -(rows @ query)
        order = np.lexsort((candidates, key_values))[:k]
        ids[i, : len(order)] = candidates[order]
        scores[i, : len(order)] = key_values[order] if metric == METRIC_EUCLIDEAN else -key_values[order]
    return scores, ids, visited, candidates_per_query
