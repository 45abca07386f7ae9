"""Data-driven bucket widths of E2LSH (the paper's w): a fraction of the median pairwise distance of a sample, so
that one rule suits features of any scale (the paper's ResNet50 and ResNet50V2 differ tenfold)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cbir.core.errors import ConfigError
from cbir.indexes.base import l2_normalize

_DEFAULT_WIDTH_FRACTION = 0.25
# the background sweeps' bucket widths, as multiples of the data-driven default (so the default is a sweep point)
DEFAULT_WIDTH_FACTORS = (0.5, 1.0, 2.0)


def default_bucket_width(
    features: np.ndarray,
    metric: str = "euclidean",
    fraction: float = _DEFAULT_WIDTH_FRACTION,
    sample_size: int = 512,
    seed: int = 0,
) -> float:
    """A data-driven starting bucket width: ``fraction`` × the median pairwise distance of a random sample.

    Feature scales differ a lot between backbones (the paper: mean Euclidean distance 3 for ResNet50 and 31
    for ResNet50V2), so a fixed w cannot suit both. ``fraction=0.25`` reproduces the paper's best ResNet50V2
    setting (w = 8 for mean distance 31). For ``metric="cosine"`` distances are measured between
    L2-normalised rows, the space :class:`~cbir.indexes.lsh.LSHIndex` hashes in.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) < 2:
        raise ConfigError(f"need a 2-D array with at least 2 rows, got shape {features.shape}")
    rng = np.random.default_rng(seed)
    sample = features[rng.choice(len(features), size=min(sample_size, len(features)), replace=False)]
    if metric == "cosine":
        sample = l2_normalize(sample)
    sample = sample.astype(np.float64)
    sq_norms = (sample**2).sum(axis=1)
    sq_distances = sq_norms[:, None] + sq_norms[None, :] - 2.0 * sample @ sample.T
    upper = np.triu_indices(len(sample), k=1)
    median = float(np.sqrt(np.maximum(np.median(sq_distances[upper]), 0.0)))
    if median <= 0.0:
        raise ConfigError("all sampled features are identical; cannot derive a bucket width")
    return fraction * median


def round_sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits: bucket widths that read well and are stable cache keys."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(round(value, digits - 1 - math.floor(math.log10(abs(value)))))


def default_width(features: np.ndarray, metric: str = "euclidean", seed: int = 0) -> float:
    """:func:`default_bucket_width` rounded to 3 significant digits: the bucket width every tool starts from (the
    CLI, the report, the pages' sliders and background sweeps)."""
    return round_sig(default_bucket_width(features, metric, seed=seed))


def width_grid(base: float, factors: Sequence[float] = DEFAULT_WIDTH_FACTORS) -> list[float]:
    """The bucket widths of a sweep: ``base`` × each factor, rounded to 3 significant digits (so ``base`` itself,
    already rounded by :func:`default_width`, is one of them)."""
    return [round_sig(base * factor) for factor in factors]
