"""Collections: a folder of images turned into a catalog (pandas) of path, label, split and role.

Accepted layouts (the class of an image is the first folder below the split/collection root; deeper folders
are included)::

    root/<class>/*.jpg                                   # split made here: stratified, deterministic
    root/training_set/<class>/*  root/validation_set/<class>/*   # the paper's (Kaggle art) layout
    root/distractors/**/*                                # unlabelled distractors (e.g. MIRFlickr)

The split folders may sit a few levels down (``root/dataset/dataset_updated/training_set``) and distractor folders
can also be given explicitly. Roles: training split → ``index``, validation split → ``query``, distractors →
``distractor`` (indexed, never relevant).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbir.core import config
from cbir.core.errors import CbirError
from cbir.data import hygiene
from cbir.data.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image

TRAIN_NAMES = frozenset({"training_set", "train", "training", "trainset"})
VALIDATION_NAMES = frozenset({"validation_set", "validation", "val", "valid", "test", "test_set"})
DISTRACTOR_NAMES = frozenset({"distractors", "distractor", "mirflickr", "mirflickr25k"})
CATALOG_COLUMNS = ["path", "relpath", "label", "split", "role", "size", "mtime_ns"]


class CollectionError(CbirError, ValueError):
    """The folder is not a usable collection (missing, empty, no classes, no queries)."""


@dataclass
class Catalog:
    """The images of a collection and what could not be used.

    ``images``: one row per usable file (columns ``CATALOG_COLUMNS``; ``label`` is ``None`` for distractors).
    ``report``: one row per rejected file (columns ``path``, ``reason``).
    """

    root: Path
    images: pd.DataFrame
    report: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))

    @property
    def classes(self) -> list[str]:
        return sorted(self.images["label"].dropna().unique().tolist())

    def counts(self) -> pd.DataFrame:
        """Images per class (rows, distractors as ``(distractor)``) and split (columns)."""
        table = self.images.assign(label=self.images["label"].fillna("(distractor)"))
        counts = table.pivot_table(index="label", columns="role", values="path", aggfunc="count", fill_value=0)
        return counts.reindex(columns=[c for c in ("index", "query", "distractor") if c in counts.columns])


def collection_id(root: str | os.PathLike[str]) -> str:
    """A stable, readable id for artifact paths: folder name + short hash of the absolute path."""
    resolved = Path(root).resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    return f"{resolved.name}-{digest}"


def _iter_images(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name


def find_split_root(root: Path, max_depth: int = 3) -> Path | None:
    """The folder holding ``training_set``-like and validation folders, searched breadth-first."""
    frontier = [root]
    for _ in range(max_depth + 1):
        next_frontier = []
        for folder in frontier:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            names = {p.name.lower() for p in children}
            if names & TRAIN_NAMES:
                return folder
            next_frontier.extend(p for p in children if p.name.lower() not in DISTRACTOR_NAMES)
        frontier = next_frontier
    return None


def stratified_split(
    keys: Sequence[str],
    labels: Sequence[str],
    fraction: float = 0.1,
    groups: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """Deterministic, stratified, duplicate-aware validation split. Returns an (n,) bool mask (``True``:
    validation).

    Per class, ``max(1, round(n * fraction))`` images go to validation (none for a class of one image): the
    groups with the smallest hash first (a group's hash is the smallest SHA-1 of its members' ``keys``, e.g.
    relative paths). ``groups`` (one id per image, e.g. :func:`cbir.data.hygiene.assess`'s ``group``) keeps each
    duplicate group whole: a group goes to validation only if it fits within the quota of every class it spans,
    else it stays in training, so no validation image has a copy in training. Without groups every image is its
    own group and the split is the plain per-class hash rank.
    """
    n = len(keys)
    if len(labels) != n or (groups is not None and len(groups) != n):
        raise CollectionError("keys, labels and groups must have the same length")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    hashes = [hashlib.sha1(k.encode()).hexdigest() for k in keys]
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(range(n) if groups is None else groups):
        members.setdefault(group, []).append(i)
    sizes = Counter(labels)
    quota = {label: (max(1, round(size * fraction)) if size > 1 else 0) for label, size in sizes.items()}
    taken = dict.fromkeys(quota, 0)
    mask = np.zeros(n, dtype=bool)
    for indices in sorted(members.values(), key=lambda idx: min(hashes[i] for i in idx)):
        need = Counter(labels[i] for i in indices)
        if all(taken[label] + count <= quota[label] for label, count in need.items()):
            mask[indices] = True
            for label, count in need.items():
                taken[label] += count
    return mask


def _duplicate_groups(paths: list[str], workers: int) -> list[Hashable]:
    """Duplicate group of each file; an undecodable file is a group of its own (extraction reports it)."""
    cache = hygiene.FingerprintCache(config.fingerprint_cache_path())
    fingerprints, _ = hygiene.fingerprint_files(paths, workers=min(workers, 2), cache=cache)
    usable = [i for i, fp in enumerate(fingerprints) if fp is not None]
    groups: list[Hashable] = [("unusable", i) for i in range(len(paths))]
    for i, group in zip(usable, hygiene.duplicate_groups([fingerprints[i] for i in usable]), strict=True):  # type: ignore[misc]
        groups[i] = int(usable[group])
    return groups


def _stat_rows(files: list[Path], root: Path, label: str | None, split: str | None, role: str) -> list[dict]:
    rows = []
    for path in files:
        stat = path.stat()
        rows.append(
            {
                "path": str(path.resolve()),
                "relpath": path.relative_to(root).as_posix(),
                "label": label,
                "split": split,
                "role": role,
                "size": int(stat.st_size),
                "mtime_ns": int(stat.st_mtime_ns),
            }
        )
    return rows


def scan_collection(
    root: str | os.PathLike[str],
    distractor_dirs: Sequence[str | os.PathLike[str]] = (),
    validation_fraction: float = 0.1,
    validate: bool = False,
    workers: int = 4,
    group_duplicates: bool = False,
) -> Catalog:
    """List a collection's images with their label, split and role.

    With ``validate=True`` every image is fully decoded (in ``workers`` threads, with a progress bar) and the
    unusable ones are moved to ``Catalog.report``. Feature extraction decodes every image anyway and reports
    failures the same way, so validation here is optional. With ``group_duplicates=True`` a split made here
    (one folder per class) keeps exact and near copies in one split (:func:`cbir.data.hygiene.duplicate_groups`;
    fingerprints are cached, so only new files are decoded); the paper's layout has its split already.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CollectionError(f"collection folder not found: {root}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")

    rows: list[dict] = []
    split_root = find_split_root(root)
    extra_distractors = [Path(d).expanduser().resolve() for d in distractor_dirs]
    for folder in extra_distractors:
        if not folder.is_dir():
            raise CollectionError(f"distractor folder not found: {folder}")
    distractor_folders = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in DISTRACTOR_NAMES]
    if split_root is not None and split_root != root:
        distractor_folders += [p for p in split_root.iterdir() if p.is_dir() and p.name.lower() in DISTRACTOR_NAMES]

    if split_root is not None:
        for split_dir in sorted(p for p in split_root.iterdir() if p.is_dir()):
            name = split_dir.name.lower()
            split = "train" if name in TRAIN_NAMES else "validation" if name in VALIDATION_NAMES else None
            if split is None:
                continue
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                role = "index" if split == "train" else "query"
                rows += _stat_rows(list(_iter_images(class_dir)), root, class_dir.name, split, role)
    else:
        class_rows: list[dict] = []
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if class_dir.name.lower() in DISTRACTOR_NAMES:
                continue
            class_rows += _stat_rows(list(_iter_images(class_dir)), root, class_dir.name, "train", "index")
        if class_rows:
            groups = _duplicate_groups([r["path"] for r in class_rows], workers) if group_duplicates else None
            is_val = stratified_split(
                [r["relpath"] for r in class_rows], [r["label"] for r in class_rows], validation_fraction, groups
            )
            for row, val in zip(class_rows, is_val, strict=True):
                if val:
                    row["split"], row["role"] = "validation", "query"
        rows += class_rows
    for folder in distractor_folders + extra_distractors:
        base = root if folder.is_relative_to(root) else folder.parent
        rows += _stat_rows(list(_iter_images(folder)), base, None, None, "distractor")

    images = pd.DataFrame(rows, columns=CATALOG_COLUMNS).drop_duplicates("path").reset_index(drop=True)
    if images.empty:
        raise CollectionError(
            f"no images found in {root}: expected one subfolder per class (or training_set/ and validation_set/ "
            f"with one subfolder per class) holding {', '.join(sorted(IMAGE_EXTENSIONS))} files"
        )
    catalog = Catalog(root=root, images=images)
    if validate:
        catalog = validate_catalog(catalog, workers=workers)
    return catalog


def check_image(path: str) -> str | None:
    """``None`` when ``path`` decodes fully, else the reason it cannot be used."""
    try:
        load_image(path)
    except ImageDecodeError as exc:
        return str(exc)
    return None


def validate_catalog(catalog: Catalog, workers: int = 4) -> Catalog:
    """Decode every image (threads, progress bar); move failures to the report."""
    paths = catalog.images["path"].tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(tqdm(pool.map(check_image, paths), total=len(paths), desc="checking images", unit="img"))
    return with_rejected(catalog, dict(zip(paths, reasons, strict=True)))


def with_rejected(catalog: Catalog, reasons: dict[str, str | None]) -> Catalog:
    """A catalog without the images whose reason is not ``None``, those added to the report."""
    bad = {path: reason for path, reason in reasons.items() if reason is not None}
    if not bad:
        return catalog
    keep = ~catalog.images["path"].isin(bad.keys())
    report = pd.concat(
        [catalog.report, pd.DataFrame({"path": list(bad.keys()), "reason": list(bad.values())})], ignore_index=True
    ).drop_duplicates("path")
    return Catalog(root=catalog.root, images=catalog.images[keep].reset_index(drop=True), report=report)
