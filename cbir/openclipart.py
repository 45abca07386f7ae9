"""Build a labelled collection from Debian's ``openclipart-png`` (public-domain clip art).

``apt-get install openclipart-png`` puts ~7,100 PNG drawings under ``/usr/share/openclipart/png/<category>/``.
Class = top-level category. Categories with fewer than :data:`MIN_CLASS_IMAGES` images, and the catch-all
categories ``unsorted`` and ``special``, are not classes: their images become the collection's unlabelled
*distractors* (like MIRFlickr in the paper: indexed, never relevant). The split is deterministic and stratified
(:data:`VALIDATION_FRACTION` of each class, by a hash of the file's path). Transparency is composited on white and
each drawing is stored as an RGB JPEG whose longer side is at most :data:`MAX_SIDE` pixels (the models read
224×224, so nothing they use is lost).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from cbir.images import ImageDecodeError, load_image
from cbir.storage import atomic_output

OPENCLIPART_DIR = Path(os.environ.get("CBIR_OPENCLIPART_DIR", "/usr/share/openclipart/png"))
MIN_CLASS_IMAGES = 60
CATCH_ALL = frozenset({"unsorted", "special"})
VALIDATION_FRACTION = 0.1
MAX_SIDE = 512
INSTALL_HINT = "sudo apt-get install openclipart-png   (Debian/Ubuntu; about 131 MB)"


def _split_of(relpath: str, rank_in_class: int, n_in_class: int) -> str:
    n_val = max(1, round(n_in_class * VALIDATION_FRACTION))
    return "validation_set" if rank_in_class < n_val else "training_set"


def plan(source: Path = OPENCLIPART_DIR) -> pd.DataFrame:
    """Where each source PNG goes: columns source, category, target (relative path), role."""
    if not source.is_dir():
        raise FileNotFoundError(f"Open Clip Art not found at {source}. Install it with: {INSTALL_HINT}")
    by_category: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(source.rglob("*.png")):
        by_category[path.relative_to(source).parts[0]].append(path)
    rows = []
    for category, files in sorted(by_category.items()):
        is_class = len(files) >= MIN_CLASS_IMAGES and category not in CATCH_ALL
        ranked = sorted(files, key=lambda p: hashlib.sha1(p.relative_to(source).as_posix().encode()).hexdigest())
        for rank, path in enumerate(ranked):
            stem = path.relative_to(source / category).with_suffix("").as_posix().replace("/", "__")
            if is_class:
                split = _split_of(path.name, rank, len(files))
                target = f"{split}/{category}/{stem}.jpg"
                role = "query" if split == "validation_set" else "index"
            else:
                target = f"distractors/{category}/{stem}.jpg"
                role = "distractor"
            rows.append({"source": str(path), "category": category, "target": target, "role": role})
    return pd.DataFrame(rows)


def _convert(source: str, target: Path) -> str | None:
    if target.exists():
        return None
    try:
        image = load_image(source)
    except ImageDecodeError as exc:
        return str(exc)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    with atomic_output(target) as tmp:
        image.save(tmp, format="JPEG", quality=92)
    return None


def build_collection(
    out_dir: str | os.PathLike[str],
    source: Path = OPENCLIPART_DIR,
    workers: int = 4,
    limit_per_class: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Convert Open Clip Art into ``out_dir`` (resumable: existing outputs are kept). Returns the per-file plan
    with an ``error`` column (``None`` when converted). ``limit_per_class`` keeps only the first images of each
    category (for quick tests). ``progress(done, total)`` is called as files are converted (the app's bar)."""
    out = Path(out_dir)
    table = plan(source)
    if limit_per_class is not None:
        table = table.groupby(["category", "role"], group_keys=False).head(limit_per_class).reset_index(drop=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(_convert, table["source"], [out / t for t in table["target"]])
        errors = []
        for error in tqdm(jobs, total=len(table), desc="openclipart → collection", unit="img"):
            errors.append(error)
            if progress is not None and (len(errors) % 64 == 0 or len(errors) == len(table)):
                progress(len(errors), len(table))
        table["error"] = errors
    return table
