"""Distance analysis of a feature set (paper Section 4.1): how far apart the features are.

The paper reports, for the training set, the mean euclidean distance and the mean cosine similarity over all
pairs of distinct objects, then the mean euclidean distance per class (pairs within the class). Both are
computed here with matrix products in blocks, on a deterministic random sample when the set is large.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cbir.indexes.base import l2_normalize

PAIR_CHUNK = 2048  # pairwise_distance_sample's pairs per step (two chunks of rows stay in the cache)


def _pair_means(features: np.ndarray, block: int = 1024) -> tuple[float, float]:
    """Mean euclidean distance and mean cosine similarity over unordered pairs of distinct rows (float64 sums).

    One matrix product per block of rows, against the rows from the block on (each pair once), gives both:
    ``|a - b|² = |a|² + |b|² - 2 a·b`` and ``cos = a·b / (|a| |b|)`` (a zero row has similarity 0 to anything)."""
    n = len(features)
    if n < 2:
        return float("nan"), float("nan")
    x = np.ascontiguousarray(features, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    norms = np.sqrt(sq)
    inverse = 1.0 / np.where(norms > 0, norms, np.inf)
    dist_sum = 0.0
    cos_sum = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        dots = (x[start:stop] @ x[start:].T).astype(np.float64)  # (rows of the block, rows from the block on)
        below = np.tril_indices(stop - start)  # a row with itself or with an earlier row of the block
        distances = np.sqrt(np.maximum(sq[start:stop, None] + sq[None, start:] - 2.0 * dots, 0.0))
        distances[below] = 0.0
        dots *= inverse[start:stop, None]
        dots *= inverse[None, start:]
        dots[below] = 0.0
        dist_sum += float(distances.sum())
        cos_sum += float(dots.sum())
    n_pairs = n * (n - 1) / 2
    return dist_sum / n_pairs, cos_sum / n_pairs


def distance_table(
    features: np.ndarray,
    labels: np.ndarray,
    max_samples: int = 3000,
    seed: int = 0,
    max_class_samples: int = 1000,
) -> pd.DataFrame:
    """Mean euclidean distance and mean cosine similarity, overall (first row, ``class="(all)"``) and per class.

    ``features``: (n, d) float (a memory map is fine: only the sampled rows are read); ``labels``: (n,) class names
    (``None`` rows are ignored). The whole set when larger than ``max_samples``, and a class when larger than
    ``max_class_samples``, are replaced by a seeded random sample of that size (a million objects in 100 classes:
    the per-class means would otherwise cost 100 times the overall one). Columns: class, n_objects, n_sampled,
    mean_euclidean, mean_cosine.
    """
    labels = np.asarray(labels, dtype=object)
    if np.ndim(features) != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (n, d) with one label per row, got {features.shape} and {labels.shape}")
    kept = np.flatnonzero(pd.notna(labels))  # row numbers, in order: nothing is copied but the samples
    codes, names = pd.factorize(labels[kept])
    rng = np.random.default_rng(seed)

    def row(name: str, rows: np.ndarray, limit: int) -> dict:
        sample = rows if len(rows) <= limit else rows[rng.choice(len(rows), limit, replace=False)]
        mean_euclidean, mean_cosine = _pair_means(np.asarray(features[sample], dtype=np.float32))
        return {
            "class": name,
            "n_objects": len(rows),
            "n_sampled": len(sample),
            "mean_euclidean": mean_euclidean,
            "mean_cosine": mean_cosine,
        }

    table = [row("(all)", kept, max_samples)]
    for code, name in sorted(enumerate(names), key=lambda item: item[1]):
        table.append(row(str(name), kept[codes == code], min(max_samples, max_class_samples)))
    return pd.DataFrame(table)


def pairwise_distance_sample(
    features: np.ndarray, n_pairs: int = 20000, seed: int = 0, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """Euclidean distances and cosine similarities of ``n_pairs`` random pairs of distinct rows (of ``rows``, row
    numbers, when given), for histograms; only the paired rows are read."""
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    n = len(rows)
    if n < 2:
        return pd.DataFrame({"euclidean": [], "cosine": []})
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # never i itself
    # each paired row read once (in order: a memory map reads its pages once), then the pairs a chunk at a time
    wanted, where = np.unique(np.concatenate([i, j]), return_inverse=True)
    vectors = np.asarray(features[rows[wanted]], dtype=np.float32)
    units = l2_normalize(vectors)
    a, b = where[:n_pairs], where[n_pairs:]
    euclidean = np.empty(n_pairs, dtype=np.float32)
    cosine = np.empty(n_pairs, dtype=np.float32)
    for start in range(0, n_pairs, PAIR_CHUNK):
        part = slice(start, start + PAIR_CHUNK)
        euclidean[part] = np.linalg.norm(vectors[a[part]] - vectors[b[part]], axis=1)
        cosine[part] = np.einsum("ij,ij->i", units[a[part]], units[b[part]])
    return pd.DataFrame({"euclidean": euclidean, "cosine": cosine})
