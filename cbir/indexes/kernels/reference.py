"""Pure-numpy references of the kernels: the slow, obvious implementation of each algorithm, used by the tests
to assert that the numba kernels return the same keys, buckets, candidates and top-k answers."""

from __future__ import annotations

import itertools

import numpy as np

from cbir.indexes.kernels.common import (
    _KEY_SEED,
    _MIX_1,
    _MIX_2,
    _SHIFT_27,
    _SHIFT_30,
    _SHIFT_31,
    METRIC_EUCLIDEAN,
    BucketTables,
)
from cbir.indexes.kernels.query import ListedProbes, ProbeArgs, Shortlist
from cbir.indexes.kernels.topk import _empty_results


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


def cross_polytope_codes_reference(rotated: np.ndarray, n_projections: int, last_dim: int) -> np.ndarray:
    """numpy version of :func:`cross_polytope_codes`."""
    n, n_functions, size = rotated.shape
    codes = np.empty((n, n_functions), dtype=np.int64)
    for f in range(n_functions):
        dim = last_dim if f % n_projections == n_projections - 1 else size
        y = rotated[:, f, :dim]
        codes[:, f] = np.argmax(np.concatenate([y, -y], axis=1), axis=1)
    return codes


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


def block_search_reference(
    queries: np.ndarray,
    data: np.ndarray,
    units: np.ndarray,
    codes: np.ndarray,
    tables: BucketTables,
    probe_tables: np.ndarray,
    probe_keys: np.ndarray,
    k: int,
    rerank: int,
    metric: int,
    stamp: bool = False,
    patience: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy version of :func:`cbir.indexes.kernels.blocks.block_search` (same arguments): the probed buckets in
    order, each member's code distance, a sorted list of the best ``rerank`` distinct (code distance, id) pairs that
    a member enters when it beats the worst (the sequence stopping after ``patience`` probes in a row that changed
    nothing in a full list), then the exact top-k of the list. ``visited``: members scored (first meetings only
    with ``stamp``)."""
    m = queries.shape[0]
    scores, ids = _empty_results(m, k, metric)
    visited = np.zeros(m, dtype=np.int64)
    for i in range(m):
        kept: list[tuple[float, int]] = []
        met: set[int] = set()
        quiet = 0
        for t, key in zip(probe_tables[i], probe_keys[i], strict=True):
            if t < 0 or (patience > 0 and quiet >= patience and len(kept) == rerank):
                break
            quiet += 1
            lo, hi = tables.table_offsets[t], tables.table_offsets[t + 1]
            found = lo + np.searchsorted(tables.bucket_keys[lo:hi], key)
            if found == hi or tables.bucket_keys[found] != key:
                continue
            for position in range(tables.bucket_starts[found], tables.bucket_starts[found + 1]):
                obj = int(tables.bucket_ids[position])
                if stamp and obj in met:
                    continue
                met.add(obj)
                visited[i] += 1
                low = _code_score_reference(units[i], codes[position])
                if any(obj == other for _, other in kept) or (len(kept) == rerank and low >= kept[-1][0]):
                    continue
                kept = sorted([*kept, (low, obj)])[:rerank]
                quiet = 0
        if not kept:
            continue
        candidates = np.array([obj for _, obj in kept], dtype=np.int64)
        rows = data[candidates].astype(np.float64)
        query = queries[i].astype(np.float64)
        key_values = np.sqrt(((rows - query) ** 2).sum(axis=1)) if metric == METRIC_EUCLIDEAN else -(rows @ query)
        order = np.lexsort((candidates, key_values))[:k]
        ids[i, : len(order)] = candidates[order]
        scores[i, : len(order)] = key_values[order] if metric == METRIC_EUCLIDEAN else -key_values[order]
    return scores, ids, visited


def sign_sketches_reference(units: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """numpy version of :func:`cbir.indexes.kernels.sketch.sign_sketches`, bit by bit: bit j % 64 of word j // 64
    set where ``units[:, j] > zero[j]``."""
    m, s = units.shape
    sketches = np.zeros((m, -(-s // 64)), dtype=np.uint64)
    for j in range(s):
        bit = np.uint64(1) << np.uint64(j % 64)
        sketches[units[:, j].astype(np.float32) > zero[j], j // 64] |= bit
    return sketches


def _code_score_reference(unit: np.ndarray, code: np.ndarray) -> float:
    """A member's shortlist score (:func:`cbir.indexes.kernels.sketch.block_score`): squared L2 of a uint8 code,
    or the Hamming distance of a uint64 sketch (the set bits of the XOR, counted one by one)."""
    if code.dtype == np.uint64:
        return float(sum(bin(int(word)).count("1") for word in np.bitwise_xor(unit, code)))
    return float(((code.astype(np.float64) - unit) ** 2).sum())


def query_spaces_reference(
    queries: np.ndarray, columns: np.ndarray, mean: np.ndarray, hashed_dim: int, low: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """numpy version of :func:`cbir.indexes.kernels.projection.query_spaces` (float64): the centred queries on the
    axes ``columns`` (d, w); the first ``hashed_dim`` coordinates, and the first ``len(low)`` in code units
    ``(coordinate - low) / step``."""
    projected = (queries.astype(np.float64) - mean) @ columns.astype(np.float64)
    return projected[:, :hashed_dim], (projected[:, : len(low)] - low) / step
