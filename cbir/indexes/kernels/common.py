"""The kernels' shared definitions: metric codes, the numba decorator, the key-mixing constants and the CSR
bucket layout."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit

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
