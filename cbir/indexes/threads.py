"""One threading policy for every search: a single query on one thread, a batch on all cores.

Why: numba's parallel regions and OpenBLAS each keep a pool of worker threads that spin for a while after a call.
A loop of single queries (a server answering one user at a time) then pays for both pools fighting over the cores
after every call (issue 21: 8.0 ms per exact-scan query with the defaults on two cores, 0.55 ms on one thread).
A single query has nothing to share out anyway, so it runs:

* numba's kernels through their serial twins (compiled without ``parallel``: no parallel region is entered, so no
  worker wakes up; see :func:`cbir.indexes.kernels.row_parallel`), chosen by :func:`in_single_query`;
* BLAS (the projections, every small product) on one thread (the libraries found by ``threadpoolctl``), except
  inside :func:`wide_product`: the exact scan's one product of the query with every row, a memory-bound GEMV that
  BLAS' threads split (about 2x faster on two free cores: issue 21 measured 2.2 ms on one thread against 0.70 ms
  for plain numpy), when :class:`WideOrNarrow` measures that it is faster on the machine's load of the moment.
  OpenBLAS' workers sleep at once after a call (``OPENBLAS_THREAD_TIMEOUT``, set by
  :func:`cbir.core.config.quiet_native_libraries`) and numba's pool is never entered, so nothing spins between
  queries.

A batch keeps every core. numba's threading layer is chosen here, before the first parallel region:
:data:`THREADING_LAYER` unless the user set ``NUMBA_THREADING_LAYER``.

OpenBLAS' thread count is one setting for the whole process, so the BLAS limit is reference counted: it is set when
the first thread enters a single query and restored when the last one leaves (a batch running meanwhile in another
thread runs its products on one thread for that time; it stays correct).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numba
import numpy as np

# numba's threading layer for batches: "threadsafe" picks TBB if installed, else OpenMP (libgomp), never "workqueue",
# which aborts the process when two threads enter parallel regions at once (a server's sessions do). OpenMP's idle
# workers spin after each region unless OMP_WAIT_POLICY=PASSIVE, which the entry points set
# (cbir.core.config.quiet_native_libraries); single queries enter no region at all. Measured side by side with
# ``benchmarks/single_query.py --layers`` (README, "Single queries").
THREADING_LAYER = "threadsafe"
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = THREADING_LAYER

_local = threading.local()
_blas_lock = threading.Lock()
_blas_users = 0
_blas_wide = 0  # threads inside wide_product: BLAS has its own thread counts back meanwhile
_blas_saved: list[tuple[Callable[[int], int], int]] = []  # (setter, the count it replaced) of the first entry
_blas_setters: list[Callable[[int], int]] | None = None
_modules_seen = 0


def in_single_query() -> bool:
    """Whether the calling thread is inside :func:`single_query` (kernels then run their serial twins)."""
    return getattr(_local, "depth", 0) > 0


def _setters() -> list[Callable[[int], int]]:
    """Per loaded BLAS library (found by threadpoolctl, which walks every loaded library: again only after an
    import), a function that sets its thread count and returns the previous one: OpenBLAS'
    ``openblas_set_num_threads_local`` where it exists (its ``openblas_set_num_threads`` is ignored when called from
    another thread than the one that called it first, and a server's sessions run in their own threads). FAISS'
    bundled OpenBLAS (0.3.15) has no such function; a single query never runs on it (HNSW computes its own
    distances, and so does the flat coarse step of IVF-Flat for fewer than 20 queries)."""
    global _blas_setters, _modules_seen
    if _blas_setters is None or len(sys.modules) != _modules_seen:  # an import since may have loaded another BLAS
        _modules_seen = len(sys.modules)
        from threadpoolctl import ThreadpoolController

        setters: list[Callable[[int], int]] = []
        for library in ThreadpoolController().lib_controllers:
            if library.user_api != "blas":
                continue
            local = getattr(library.dynlib, "openblas_set_num_threads_local", None)
            if local is not None:
                local.restype, local.argtypes = ctypes.c_int, [ctypes.c_int]
                setters.append(local)
            else:

                def set_threads(count: int, library: Any = library) -> int:
                    previous = int(library.get_num_threads())
                    library.set_num_threads(count)
                    return previous

                setters.append(set_threads)
        _blas_setters = setters
    return _blas_setters


def _enter_blas() -> None:
    global _blas_users, _blas_saved
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = [(set_threads, set_threads(1)) for set_threads in _setters()]
        _blas_users += 1


def _leave_blas() -> None:
    global _blas_users
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0:
            for set_threads, previous in _blas_saved:
                set_threads(previous)


class _SingleQuery:
    """The context manager :func:`single_query` returns: one shared instance (its state is per thread, in
    ``_local``), a class rather than a generator because a single query pays for every object and frame it makes
    (the scan's product flushes the caches before and after: issue 21)."""

    __slots__ = ()

    def __enter__(self) -> None:
        depth = getattr(_local, "depth", 0)
        if depth == 0:
            _enter_blas()
        _local.depth = depth + 1

    def __exit__(self, *exc_info: object) -> None:
        _local.depth -= 1
        if _local.depth == 0:
            _leave_blas()


_SINGLE_QUERY = _SingleQuery()
_ALL_CORES = contextlib.nullcontext()


def single_query() -> AbstractContextManager[None]:
    """Run the block as one query: numba's serial kernels and BLAS on the calling thread (nests; thread-safe)."""
    return _SINGLE_QUERY


def _widen() -> None:
    """Give BLAS its own thread counts back (inside a single query; reference counted across threads)."""
    global _blas_wide
    with _blas_lock:
        if _blas_wide == 0:
            for set_threads, previous in _blas_saved:
                set_threads(previous)
        _blas_wide += 1


def _narrow() -> None:
    """Undo :func:`_widen`: BLAS back on one thread when the last thread leaves its wide block."""
    global _blas_wide
    with _blas_lock:
        _blas_wide -= 1
        if _blas_wide == 0:
            for set_threads, _ in _blas_saved:
                set_threads(1)


@contextmanager
def wide_product() -> Iterator[None]:
    """Inside :func:`single_query`: the block's BLAS calls on BLAS' own thread counts (those before the first single
    query), for one product large enough to share out, e.g. the exact scan's. Outside it (a batch) nothing changes.
    Thread-safe and reference counted like :func:`single_query`: the counts drop back to one when the last thread
    leaves the block (another thread's single query meanwhile may use BLAS' threads too; its answers stay the
    same)."""
    if not in_single_query():
        yield
        return
    _widen()
    try:
        yield
    finally:
        _narrow()


class WideOrNarrow:
    """Whether a single query's large product runs on BLAS' threads (:func:`wide_product`) or on its own thread,
    chosen by measurement as queries come: two threads halve a memory-bound product when a core is free, but on a
    busy machine the half given to the other thread waits for a core (measured at load 5-10: 1.4-3.4x the one-thread
    time). Each call times its block and keeps the last :attr:`window` times of each way; the wide way is taken while
    the median of its times is at most the best of the narrow way's, else the narrow one, and the way not taken is
    timed again at most every :attr:`explore_seconds` to follow the machine's load. That is in a stream of queries
    (each at most :attr:`stream_gap_seconds` after the last: a loop, a loaded API); a lone query takes the narrow
    way, whose worst case is bounded. The narrow way's best, not its
    median: a busy machine preempts the one thread now and then (a query of 2 ms then takes 7), and a median of such
    times once let the wide way back in for a hundred queries at 3x the cost; the wide way's median, not its best: a
    lucky moment with a free core says nothing of the next call. Measured against a moving average and a probe every
    32nd call, which a lone slow call flipped for dozens of queries, and which cost a 1 ms query ~3 % on an idle
    machine (one call in ~200 now). The other way is also taken at most once in :attr:`explore_calls` calls: a
    server's queries come seconds apart, and by time alone every one of them took the way measured slower (the Search
    page's first exact scan: a one-thread product of 21.6 ms beside a two-thread median of 1.2 ms, issue 21). One per
    index (the exact scan); thread-safe enough (a race loses one timing). Outside a single query (a batch) it changes
    nothing."""

    explore_seconds = 0.2
    explore_calls = 8
    window = 5
    stream_gap_seconds = 0.1  # a call this long after the last one or less is part of a stream of queries

    def __init__(self) -> None:
        self._seconds: dict[bool, deque[float]] = {True: deque(maxlen=self.window), False: deque(maxlen=self.window)}
        self._wide_faster = True
        self._explored = 0.0  # time.perf_counter() when the slower way was last taken
        self._calls = 0  # calls since then (or since both ways were first timed)
        self._last_call = float("-inf")  # time.perf_counter() of the last call

    def _pick(self, now: float) -> bool:
        wide, narrow = self._seconds[True], self._seconds[False]
        if not wide or not narrow:  # each way timed once first
            return not wide
        gap, self._last_call = now - self._last_call, now
        if gap > self.stream_gap_seconds:
            # a lone query (a person's, seconds after the last): what was measured then says nothing of the cores
            # now, and the two ways' worst cases differ: one thread is a few ms at most, but the wide way waits for
            # a core another process took, e.g. the browser drawing the upload that made this query (the Search
            # page's first exact scan: 50-90 ms in 6 runs of 30, against 4-14 ms on one thread; issue 21)
            return False
        self._calls += 1
        if self._calls > self.explore_calls and now - self._explored >= self.explore_seconds:
            self._explored, self._calls = now, 0
            return not self._wide_faster
        return self._wide_faster

    def _record(self, wide: bool, seconds: float) -> None:
        self._seconds[wide].append(seconds)
        wide_times, narrow_times = sorted(self._seconds[True]), self._seconds[False]
        if wide_times and narrow_times:  # the wide way's lower middle against the narrow way's best
            self._wide_faster = wide_times[(len(wide_times) - 1) // 2] <= min(narrow_times)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` (one large product) the faster way, timed; outside a single query (a batch) as it is."""
        if not in_single_query():
            return a @ b
        started = time.perf_counter()
        wide = self._pick(started)
        if wide:
            _widen()
            try:
                product = a @ b
            finally:
                _narrow()
        else:
            product = a @ b
        self._record(wide, time.perf_counter() - started)
        return product


def queries(m: int) -> AbstractContextManager[None]:
    """The policy for a call with ``m`` query rows: :func:`single_query` when ``m == 1``, all cores otherwise."""
    return _SINGLE_QUERY if m == 1 else _ALL_CORES
