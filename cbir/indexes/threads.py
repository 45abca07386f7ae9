"""One threading policy for every search: a single query on one thread, a batch on all cores.

Why: numba's parallel regions and OpenBLAS each keep a pool of worker threads that spin for a while after a call.
A loop of single queries (a server answering one user at a time) then pays for both pools fighting over the cores
after every call (issue 21: 8.0 ms per exact-scan query with the defaults on two cores, 0.55 ms on one thread).
A single query has nothing to share out anyway, so it runs:

* numba's kernels through their serial twins (compiled without ``parallel``: no parallel region is entered, so no
  worker wakes up; see :func:`cbir.indexes.kernels.row_parallel`), chosen by :func:`in_single_query`;
* BLAS (the scan's matrix product, the projections) on the calling thread, by ``threadpoolctl``.

A batch keeps every core. numba's threading layer is chosen here, before the first parallel region, by
measurement (``benchmarks/single_query.py --layers``; README, "Single queries"): :data:`THREADING_LAYER` unless the
user set ``NUMBA_THREADING_LAYER``.

OpenBLAS' thread count is one setting for the whole process, so the BLAS limit is reference counted: it is set when
the first thread enters a single query and restored when the last one leaves (a batch running meanwhile in another
thread runs its products on one thread for that time; it stays correct).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba

# numba's workers of the OpenMP layer (the default where libgomp is found) spin after each parallel region and take
# the cores OpenBLAS' threads wait for; "workqueue" sleeps at once but aborts the process when two threads enter
# parallel regions at the same time (a server's sessions do); TBB is thread-safe and does not spin for long.
# The measured choice (README, "Single queries"): see benchmarks/single_query.py --layers.
THREADING_LAYER = "omp"
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = THREADING_LAYER

_local = threading.local()
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: object | None = None
_controller: object | None = None


def in_single_query() -> bool:
    """Whether the calling thread is inside :func:`single_query` (kernels then run their serial twins)."""
    return getattr(_local, "depth", 0) > 0


def _blas_controller() -> object:
    """threadpoolctl's view of the loaded BLAS libraries, made once (finding them walks every loaded library)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def _enter_blas() -> None:
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _blas_controller().limit(limits=1, user_api="blas")  # type: ignore[attr-defined]
        _blas_users += 1


def _leave_blas() -> None:
    global _blas_users, _blas_limiter
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0 and _blas_limiter is not None:
            _blas_limiter.restore_original_limits()  # type: ignore[attr-defined]
            _blas_limiter = None


@contextmanager
def single_query() -> Iterator[None]:
    """Run the block as one query: numba's serial kernels and BLAS on the calling thread (nests; thread-safe)."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    if depth == 0:
        _enter_blas()
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            _leave_blas()


@contextmanager
def queries(m: int) -> Iterator[None]:
    """The policy for a call with ``m`` query rows: :func:`single_query` when ``m == 1``, all cores otherwise."""
    if m == 1:
        with single_query():
            yield
    else:
        yield
