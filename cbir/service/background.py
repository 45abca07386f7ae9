"""What a server keeps up to date behind the pages: the comparison page's first view, computed again in a background
thread after the collection grew or shrank in place (its features' version changed, so what ``python -m cbir extract``
kept no longer matches), yielding to the pages' runs between its steps (:mod:`cbir.core.foreground`), so that a person
who opens the comparison page a little later reads it from disk instead of waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from cbir.core import foreground
from cbir.core.errors import CbirError
from cbir.evaluation.comparison import keep_default_comparison

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_again = False  # a change came since the running computation started: compute once more when it ends
_worker: threading.Thread | None = None


def refresh_default_comparison(collection: str | Path | None = None) -> threading.Thread:
    """Compute the comparison page's first view of ``collection`` (default: the configured one) again in a daemon
    thread (:func:`cbir.evaluation.comparison.keep_default_comparison`), kept on disk where the page reads it. One
    computation at a time: a call while one runs makes it run once more when it ends (with the newest features, for
    the running one's ``collection``).
    Returns the thread (``join()`` it to wait)."""
    global _again, _worker
    with _lock:
        _again = True
        if _worker is None:
            _worker = threading.Thread(target=_work, args=(collection,), name="cbir-comparison", daemon=True)
            _worker.start()
        return _worker


def _work(collection: str | Path | None) -> None:
    global _worker
    try:
        while _next():
            foreground.yield_to_pages()  # the page that made the change draws its answer first
            started = time.perf_counter()
            try:
                done = keep_default_comparison(collection, progress=lambda *_: foreground.yield_to_pages())
            except CbirError as exc:  # the page computes it (and says why it cannot) when opened
                _log.warning("comparison page: not computed again in the background (%s)", exc)
                continue
            if done:
                _log.info("comparison page: kept again in %.1f s", time.perf_counter() - started)
    finally:  # a bug ends the thread with its traceback; the next change starts another
        with _lock:
            if _worker is threading.current_thread():
                _worker = None


def _next() -> bool:
    """Whether to compute (again): a change came since the last start. When not, the worker is done (under the same
    lock, so a change that comes now starts a new one)."""
    global _again, _worker
    with _lock:
        if not _again:
            _worker = None
            return False
        _again = False
        return True


def computing() -> bool:
    """Whether a computation runs or is about to (a change came)."""
    with _lock:
        return _worker is not None


def wait(timeout: float | None = None) -> bool:
    """Wait until no background computation runs (at most ``timeout`` seconds); whether none runs now."""
    with _lock:
        worker = _worker
    if worker is not None:
        worker.join(timeout)
        return not worker.is_alive()
    return True
