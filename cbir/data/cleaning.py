"""Cleaning a collection with hygiene's verdicts (:mod:`cbir.data.hygiene`): :func:`clean` keeps one image of each
duplicate group (deterministically: a labelled one first, then an indexed one, then the shortest relative path) and
leaves blanks out; ``keep_all=True`` keeps everything and only reports. It sits above both the catalog
(:mod:`cbir.data.collection`) and hygiene, which the catalog's duplicate-aware split uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cbir.core import config
from cbir.data.collection import Catalog, scan_collection
from cbir.data.hygiene import (
    NEAR_DUPLICATE_RADIUS,
    REPORT_COLUMNS,
    FingerprintCache,
    HygieneError,
    assess,
    fingerprint_files,
)


def _catalog_preference(images: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Keep a labelled image before a distractor, then an indexed one before a query, then the shortest path."""
    role_rank = {"index": 0, "query": 1, "distractor": 2}
    return [
        (label is None or label != label, role_rank.get(role, 3), len(rel), rel)
        for label, role, rel in zip(images["label"], images["role"], images["relpath"], strict=True)
    ]


def clean(
    catalog_or_paths: Catalog | Sequence[str | os.PathLike[str]],
    keep_all: bool = False,
    radius: int = NEAR_DUPLICATE_RADIUS,
    workers: int = 2,
    cache: FingerprintCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Catalog | list[str], pd.DataFrame]:
    """Leave out blank images and all but one of each duplicate group.

    ``catalog_or_paths``: a :class:`cbir.data.collection.Catalog` or a list of image files. Returns ``(kept, report)``:
    the catalog without the flagged images (or the list of kept paths) and one report row per flagged image
    (columns ``path``, ``reason``, ``duplicate_of``). With ``keep_all=True`` nothing is left out, the report
    still lists what would have been. Files that cannot be decoded are left out of ``kept`` and reported with
    the decoder's reason.
    """
    if isinstance(catalog_or_paths, Catalog):
        images = catalog_or_paths.images
        paths = images["path"].astype(str).tolist()
        preference: list[Any] | None = _catalog_preference(images)
    else:
        paths = [str(p) for p in catalog_or_paths]
        preference = None
    if not paths:
        raise HygieneError("no images to check")
    fingerprints, errors = fingerprint_files(paths, workers=workers, cache=cache, progress=progress)
    verdicts = assess(fingerprints, paths, preference, radius)
    flagged = verdicts[verdicts["reason"].notna()]
    report = pd.concat(
        [
            flagged[REPORT_COLUMNS],
            pd.DataFrame({"path": list(errors), "reason": list(errors.values()), "duplicate_of": None}),
        ],
        ignore_index=True,
    )
    keep = verdicts["content_fraction"].notna() if keep_all else verdicts["keep"]
    if isinstance(catalog_or_paths, Catalog):
        left_out = report[~report["path"].isin(np.asarray(paths)[keep.to_numpy()])]
        merged_report = pd.concat([catalog_or_paths.report, left_out[["path", "reason"]]], ignore_index=True)
        kept_catalog = Catalog(
            root=catalog_or_paths.root,
            images=catalog_or_paths.images[keep.to_numpy()].reset_index(drop=True),
            report=merged_report.drop_duplicates("path").reset_index(drop=True),
        )
        return kept_catalog, report.reset_index(drop=True)
    return [p for p, k in zip(paths, keep, strict=True) if k], report.reset_index(drop=True)


def clean_collection(
    root: str | os.PathLike[str],
    distractor_dirs: Sequence[str | os.PathLike[str]] = (),
    keep_all: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Catalog, pd.DataFrame]:
    """Scan a collection for feature extraction: a duplicate-aware split (for a one-folder-per-class layout) and,
    unless ``keep_all``, blanks and all but one image of each duplicate group left out (listed in the catalog's
    report with their reason). Fingerprints are cached under the artifacts folder, so a rescan decodes only new
    files. Returns ``(catalog, flagged)`` as :func:`clean` does."""
    catalog = scan_collection(root, distractor_dirs, group_duplicates=True)
    cache = FingerprintCache(config.fingerprint_cache_path())
    kept, flagged = clean(catalog, keep_all=keep_all, cache=cache, progress=progress)
    assert isinstance(kept, Catalog)
    return kept, flagged
