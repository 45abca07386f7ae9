"""Bucket tables in CSR layout (built, built in steps, merged as rows are added) and bucket lookup."""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from cbir.indexes.kernels.common import BucketTables, RowParallel, _jit


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
