"""Settings chosen at fit time from a target recall: indexed rows used as queries, each ignoring itself.

An index fitted with a ``target_recall`` (:class:`cbir.indexes.lsh.LSHIndex`'s probes,
:class:`cbir.indexes.blocks.BlockPolytopeIndex`'s probes and shortlist) measures its recall@k on a sample of the
rows it indexes, searched as queries: the exact answer is the scan's top k + 1 without the row itself, and so is the
index's (leave-one-out: no separate validation set is needed, and the sample follows the indexed data).
"""

from __future__ import annotations

from numbers import Real
from typing import Any, NamedTuple

import numpy as np

from cbir.indexes.scan import SequentialScan


class PseudoQueries(NamedTuple):
    """A leave-one-out sample: ``rows`` (m,) int64 ascending, ``queries`` (m, d) float32 (those rows of the data),
    ``exact`` (m, k) int64: each row's exact k nearest other rows (-1 padded when n <= k)."""

    rows: np.ndarray
    queries: np.ndarray
    exact: np.ndarray


def check_target_recall(value: Any) -> float | None:
    """None, or a recall in (0, 1] as a float (ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"target_recall must be a number in (0, 1], got {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {value}")
    return float(value)


def pseudo_queries(data: np.ndarray, metric: str, seed: int, size: int, k: int) -> PseudoQueries:
    """``size`` rows of ``data`` (n, d) float32 drawn with ``seed``, and their exact ``k`` nearest other rows."""
    n = len(data)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))
    queries = data[rows]
    exact = SequentialScan(metric).fit(data).search(queries, k + 1).ids  # type: ignore[arg-type]
    return PseudoQueries(rows, queries, without_self(exact, rows, k))


def without_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of each row that are not the row's own id (rows of ``ids``: (m, >= k+1))."""
    mask = ids != own[:, None]
    kept = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        values = ids[row][mask[row]][:k]
        kept[row, : len(values)] = values
    return kept
