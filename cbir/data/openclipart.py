"""Build a labelled collection from Debian's ``openclipart-png`` (public-domain clip art).

``apt-get install openclipart-png`` puts ~8,100 PNG drawings under ``/usr/share/openclipart/png/<category>/``
(``CBIR_OPENCLIPART_DIR``, read through :func:`cbir.core.config.openclipart_dir`). Class = top-level category.
Categories with fewer than :data:`MIN_CLASS_IMAGES` images, and the catch-all categories ``unsorted`` and
``special``, are not classes: their images become the collection's unlabelled *distractors* (like MIRFlickr in
the paper: indexed, never relevant).

Each drawing is composited on white, **cropped to its content** (bounding box of the non-white pixels plus
:data:`cbir.data.hygiene.CROP_MARGIN` of its longer side, so that a small drawing fills the frame) and stored as an RGB
JPEG whose longer side is at most :data:`MAX_SIDE` pixels (the models read 224×224, so nothing they use is lost).

**Hygiene** (:mod:`cbir.data.hygiene`, on the cropped drawings): blank and near-blank drawings are left out, and of
each group of exact or near copies one is kept (a class image before a distractor, then the shortest path).
The split is deterministic, stratified and duplicate-aware (:func:`cbir.data.collection.stratified_split`,
:data:`VALIDATION_FRACTION` of each class by a hash of the path, a duplicate group always in one split), so no
query has a copy among the indexed images even with ``keep_all=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cbir.core import config
from cbir.core.storage import atomic_output
from cbir.data import hygiene
from cbir.data.collection import stratified_split
from cbir.data.images import ImageDecodeError, load_image

MIN_CLASS_IMAGES = 60
CATCH_ALL = frozenset({"unsorted", "special"})
VALIDATION_FRACTION = 0.1
MAX_SIDE = 512
INSTALL_HINT = "sudo apt-get install openclipart-png   (Debian/Ubuntu; about 131 MB)"
WHITE = (255.0, 255.0, 255.0)
# A cropped drawing whose strokes cover less than this share of its frame (a thin outline: a map's border, a
# circle) is mostly white page: to a CNN it looks like the blank images and it becomes an answer to any photo.
MIN_CONTENT_FRACTION = 0.05
# Bumped whenever what a build writes changes (v2: crop to content, hygiene): outputs of another version are
# rewritten rather than kept.
BUILD_VERSION = 2
MANIFEST = ".openclipart-build.json"
MANAGED_FOLDERS = ("training_set", "validation_set", "distractors")
PLAN_COLUMNS = ["source", "category", "target", "role", "reason", "duplicate_of", "content_fraction"]
REMOVED = "removed"


def prepare(image: Image.Image) -> Image.Image:
    """A decoded drawing (RGB, already on white) cropped to its content: what is fingerprinted and stored."""
    return hygiene.crop_to_content(image, hygiene.CROP_MARGIN, background=WHITE)


def _sources(source: Path, limit_per_class: int | None) -> pd.DataFrame:
    """One row per source PNG: source, relpath (to ``source``), category, is_class, in path-hash order per
    category when ``limit_per_class`` keeps only the first ``2 × limit_per_class`` of each."""
    if not source.is_dir():
        raise FileNotFoundError(f"Open Clip Art not found at {source}. Install it with: {INSTALL_HINT}")
    files = sorted(source.rglob("*.png"))
    table = pd.DataFrame(
        {
            "source": [str(p) for p in files],
            "relpath": [p.relative_to(source).as_posix() for p in files],
        }
    )
    if table.empty:
        raise FileNotFoundError(f"no PNG files under {source}. Install Open Clip Art with: {INSTALL_HINT}")
    table["category"] = table["relpath"].str.split("/").str[0]
    sizes = table.groupby("category")["source"].transform("size")
    table["is_class"] = (sizes >= MIN_CLASS_IMAGES) & ~table["category"].isin(CATCH_ALL)
    if limit_per_class is not None:
        if limit_per_class < 1:
            raise ValueError(f"limit_per_class must be at least 1, got {limit_per_class}")
        table["key"] = [hashlib.sha1(r.encode()).hexdigest() for r in table["relpath"]]
        table = table.sort_values(["category", "key"]).groupby("category").head(2 * limit_per_class)
        table = table.drop(columns="key").sort_values("relpath").reset_index(drop=True)
    return table


def plan(
    source: str | os.PathLike[str] | None = None,
    keep_all: bool = False,
    limit_per_class: int | None = None,
    workers: int = 2,
    cache: hygiene.FingerprintCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Where each source PNG goes, after hygiene. Columns ``source``, ``category``, ``target`` (relative path,
    ``None`` when left out), ``role`` (``index``, ``query``, ``distractor`` or ``removed``), ``reason`` (why it
    was flagged: blank, near blank, exact/near duplicate, or the decoder's message), ``duplicate_of`` (source
    path of the copy that is kept), ``content_fraction`` (of the cropped drawing).

    ``source``: default :func:`cbir.core.config.openclipart_dir`. ``keep_all``: keep flagged drawings (still
    reported; duplicate groups still share a split). ``limit_per_class``: a quick build (tests) of the first
    ``2 × N`` files of each category by path hash, split half and half. Fingerprints are cached in ``cache``.
    """
    root = Path(source) if source is not None else config.openclipart_dir()
    table = _sources(root, limit_per_class)
    fingerprints, errors = hygiene.fingerprint_files(
        table["source"].tolist(),
        workers=workers,
        transform=prepare,
        cache=cache,
        variant=f"openclipart-crop{hygiene.CROP_MARGIN}-on-white",
        progress=progress,
        background=WHITE,  # the page is white (transparency composited on it), whatever colour the border has
    )
    # keep a class drawing before a distractor, then the shortest path (the least nested, most canonical file)
    preference = [(not c, len(r), r) for c, r in zip(table["is_class"], table["relpath"], strict=True)]
    verdicts = hygiene.assess(
        fingerprints, table["source"].tolist(), preference, near_blank_fraction=MIN_CONTENT_FRACTION
    )
    table["reason"] = verdicts["reason"].to_numpy()
    table["duplicate_of"] = verdicts["duplicate_of"].to_numpy()
    table["content_fraction"] = verdicts["content_fraction"].to_numpy()
    table.loc[table["source"].isin(errors), "reason"] = table["source"].map(errors)
    usable = verdicts["content_fraction"].notna().to_numpy()
    kept = usable if keep_all else verdicts["keep"].to_numpy()

    role = np.where(table["is_class"], "index", "distractor").astype(object)
    # groups among the drawings actually written: what is kept by default is pairwise distinct (singletons), but
    # with keep_all a drawing and its copies must share a split, and one with a copy among the (indexed)
    # distractors cannot be a query
    written = np.flatnonzero(kept)
    groups = hygiene.duplicate_groups([fingerprints[i] for i in written])  # type: ignore[misc]
    is_class = table["is_class"].to_numpy()[written]
    pinned = np.isin(groups, groups[~is_class])
    classes, groups = written[is_class & ~pinned], groups[is_class & ~pinned]
    fraction = 0.5 if limit_per_class is not None else VALIDATION_FRACTION
    is_query = stratified_split(
        table["relpath"].iloc[classes].tolist(), table["category"].iloc[classes].tolist(), fraction, groups=groups
    )
    role[classes[is_query]] = "query"
    role[~kept] = REMOVED
    table["role"] = role
    folder = pd.Series(role).map({"index": "training_set", "query": "validation_set", "distractor": "distractors"})
    stem = [
        Path(rel).relative_to(cat).with_suffix("").as_posix().replace("/", "__")
        for rel, cat in zip(table["relpath"], table["category"], strict=True)
    ]
    table["target"] = [
        None if f != f else f"{f}/{cat}/{s}.jpg"  # f != f: NaN, a removed drawing
        for f, cat, s in zip(folder, table["category"], stem, strict=True)
    ]
    return table[PLAN_COLUMNS]


