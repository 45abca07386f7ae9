"""Hubness: how concentrated the answers of a k-NN search are.

In high-dimensional feature spaces a few objects (hubs) turn up in the top-k of very many queries, whatever the
query shows (Radovanović et al., JMLR 2010). A collection with blank or near-empty images makes them hubs: they
sit near the centre of the feature space and answer every query that resembles nothing in the collection.

Two figures, both computed from the (m, k) ``ids`` an index returns (``-1`` is padding):

* ``hub_share``: the share of all top-k slots held by the ``top_fraction`` (1 %) most frequent results — with no
  hubs it is close to ``top_fraction``, with strong hubs it is many times larger;
* ``k_occurrence_skewness``: the skewness of N_k, the number of times each indexed object is returned (the
  measure of the hubness literature; 0 for a symmetric distribution, large and positive with hubs).

Out-of-domain queries (a few photos against a collection of drawings) are too few for their own 1 % statistic:
:func:`hubness_summary` reports the share of their slots that land on the in-domain hubs instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_TOP_FRACTION = 0.01


def k_occurrence(ids: np.ndarray, n_objects: int) -> np.ndarray:
    """N_k of every indexed object: how many of the (m, k) result slots ``ids`` it fills ((n_objects,) int64)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be an (m, k) array, got shape {ids.shape}")
    returned = ids[ids >= 0]
    if returned.size and returned.max() >= n_objects:
        raise ValueError(f"ids reach {int(returned.max())} but only {n_objects} objects are indexed")
    return np.bincount(returned, minlength=n_objects).astype(np.int64)


def hubs(ids: np.ndarray, n_objects: int, top_fraction: float = DEFAULT_TOP_FRACTION) -> np.ndarray:
    """Ids of the ``ceil(top_fraction · n_objects)`` most frequent results (ties: lower id first), (h,) int64."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    counts = k_occurrence(ids, n_objects)
    n_hubs = max(1, int(np.ceil(top_fraction * n_objects)))
    order = np.lexsort((np.arange(n_objects), -counts))  # by count descending, then id
    return order[:n_hubs].astype(np.int64)


def hub_share(ids: np.ndarray, n_objects: int, top_fraction: float = DEFAULT_TOP_FRACTION) -> float:
    """Share of all returned top-k slots held by the ``top_fraction`` most frequent results, in [0, 1]."""
    counts = k_occurrence(ids, n_objects)
    total = counts.sum()
    if total == 0:
        return float("nan")
    return float(counts[hubs(ids, n_objects, top_fraction)].sum() / total)


def k_occurrence_skewness(ids: np.ndarray, n_objects: int) -> float:
    """Skewness of the N_k distribution over all indexed objects (NaN when every object is returned equally)."""
    counts = k_occurrence(ids, n_objects).astype(np.float64)
    centred = counts - counts.mean()
    spread = np.sqrt((centred**2).mean())
    if spread == 0.0:
        return float("nan")
    return float((centred**3).mean() / spread**3)


def hubness_summary(
    ids: np.ndarray,
    n_objects: int,
    out_of_domain_ids: np.ndarray | None = None,
    top_fraction: float = DEFAULT_TOP_FRACTION,
) -> dict[str, float]:
    """The hubness figures of one search setting, for a results table.

    Args:
        ids: (m, k) int results of the in-domain (validation) queries.
        n_objects: number of indexed objects the ids refer to.
        out_of_domain_ids: optional (p, k) int results of out-of-domain queries (e.g. photos) on the same index.

    Returns:
        ``hub_share`` and ``k_skewness`` of the in-domain answers; with out-of-domain answers also
        ``ood_hub_share`` (share of their slots held by the in-domain hubs) and ``ood_distinct`` (distinct
        objects returned / slots: 1 when every photo gets its own answers, small when all get the same few).
    """
    summary = {
        "hub_share": hub_share(ids, n_objects, top_fraction),
        "k_skewness": k_occurrence_skewness(ids, n_objects),
    }
    if out_of_domain_ids is not None:
        ood = np.asarray(out_of_domain_ids)
        returned = ood[ood >= 0]
        hub_set = hubs(ids, n_objects, top_fraction)
        summary["ood_hub_share"] = float(np.isin(returned, hub_set).mean()) if returned.size else float("nan")
        summary["ood_distinct"] = float(len(np.unique(returned)) / returned.size) if returned.size else float("nan")
    return summary


def top_hubs(ids: np.ndarray, n_objects: int, n: int = 10) -> pd.DataFrame:
    """The ``n`` most frequent results: columns id, count, share (of all returned slots)."""
    counts = k_occurrence(ids, n_objects)
    order = np.lexsort((np.arange(n_objects), -counts))[:n]
    total = max(int(counts.sum()), 1)
    return pd.DataFrame({"id": order, "count": counts[order], "share": counts[order] / total})
