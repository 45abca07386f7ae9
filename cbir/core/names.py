"""The names every module shares: metrics, index kinds and what a result's score is called.

One place, so that a new metric or index kind is added once (the CLI choices, the pages' select boxes, the result
tables and the figures all read these).
"""

from __future__ import annotations

from typing import Literal

Metric = Literal["euclidean", "cosine"]
IndexKind = Literal["scan", "lsh", "hnsw", "ivf_flat", "hnswlib", "cross_polytope"]

METRICS: tuple[Metric, ...] = ("euclidean", "cosine")
INDEX_KINDS: tuple[IndexKind, ...] = ("scan", "lsh", "hnsw", "ivf_flat", "hnswlib", "cross_polytope")
# the reference points beside the scan and E2LSH on the tuning and comparison pages (not on E2LSH's frontier): the
# field's indexes (cbir.indexes.reference) and our cross-polytope LSH (cbir.indexes.polytope)
REFERENCE_KINDS: tuple[IndexKind, ...] = ("hnsw", "ivf_flat", "hnswlib", "cross_polytope")
# what the pages and tables call them
METRIC_LABELS: dict[str, str] = {"euclidean": "Euclidean distance", "cosine": "Cosine similarity"}
INDEX_LABELS: dict[str, str] = {
    "scan": "exact scan",
    "lsh": "LSH",
    "hnsw": "HNSW (faiss)",
    "ivf_flat": "IVF-Flat (faiss)",
    "hnswlib": "HNSW (hnswlib)",
    "cross_polytope": "cross-polytope LSH",
}


def score_name(metric: str) -> str:
    """What a result's score is under ``metric``: ``"distance"`` (euclidean, lower is closer) or ``"similarity"``
    (cosine, higher is closer)."""
    return "distance" if metric == "euclidean" else "similarity"
