"""The threading policy (cbir.indexes.threads): a single query runs numba's serial kernels and BLAS on one thread
(but for a wide product: the scan's), nested and concurrent single queries restore BLAS' threads only when the last
one ends, and the answers are the batch's. Speed is measured by benchmarks/single_query.py, not here."""

from __future__ import annotations

import itertools
import os
import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cbir.indexes import kernels, threads
from cbir.indexes.registry import IndexConfig


def _blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries a single query's products run on: numpy's and scipy's. (FAISS bundles an
    OpenBLAS 0.3.15 whose count cannot be set from a second thread; a single query never calls it: HNSW computes
    its distances itself, and so does FAISS' flat coarse step for fewer than 20 queries.)"""
    return [
        pool["num_threads"]
        for pool in threadpool_info()
        if pool["user_api"] == "blas" and "faiss" not in pool["filepath"]
    ]


def test_single_query_nests_and_limits_blas_to_one_thread() -> None:
    before = _blas_threads()
    assert before, "numpy's BLAS is visible to threadpoolctl"
    assert not threads.in_single_query()
    with threads.single_query():
        assert threads.in_single_query() and _blas_threads() == [1] * len(before)
        with threads.single_query():
            assert threads.in_single_query()
        assert threads.in_single_query() and _blas_threads() == [1] * len(before)
    assert not threads.in_single_query() and _blas_threads() == before
    with threads.queries(5):  # a batch keeps every core
        assert not threads.in_single_query() and _blas_threads() == before


def test_blas_limit_is_restored_by_the_last_thread_to_leave() -> None:
    before = _blas_threads()
    entered, release_first, first_left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        with threads.single_query():
            entered.set()
            release_first.wait(10)
        first_left.set()

    worker = threading.Thread(target=first)
    worker.start()
    assert entered.wait(10)
    assert not threads.in_single_query()  # the flag is per thread
    with threads.single_query():
        release_first.set()
        assert first_left.wait(10)
        seen["while second runs"] = _blas_threads()
    worker.join()
    assert seen["while second runs"] == [1] * len(before)  # the first thread's exit did not restore it early
    assert _blas_threads() == before


def test_wide_product_gives_a_single_query_blas_threads_back_for_its_block() -> None:
    before = _blas_threads()
    with threads.wide_product():  # a batch: nothing to give back
        assert _blas_threads() == before
    with threads.single_query():
        with threads.wide_product():
            assert threads.in_single_query() and _blas_threads() == before
            with threads.wide_product():
                assert _blas_threads() == before
            assert _blas_threads() == before  # the outer block still holds them
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_wide_product_holds_blas_threads_until_the_last_thread_leaves_it() -> None:
    before = _blas_threads()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with threads.single_query(), threads.wide_product():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=other)
    worker.start()
    assert inside.wait(10)
    with threads.single_query():
        assert _blas_threads() == before  # another thread's wide block is open
        with threads.wide_product():
            release.set()
            worker.join(10)
            assert _blas_threads() == before  # its exit did not take them back early
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_wide_or_narrow_times_both_ways_then_keeps_the_faster_and_still_tries_the_other() -> None:
    chooser = threads.WideOrNarrow()
    before, seen = _blas_threads(), []
    a, b = np.ones((1, 3), dtype=np.float32), np.ones((3, 2), dtype=np.float32)

    def spy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        seen.append(_blas_threads())
        return x @ y

    with threads.single_query():
        for _ in range(2):
            assert (chooser.matmul(_Spied(a, spy), b) == 3).all()
    assert seen == [before, [1] * len(before)] and all(chooser._seconds.values())  # each way timed once
    chooser = threads.WideOrNarrow()
    for way, times in ((True, [1.0, 1.0, 9.0]), (False, [2.0, 2.0, 2.0])):  # wide faster, one slow call aside
        for seconds in times:
            chooser._record(way, seconds)
    step = chooser.explore_seconds / 9.99  # ten picks per period
    assert chooser._pick(1000.0 - step) is False  # the first query of a stream comes after a pause: one thread
    picks = [chooser._pick(1000.0 + i * step) for i in range(30)]  # 3 explore periods
    assert picks.count(False) == 3 and picks[8] is False and picks[18] is False  # the other way once per period
    for seconds in [3.0, 3.0, 3.0]:  # wide now slower (a busy machine): narrow from then on
        chooser._record(True, seconds)
    assert sum(chooser._pick(2000.0 + i * step) for i in range(10)) == 1
    # a stream of queries 50 ms apart: the faster way but once in explore_calls + 1 (by time alone: one in four)
    gap = chooser.stream_gap_seconds / 2
    stream = [chooser._pick(3000.0 + gap * i) for i in range(4 * (chooser.explore_calls + 1))]
    tried = [i for i, wide in enumerate(stream) if wide]
    assert len(tried) == 4 and {b - a for a, b in itertools.pairwise(tried)} == {chooser.explore_calls + 1}
    for seconds in [7.0, 7.0, 7.0, 7.0]:  # the one thread preempted now and then: its best still beats wide's median
        chooser._record(False, seconds)
    assert not chooser._wide_faster
    assert (chooser.matmul(a, b) == 3).all() and len(chooser._seconds[True]) == chooser.window  # a batch: untimed
    # a person's queries, seconds apart: one thread, even where the wide way was measured faster in a stream
    for seconds in [1.0] * chooser.window:
        chooser._record(True, seconds)
    assert chooser._wide_faster
    assert not any(chooser._pick(4000.0 + 2.0 * i) for i in range(2 * (chooser.explore_calls + 1)))
    again = [chooser._pick(4100.0 + gap * i) for i in range(chooser.explore_calls + 1)]  # a stream again
    assert again[0] is False and again.count(True) >= chooser.explore_calls - 1  # after its first: the faster way


