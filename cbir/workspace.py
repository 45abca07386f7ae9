"""What is built: the feature sets under ``artifacts/features`` and how to pick one.

The CLI, the benchmarks and the app all find feature sets through here, so "which features does the default
collection have" has one answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cbir import config
from cbir.collection import collection_id
from cbir.features import FEATURES_KIND, FeatureSet, load_features
from cbir.storage import ArtifactError, load_artifact


def feature_files(collection: str | os.PathLike[str] | None = None) -> list[Path]:
    """Feature artifacts, newest first; only those of ``collection`` when given."""
    root = config.artifacts_dir() / "features"
    if collection is not None:
        root = root / collection_id(collection)
    files = root.rglob("*.joblib") if root.is_dir() else []
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def list_feature_sets(collection: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per feature artifact: backbone, weights, collection, images, rejected, dim, created, path, status."""
    rows = []
    for path in feature_files(collection):
        try:
            meta = load_artifact(path, FEATURES_KIND)["meta"]
            status = "complete" if meta.get("complete") else "interrupted"
        except (ArtifactError, KeyError) as exc:
            meta, status = {}, f"unusable: {exc}"
        rows.append(
            {
                "backbone": meta.get("backbone"),
                "weights": meta.get("weights_id"),
                "collection": meta.get("collection_id"),
                "images": meta.get("n_images"),
                "rejected": meta.get("n_rejected"),
                "dim": meta.get("dim"),
                "created": meta.get("created"),
                "status": status,
                "path": str(path),
            }
        )
    return pd.DataFrame(
        rows, columns=["backbone", "weights", "collection", "images", "rejected", "dim", "created", "status", "path"]
    )


def resolve_feature_set(
    features: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    collection: str | os.PathLike[str] | None = None,
    weights: str | None = None,
) -> FeatureSet:
    """Load ``features`` if given, else the newest complete feature set of ``backbone`` (any when ``None``) whose
    weights id contains ``weights`` (e.g. ``"imagenet"``, ``"model1-dense256"``; any when ``None``) for
    ``collection`` (default collection when ``None``). Raises ``FileNotFoundError`` with the command to run."""
    if features is not None:
        return load_features(features)
    collection = collection if collection is not None else config.default_collection()
    table = list_feature_sets(collection)
    table = table[table["status"] == "complete"]
    if backbone is not None:
        table = table[table["backbone"] == backbone]
    if weights is not None:
        table = table[table["weights"].str.contains(weights, regex=False)]
    if table.empty:
        wanted = " ".join(part for part in (backbone, weights and f"weights~{weights}") if part)
        raise FileNotFoundError(
            f"no feature set{' for ' + wanted if wanted else ''} of collection {collection}; run: "
            f"python -m cbir extract --collection {collection} --backbone {backbone or 'efficientnet_lite0'}"
        )
    return load_features(table.iloc[0]["path"])
