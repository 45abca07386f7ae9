"""Foreground work first: a page's script run marks itself with :func:`page_run`, and background work that can wait
(the server's warm start: numba's kernels, TensorFlow's import, the model) calls :func:`yield_to_pages` between its
steps, so that on two cores a page opened as the server starts is not drawn behind it.

Standard library only: ``app.py`` imports it before anything heavy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

AFTER_RUN_S = 2.0  # and this long after a run ends: the browser draws what it sent (plotly charts: seconds on 2 cores)
# the longest background work waits for the pages in all (a long computation must not starve it): longer than the
# comparison page's first computation on two busy cores (15-25 s), so that TensorFlow's import and the model do not
# start while its browser draws it (at 20 s they did: settled 32.4 s against 23.0 s at 60 s, side by side, load 4-5)
YIELD_LIMIT_S = 60.0

_runs = 0  # page runs under way
_waiting = 0  # page runs waiting for background work to end (the background then yields to none)
_last_end = float("-inf")  # when the last one ended (time.monotonic)
_changed = threading.Condition()


@contextlib.contextmanager
def page_run() -> Iterator[None]:
    """The block is a page's run (every session's script run, from ``app.py``): :func:`yield_to_pages` waits while
    one is under way."""
    global _runs, _last_end
    with _changed:
        _runs += 1
    try:
        yield
    finally:
        with _changed:
            _runs -= 1
            _last_end = time.monotonic()
            _changed.notify_all()


@contextlib.contextmanager
def waiting_for_background() -> Iterator[None]:
    """The block is a page's run waiting for background work (the comparison page for what the background computes
    after a change): :func:`yield_to_pages` does not wait meanwhile, else each would wait for the other (until the
    background's :data:`YIELD_LIMIT_S`)."""
    global _waiting
    with _changed:
        _waiting += 1
        _changed.notify_all()
    try:
        yield
    finally:
        with _changed:
            _waiting -= 1
            _changed.notify_all()


def pages_running() -> int:
    """The number of page runs under way."""
    return _runs


def yield_to_pages(limit_s: float = YIELD_LIMIT_S) -> float:
    """Wait while a page's run is under way and :data:`AFTER_RUN_S` after the last one ended, at most ``limit_s``
    seconds, and not while a page waits for background work (:func:`waiting_for_background`); returns the seconds
    waited."""
    started = time.monotonic()
    deadline = started + limit_s
    with _changed:
        while (left := deadline - time.monotonic()) > 0 and not _waiting:
            if _runs > 0:
                _changed.wait(left)
            elif (quiet := _last_end + AFTER_RUN_S - time.monotonic()) > 0:
                _changed.wait(min(left, quiet))
            else:
                break
    return time.monotonic() - started
