"""Background work waits for the pages' runs (cbir.core.foreground), at most its limit."""

from __future__ import annotations

import threading

import pytest

from cbir.core import foreground


def test_background_work_waits_for_a_page_run_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(foreground, "AFTER_RUN_S", 0.0)
    started, release = threading.Event(), threading.Event()

    def page() -> None:
        with foreground.page_run():
            started.set()
            release.wait()

    run = threading.Thread(target=page)
    run.start()
    started.wait()
    assert foreground.pages_running() == 1
    waiter = threading.Thread(target=foreground.yield_to_pages, args=(60.0,))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # the page still runs: the background step waits
    release.set()
    run.join()
    waiter.join(10)
    assert not waiter.is_alive() and foreground.pages_running() == 0


def test_background_work_goes_on_after_its_limit_or_when_no_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(foreground, "AFTER_RUN_S", 0.0)
    assert foreground.yield_to_pages(60.0) < 1.0  # no page runs: no wait
    with foreground.page_run():
        waited = foreground.yield_to_pages(0.05)
    assert waited >= 0.05 and foreground.pages_running() == 0


def test_background_work_lets_the_browser_draw_after_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(foreground, "AFTER_RUN_S", 0.2)
    with foreground.page_run():
        pass
    assert foreground.yield_to_pages(60.0) >= 0.1  # the run just ended: its page is being drawn
    assert foreground.yield_to_pages(60.0) < 0.1  # long enough ago


def test_a_page_run_that_fails_is_over() -> None:
    try:
        with foreground.page_run():
            raise RuntimeError("st.stop()")
    except RuntimeError:
        pass
    assert foreground.pages_running() == 0


def test_background_work_does_not_wait_for_a_page_that_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page run waiting for background work (foreground.waiting_for_background) lets that work go on at once:
    else each would wait for the other until the background's limit."""
    monkeypatch.setattr(foreground, "AFTER_RUN_S", 0.0)
    with foreground.page_run():
        waiter = threading.Thread(target=foreground.yield_to_pages, args=(60.0,))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # a page runs: the background step waits
        with foreground.waiting_for_background():
            waiter.join(10)  # woken: the page now waits for it
            assert not waiter.is_alive()
            assert foreground.yield_to_pages(60.0) < 1.0
        waited = foreground.yield_to_pages(0.05)  # the page no longer waits for it: yield again
    assert waited >= 0.05
