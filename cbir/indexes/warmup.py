"""Compile (or load from numba's on-disk cache) every kernel once per process, before timed work."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from cbir.indexes import kernels
from cbir.indexes.base import BaseIndex
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.polytope import CrossPolytopeIndex
from cbir.indexes.scan import SequentialScan

_WARM = False


WARM_UP_STAGE = "loading the numba kernels"  # the stage name of warm_up's progress


def warm_up(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Compile (or load from numba's cache) every kernel on tiny inputs, once per process.

    Called before timed work so that ``fit_seconds`` / ``search_seconds`` measure the algorithms, not the JIT.
    ``progress(WARM_UP_STAGE, done, total)`` after each group of kernels (a few seconds in all on two busy cores).
    """
    global _WARM
    if _WARM:
        return
    rng = np.random.default_rng(0)
    points = rng.standard_normal((16, 4)).astype(np.float32)

    def search(index: BaseIndex) -> None:
        """A batch (the parallel kernels) and a single query (their serial twins, :mod:`cbir.indexes.threads`)."""
        index.search(points[:2], 3)
        index.search(points[:1], 3)

    def scan(metric: str) -> None:
        search(SequentialScan(metric).fit(points))  # type: ignore[arg-type]

    def lsh(metric: str) -> None:
        index = LSHIndex(2, 2, 1.0, metric=metric, probes=1).fit(points)  # type: ignore[arg-type]
        search(index)
        index.probes = 0
        search(index)
        index.candidates(points[:2])
        index.add(points[:2])  # merge_tables
        reduced = LSHIndex(2, 2, 1.0, metric=metric, reduce_dim=2, rerank=2)  # type: ignore[arg-type]
        search(reduced.fit(points))

    def polytope(options: dict[str, int]) -> None:
        index = CrossPolytopeIndex(2, 1, **options).fit(points)
        search(index)
        index.candidates(points[:2])

    def blocks(metric: str) -> None:
        index = BlockPolytopeIndex(2, 1, metric=metric, probes=1, reduce_dim=2, rerank=2, score_dim=3)  # type: ignore[arg-type]
        index.fit(points)
        index.search(points[:2], 3)  # the parallel kernels
        index.search(points[:1], 3)  # one query: the serial ones

    steps = [functools.partial(step, metric) for metric in kernels.METRIC_CODES for step in (scan, lsh, blocks)]
    for options in ({"probes": 0}, {"probes": 2, "reduce_dim": 2, "rerank": 2}):
        steps.append(functools.partial(polytope, options))
    for done, step in enumerate(steps):
        if progress is not None:
            progress(WARM_UP_STAGE, done, len(steps))
        step()
    if progress is not None:
        progress(WARM_UP_STAGE, len(steps), len(steps))
    _WARM = True