def _convert(source: str, target: Path, overwrite: bool) -> str | None:
    if target.exists() and not overwrite:
        return None
    try:
        image = prepare(load_image(source))
    except ImageDecodeError as exc:
        return str(exc)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    with atomic_output(target) as tmp:
        image.save(tmp, format="JPEG", quality=92)
    return None


def _remove_stale(out: Path, targets: set[str]) -> int:
    """Delete the JPEGs of the managed folders that this build does not produce (a drawing now left out, or
    moved to the other split) so that a rebuild never mixes two builds. Returns how many."""
    removed = 0
    for folder in MANAGED_FOLDERS:
        for path in sorted((out / folder).rglob("*.jpg")):
            if path.relative_to(out).as_posix() not in targets:
                path.unlink()
                removed += 1
    return removed


def build_collection(
    out_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    workers: int = 2,
    limit_per_class: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_all: bool = False,
) -> pd.DataFrame:
    """Convert Open Clip Art into ``out_dir`` (resumable: outputs of the same build version are kept). Returns the
    per-file :func:`plan` with an ``error`` column (``None`` when converted or left out). ``limit_per_class``: a
    quick build (tests). ``progress(done, total)`` is called as files are fingerprinted, then converted (the
    app's bar). Stale JPEGs in ``training_set/``, ``validation_set/`` and ``distractors/`` are deleted."""
    out = Path(out_dir)
    cache = hygiene.FingerprintCache(config.fingerprint_cache_path())
    table = plan(source, keep_all, limit_per_class, workers, cache, progress=_stage(progress, 0))
    manifest = out / MANIFEST
    try:
        same_version = json.loads(manifest.read_text()).get("version") == BUILD_VERSION
    except (OSError, ValueError, AttributeError):
        same_version = False
    written = table[table["target"].notna()]
    stale = _remove_stale(out, set(written["target"])) if out.is_dir() else 0
    on_convert = _stage(progress, 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(
            _convert, written["source"], [out / t for t in written["target"]], [not same_version] * len(written)
        )
        errors = []
        for error in tqdm(jobs, total=len(written), desc="openclipart → collection", unit="img"):
            errors.append(error)
            if on_convert is not None and (len(errors) % 64 == 0 or len(errors) == len(written)):
                on_convert(len(errors), len(written))
    table["error"] = pd.Series(errors, index=written.index, dtype=object).reindex(table.index)
    table["error"] = table["error"].astype(object).where(table["error"].notna(), None)
    with atomic_output(manifest) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "version": BUILD_VERSION,
                    "keep_all": keep_all,
                    "limit_per_class": limit_per_class,
                    "stale_removed": stale,
                    "roles": table["role"].value_counts().to_dict(),
                    "reasons": table["reason"]
                    .where(table["reason"].isin(hygiene.REASONS) | table["reason"].isna(), "undecodable")
                    .value_counts()
                    .to_dict(),
                },
                indent=1,
            )
        )
    return table


def _stage(progress: Callable[[int, int], None] | None, stage: int) -> Callable[[int, int], None] | None:
    """Two passes (fingerprint, convert) reported as one bar: stage 0 fills the first half, stage 1 the second."""
    if progress is None:
        return None
    return lambda done, total: progress(stage * total + done, 2 * total)


def summary(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(counts, removed)``: images per category and role (columns index, query, distractor, removed), and
    the left-out drawings with their reason and the copy that was kept (columns source, reason, duplicate_of)."""
    counts = table.pivot_table(index="category", columns="role", values="source", aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=["index", "query", "distractor", REMOVED], fill_value=0)
    removed = table.loc[table["role"] == REMOVED, ["source", "reason", "duplicate_of"]]
    return counts, removed.reset_index(drop=True)
