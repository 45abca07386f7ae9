"""Ranking metrics as pure functions of arrays (they import no index): AP@k against labels, recall@k against the
exact scan's answers, and what counts as unlabelled. The evaluation (:mod:`cbir.evaluation`) and the indexes that
tune themselves to a target recall (:class:`cbir.indexes.lsh.LSHIndex`) both use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def is_unlabelled(label: Any) -> bool:
    """True for the distractor markers ``None``, NaN, ``""`` and ``-1``."""
    if label is None or label is pd.NA or (isinstance(label, str) and label == ""):
        return True
    if isinstance(label, (int, float, np.integer, np.floating)) and not isinstance(label, bool):
        return bool(np.isnan(label)) or label == -1
    return False


def _unlabelled_mask(labels: Sequence[Any] | pd.Series) -> np.ndarray:
    """:func:`is_unlabelled` of every label, vectorised (a million labels in well under a second; a column of
    pandas strings, as a store's catalog holds, without turning it into a million Python objects)."""
    series = _as_series(labels)
    mask = series.isna().to_numpy(dtype=bool, copy=True)  # None, NaN, pd.NA (a copy: written below)
    if series.dtype != object and pd.api.types.is_string_dtype(series.dtype):
        return mask | series.eq("").to_numpy(dtype=bool, na_value=False)
    rest = series.to_numpy(dtype=object)[~mask]
    mask[~mask] = np.asarray(rest == "", dtype=bool) | np.asarray(rest == -1, dtype=bool)  # booleans are never -1
    return mask


def _as_series(values: Sequence[Any] | pd.Series) -> pd.Series:
    """``values`` as a pandas Series indexed 0..n-1 (a Series is kept with its dtype; anything else becomes an
    object Series). Raises ``ValueError`` for anything that is not one-dimensional."""
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    array = np.asarray(values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"expected a one-dimensional sequence, got shape {array.shape}")
    return pd.Series(array, dtype=object)


def average_precision_at_k(
    retrieved_labels: Sequence[Any], query_label: Any, n_relevant_in_index: int, k: int = 10
) -> float:
    """AP@k of one ranked result list.

    ``AP@k = (1 / min(k, R)) * Σ_{i=1..k} P@i · rel_i`` where ``rel_i`` is 1 when the i-th result has the
    query's label, ``P@i = (Σ_{j<=i} rel_j) / i`` and ``R = n_relevant_in_index`` is the number of indexed
    objects with the query's label. ``AP = 0`` when ``R = 0``. Unlabelled results (``None``, NaN, ``""``,
    ``-1``: distractors or padding of a short result list) are never relevant. Only the first ``k`` results
    count, in the order given (the index returns them by (distance, id)).

    Args:
        retrieved_labels: labels of the returned objects, best first (may be shorter than k).
        query_label: the query's label; an unlabelled query has AP 0.
        n_relevant_in_index: R >= 0.
        k: cut-off >= 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_relevant_in_index < 0:
        raise ValueError(f"n_relevant_in_index must be >= 0, got {n_relevant_in_index}")
    if n_relevant_in_index == 0 or is_unlabelled(query_label):
        return 0.0
    hits = 0
    total = 0.0
    for rank, label in enumerate(list(retrieved_labels)[:k], start=1):
        if not is_unlabelled(label) and label == query_label:
            hits += 1
            total += hits / rank
    return total / min(k, n_relevant_in_index)


def average_precision_batch(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Vectorised AP@k (same formula as :func:`average_precision_at_k`).

    Args:
        relevant: (m, k) bool, ``relevant[i, j]`` = the j-th result of query i is relevant.
        n_relevant: (m,) int, R of each query.

    Returns:
        (m,) float64 AP values.
    """
    relevant = np.asarray(relevant, dtype=bool)
    k = relevant.shape[1]
    precision_at = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    gained = (precision_at * relevant).sum(axis=1)
    denominator = np.minimum(k, np.asarray(n_relevant))
    return np.divide(gained, denominator, out=np.zeros(len(relevant)), where=denominator > 0)


def recall_at_k(ids: np.ndarray, exact_ids: np.ndarray, k: int | None = None) -> np.ndarray:
    """Recall@k of approximate answers against the exact scan's: the share of the exact top-k that is returned.

    ``recall_i = |ids[i, :k] ∩ exact_ids[i, :k]| / |exact_ids[i, :k]|`` (padding ``-1`` is ignored on both sides;
    a query whose exact answer is empty has recall 1). This is the ANN field's figure of merit (ann-benchmarks,
    FAISS): it says whether an index returns the true nearest neighbours, whatever their labels.

    Args:
        ids: (m, >=k) int, the approximate results, best first.
        exact_ids: (m, >=k) int, the exact scan's results for the same queries and metric.
        k: cut-off; defaults to ``exact_ids.shape[1]``.

    Returns:
        (m,) float64 recall values in [0, 1].
    """
    ids = np.asarray(ids)
    exact_ids = np.asarray(exact_ids)
    if ids.ndim != 2 or exact_ids.ndim != 2 or len(ids) != len(exact_ids):
        raise ValueError(f"ids {ids.shape} and exact_ids {exact_ids.shape} must be (m, k) arrays of equal m")
    k = exact_ids.shape[1] if k is None else int(k)
    if k < 1 or k > exact_ids.shape[1] or k > ids.shape[1]:
        raise ValueError(f"k must be in [1, {min(ids.shape[1], exact_ids.shape[1])}], got {k}")
    approx, exact = ids[:, :k], exact_ids[:, :k]
    valid_exact = exact >= 0
    # (m, k, k) membership test: k is small (10), so this is cheap and needs no per-row Python loop
    found = (exact[:, :, None] == approx[:, None, :]).any(axis=2) & valid_exact
    n_exact = valid_exact.sum(axis=1)
    return np.divide(found.sum(axis=1), n_exact, out=np.ones(len(ids)), where=n_exact > 0)
