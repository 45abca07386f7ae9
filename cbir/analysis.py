"""Distance analysis of a feature set (paper Section 4.1): how far apart the features are.

The paper reports, for the training set, the mean euclidean distance and the mean cosine similarity over all
pairs of distinct objects, then the mean euclidean distance per class (pairs within the class). Both are
computed here with matrix products in blocks, on a deterministic random sample when the set is large.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cbir.index import l2_normalize


def _pair_means(features: np.ndarray, block: int = 2048) -> tuple[float, float]:
    """Mean euclidean distance and mean cosine similarity over unordered pairs of distinct rows (float64 sums)."""
    n = len(features)
    if n < 2:
        return float("nan"), float("nan")
    x = features.astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    unit = l2_normalize(x)
    dist_sum = 0.0
    cos_sum = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        dots = x[start:stop] @ x.T
        d2 = np.maximum(sq[start:stop, None] + sq[None, :] - 2.0 * dots, 0.0)
        cos = unit[start:stop] @ unit.T
        rows = np.arange(start, stop)[:, None]
        upper = np.arange(n)[None, :] > rows  # each pair once, no self-pairs
        dist_sum += float(np.sqrt(d2)[upper].sum())
        cos_sum += float(cos[upper].sum(dtype=np.float64))
    n_pairs = n * (n - 1) / 2
    return dist_sum / n_pairs, cos_sum / n_pairs


def distance_table(features: np.ndarray, labels: np.ndarray, max_samples: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Mean euclidean distance and mean cosine similarity, overall (first row, ``class="(all)"``) and per class.

    ``features``: (n, d) float32; ``labels``: (n,) class names (``None`` rows are ignored). Sets larger than
    ``max_samples`` (overall, and per class) are replaced by a seeded random sample of that size.
    Columns: class, n_objects, n_sampled, mean_euclidean, mean_cosine.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=object)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (n, d) with one label per row, got {features.shape} and {labels.shape}")
    keep = np.array([label is not None for label in labels], dtype=bool)
    features, labels = features[keep], labels[keep]
    rng = np.random.default_rng(seed)

    def row(name: str, subset: np.ndarray) -> dict:
        sample = subset if len(subset) <= max_samples else subset[rng.choice(len(subset), max_samples, replace=False)]
        mean_euclidean, mean_cosine = _pair_means(sample)
        return {
            "class": name,
            "n_objects": len(subset),
            "n_sampled": len(sample),
            "mean_euclidean": mean_euclidean,
            "mean_cosine": mean_cosine,
        }

    rows = [row("(all)", features)]
    rows += [row(str(name), features[labels == name]) for name in sorted(set(labels.tolist()))]
    return pd.DataFrame(rows)


def pairwise_distance_sample(features: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> pd.DataFrame:
    """Euclidean distances and cosine similarities of ``n_pairs`` random pairs of distinct rows, for histograms."""
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if n < 2:
        return pd.DataFrame({"euclidean": [], "cosine": []})
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # never i itself
    a, b = features[i], features[j]
    euclidean = np.linalg.norm(a - b, axis=1)
    cosine = np.einsum("ij,ij->i", l2_normalize(a), l2_normalize(b))
    return pd.DataFrame({"euclidean": euclidean, "cosine": cosine})