class _Spied(np.ndarray):
    """An array whose ``@`` runs ``spy`` (to see BLAS' thread counts while the product runs)."""

    def __new__(cls, array: np.ndarray, spy: object) -> _Spied:
        spied = np.asarray(array).view(cls)
        spied.spy = spy
        return spied

    def __matmul__(self, other: np.ndarray) -> np.ndarray:
        return self.spy(np.asarray(self), other)


def _kernels_of(kind: str) -> tuple[tuple[object, str], tuple[object, str]]:
    """(owner, attribute) of the kind's single-query kernel and of its batch kernel, as its search looks them up."""
    if kind == "cross_polytope":  # BlockPolytopeIndex: one query in one serial numba call, a batch in parallel
        from cbir.indexes import blocks

        return (blocks, "one_block_query"), (kernels.blocks, "_block_kernel")
    twin = kernels.topk._rerank_kernel if kind == "scan" else kernels.query._lsh_kernel  # serial and parallel twins
    return (twin, "serial"), (twin, "parallel")


@pytest.mark.parametrize("kind", ["scan", "lsh", "cross_polytope"])
def test_single_queries_use_the_serial_kernels_and_answer_as_the_batch(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(1).standard_normal((600, 24)).astype(np.float32)
    index = IndexConfig(kind, bucket_width=6.0, probes=1).build().fit(data)  # type: ignore[arg-type]
    queries = data[:12] + 0.05
    calls: list[str] = []
    for label, (owner, name) in zip(("single", "batch"), _kernels_of(kind), strict=True):
        kernel = getattr(owner, name)

        def recorded(*args: object, _kernel: object = kernel, _label: str = label, **kw: object) -> object:
            calls.append(_label)
            return _kernel(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(owner, name, recorded)
    batch = index.search(queries, 5)
    assert calls == ["batch"], "the batch ran the parallel kernel"
    singles = [index.search(queries[i : i + 1], 5) for i in range(len(queries))]
    assert calls == ["batch"] + ["single"] * len(queries), "each single query ran the serial one, and only it"
    np.testing.assert_array_equal(np.vstack([s.ids for s in singles]), batch.ids)
    np.testing.assert_allclose(np.vstack([s.distances for s in singles]), batch.distances, rtol=1e-6)


def test_the_threading_layer_is_a_thread_safe_one() -> None:
    if "NUMBA_THREADING_LAYER" not in os.environ:
        assert numba.config.THREADING_LAYER == threads.THREADING_LAYER == "threadsafe"
