"""Training data of fine-tuning: cached images and activations, augmentation and the batch schedule.

* :func:`image_cache`: the labelled images decoded and resized once, an (n, H, W, 3) uint8 memmap;
* :func:`activation_cache`: Model 1's frozen-part output for every image, an (n, h, w, c) float16 memmap;
* :func:`augment_batch`: Model 2's random flip / translation / brightness of a uint8 batch;
* :func:`epoch_batches`: the row indices of each batch, a pure function of (epoch, seed) so resumes are exact.

Cache files are written under a temporary name and renamed when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbir.core.storage import atomic_output, atomic_write_bytes
from cbir.data.collection import Catalog
from cbir.data.images import decode_or_reason, prefetched, resize_for_model
from cbir.features.backbones import get_backbone
from cbir.features.finetune.errors import FinetuneError
from cbir.features.finetune.models import FIRST_TRAINABLE


def write_memmap_atomic(
    path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, fill: Callable[[np.ndarray], None]
) -> Path:
    """Create ``path`` as an ``.npy`` of ``shape``/``dtype``: ``fill(array)`` writes a temp memmap, then rename.

    A reader never sees a half-filled file: the final name appears only once ``fill`` returned.
    """
    with atomic_output(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        fill(array)
        array.flush()
        del array
    return Path(path)


def _remove_stale(folder: Path, prefix: str, keep: Path) -> None:
    """Delete older caches of the same kind (other data hash) so changed collections do not pile up files."""
    for old in folder.glob(f"{prefix}*"):
        if old.name != keep.name and old.with_suffix("").name != keep.with_suffix("").name:
            old.unlink(missing_ok=True)


@dataclass
class ImageCache:
    """Decoded, resized images of the labelled rows, aligned with ``rows`` (memory-mapped, read-only).

    ``images``: (n, H, W, 3) uint8 memmap (rejected files are all-zero rows). ``rows``: the catalog rows (path,
    label, role, ...). ``ok``: (n,) bool, False where the file could not be decoded (reason in ``rejected``).
    ``key``: hash of the rows' (path, size, mtime) and the size — part of every derived cache's name.
    """

    images: np.ndarray
    rows: pd.DataFrame
    ok: np.ndarray
    rejected: dict[str, str]
    key: str
    path: Path


def labelled_rows(catalog: Catalog) -> pd.DataFrame:
    """Rows with a label and role ``index`` (training) or ``query`` (validation), in catalog order."""
    images = catalog.images
    keep = images["label"].notna() & images["role"].isin(["index", "query"])
    return images[keep].reset_index(drop=True)


def _decode(path: str, size: tuple[int, int]) -> np.ndarray | str:
    # resize_for_model gives float32 holding exact 0..255 integers: uint8 stores them losslessly
    return decode_or_reason(path, lambda image: resize_for_model(image, size).astype(np.uint8))


def image_cache(
    catalog: Catalog,
    cache_dir: str | os.PathLike[str],
    size: tuple[int, int] = (224, 224),
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """The labelled images of ``catalog`` decoded and resized to ``size`` (W, H), cached as a uint8 memmap.

    Built once per (collection content, size) — ``images-<W>x<H>-<hash>.npy`` plus a ``.json`` sidecar listing
    rejected files — and reused while no labelled file is added, removed or modified.
    """
    folder = Path(cache_dir)
    rows = labelled_rows(catalog)
    if rows.empty:
        raise FinetuneError(f"{catalog.root}: no labelled images (training_set/validation_set or class folders)")
    width, height = size
    identity = json.dumps(
        [[p, int(s), int(m)] for p, s, m in zip(rows["path"], rows["size"], rows["mtime_ns"], strict=True)]
        + [[width, height]]
    )
    key = hashlib.sha1(identity.encode()).hexdigest()[:12]
    prefix = f"images-{width}x{height}-"
    npy, sidecar = folder / f"{prefix}{key}.npy", folder / f"{prefix}{key}.json"
    if not (npy.is_file() and sidecar.is_file()):
        paths = rows["path"].tolist()
        rejected: dict[str, str] = {}

        def fill(array: np.ndarray) -> None:
            decoded = prefetched(functools.partial(_decode, size=size), paths, depth=2 * workers, workers=workers)
            for i, item in enumerate(
                tqdm(decoded, total=len(paths), desc="decoding images", unit="img", disable=not progress)
            ):
                if isinstance(item, str):
                    rejected[paths[i]] = item
                else:
                    array[i] = item
            # the sidecar goes first: the .npy's final name is the commit point of the pair
            atomic_write_bytes(sidecar, json.dumps({"rejected": rejected, "n": len(paths)}).encode())

        write_memmap_atomic(npy, (len(rows), height, width, 3), np.uint8, fill)
        _remove_stale(folder, prefix, npy)
    meta = json.loads(sidecar.read_text())
    images = np.load(npy, mmap_mode="r")
    if images.shape[0] != len(rows) or meta.get("n") != len(rows):
        raise FinetuneError(f"image cache {npy} does not match the collection; delete it and rerun")
    rejected = dict(meta["rejected"])
    ok = ~rows["path"].isin(rejected.keys()).to_numpy()
    return ImageCache(images=images, rows=rows, ok=ok, rejected=rejected, key=key, path=npy)


def activation_cache(
    images: ImageCache,
    frozen: Any,
    backbone: str,
    weights_id: str,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 32,
    dtype: str = "float16",
    progress: bool = True,
) -> np.ndarray:
    """``frozen``'s output for every cached image: an (n, h, w, c) memmap aligned with ``images.rows``.

    Stored as ``dtype`` (float16 by default: half the disk and page cache; activations are clipped to its range).
    Keyed by backbone, weights id, boundary layer, dtype and the image cache key.
    """
    spec = get_backbone(backbone)
    shape = tuple(int(d) for d in frozen.output.shape[1:])
    height, width = images.images.shape[1:3]
    # named after the first trainable layer: the cache holds that layer's input
    prefix = f"acts-{backbone}-{weights_id}-{width}x{height}-{FIRST_TRAINABLE[backbone]}-{dtype}-"
    path = Path(cache_dir) / f"{prefix}{images.key}.npy"
    if not path.is_file():
        n = len(images.rows)
        limit = float(np.finfo(dtype).max) if np.dtype(dtype).kind == "f" else None

        def fill(array: np.ndarray) -> None:
            starts = range(0, n, batch_size)
            load = lambda s: spec.preprocess(np.asarray(images.images[s : s + batch_size], dtype=np.float32))  # noqa: E731
            for start, batch in tqdm(
                zip(starts, prefetched(load, starts), strict=True),
                total=len(starts),
                desc=f"{backbone} frozen part",
                unit="batch",
                disable=not progress,
            ):
                out = np.asarray(frozen.predict_on_batch(batch), dtype=np.float32)
                if limit is not None:
                    out = np.clip(out, -limit, limit)
                array[start : start + len(out)] = out.astype(dtype)

        write_memmap_atomic(path, (n, *shape), dtype, fill)
        _remove_stale(Path(cache_dir), prefix, path)
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class Augmentation:
    """Model 2's on-the-fly augmentation: horizontal flip, translation (fraction of the side), brightness."""

    flip: bool = True
    max_shift: float = 0.1
    brightness: float = 0.2


def augment_batch(images: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()) -> np.ndarray:
    """Randomly flipped, translated and brightened copies of ``images`` (B, H, W, 3) uint8 → float32 0..255.

    Translation pads with the edge pixels (clip-art backgrounds are flat, so this adds no artificial border).
    """
    batch = np.asarray(images)
    n, height, width = batch.shape[:3]
    out = np.empty(batch.shape, dtype=np.float32)
    sy, sx = round(aug.max_shift * height), round(aug.max_shift * width)
    for i in range(n):
        image = batch[i]
        if aug.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if sy or sx:
            padded = np.pad(image, ((sy, sy), (sx, sx), (0, 0)), mode="edge")
            dy, dx = rng.integers(0, 2 * sy + 1), rng.integers(0, 2 * sx + 1)
            image = padded[dy : dy + height, dx : dx + width]
        out[i] = image
        if aug.brightness:
            out[i] *= rng.uniform(1.0 - aug.brightness, 1.0 + aug.brightness)
    return np.clip(out, 0.0, 255.0, out=out)


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int = 0, steps_per_epoch: int | None = None
) -> list[np.ndarray]:
    """Row indices of each training batch of ``epoch`` (0-based): a pure function of its arguments, so a resumed
    run draws exactly the batches an uninterrupted one would.

    Without ``steps_per_epoch``: one shuffled pass over ``n`` rows (the last batch may be smaller). With it: epoch
    ``e`` takes ``steps_per_epoch`` full batches from an endless stream of shuffled passes, so "epochs" can be
    shorter than the data (checkpoints and time-budget checks come more often on a slow model).
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"need n > 0 and batch_size > 0, got {n}, {batch_size}")
    if steps_per_epoch is None:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        return [np.sort(order[i : i + batch_size]) for i in range(0, n, batch_size)]
    start = epoch * steps_per_epoch * batch_size
    positions = np.arange(start, start + steps_per_epoch * batch_size)
    passes = {p: np.random.default_rng([seed, p]).permutation(n) for p in np.unique(positions // n)}
    rows = np.array([passes[p][k] for p, k in zip(positions // n, positions % n, strict=True)])
    return [np.sort(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def class_balanced_batches(
    labels: np.ndarray,
    classes_per_batch: int,
    per_class: int,
    epoch: int,
    seed: int = 0,
    n_batches: int | None = None,
) -> list[np.ndarray]:
    """Row indices of each batch of ``epoch``: ``classes_per_batch`` distinct classes × ``per_class`` rows each.

    ``labels``: (n,) int class index per row (rows with a negative label are never drawn). Metric-learning losses
    need positives in the batch, so each batch holds several rows of each of its classes; classes are drawn
    uniformly (a rare class is seen as often as a common one) and each class's rows are walked in a shuffled
    cycle, so within an epoch a class repeats a row only after all its rows were drawn. A class with fewer rows
    than ``per_class`` repeats rows within the batch. ``n_batches`` defaults to ``ceil(n / batch size)`` (about one
    pass). A pure function of its arguments (resumable, reproducible). Each batch: (≤ P·K,) int64, unsorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if classes_per_batch < 1 or per_class < 1:
        raise ValueError(f"need classes_per_batch >= 1 and per_class >= 1, got {classes_per_batch}, {per_class}")
    classes = np.unique(labels[labels >= 0])
    if len(classes) == 0:
        raise ValueError("no labelled rows to draw batches from")
    rng = np.random.default_rng([seed, epoch])
    members = {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    cursor = dict.fromkeys(members, 0)
    p = min(classes_per_batch, len(classes))
    if n_batches is None:
        n_batches = max(1, -(-int((labels >= 0).sum()) // (p * per_class)))
    batches = []
    for _ in range(n_batches):
        rows = []
        for c in rng.choice(classes, size=p, replace=False):
            own, start = members[int(c)], cursor[int(c)]
            rows.append(own[(start + np.arange(per_class)) % len(own)])
            cursor[int(c)] = (start + per_class) % len(own)
        batches.append(np.concatenate(rows))
    return batches
