"""Collection hygiene: exact duplicates, near duplicates, blank and near-blank images.

A blank image (one colour) or a near-blank one (a few pixels of content on an empty page) sits in the middle of
feature space and becomes the nearest neighbour of any query unlike the collection (a *hub*); an exact or near
copy of a query among the indexed images is a free hit that inflates every figure. This module finds both:

- **exact duplicates**: the same decoded RGB pixels (a SHA-1 of the pixels, so a PNG and its lossless re-encoding
  are one image);
- **near duplicates**: the same drawing resized, slightly recoloured or re-encoded as JPEG: a 64-bit DCT
  perceptual hash (``imagehash.phash``) within :data:`NEAR_DUPLICATE_RADIUS` bits;
- **blank / near-blank**: pixel standard deviation below :data:`BLANK_STD`, or *content* (pixels that differ from
  the background colour, the median of the border, by more than :data:`CONTENT_THRESHOLD` in some channel) on
  less than :data:`NEAR_BLANK_FRACTION` of the pixels.

For splits, :func:`duplicate_groups` groups more widely (also a difference hash within
:data:`SPLIT_DHASH_RADIUS` bits): a group kept on one side of the split costs only balance, a copy across it
inflates every figure. Fingerprints are cached per file (:class:`FingerprintCache`: path, size, mtime).

Every image is decoded by :func:`cbir.data.images.load_image`, the project's one decoder. Cleaning a collection with
these verdicts (one image of each duplicate group kept, blanks left out) is :mod:`cbir.data.cleaning`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cbir.core.errors import CbirError
from cbir.core.storage import atomic_output
from cbir.data.images import ImageDecodeError, load_image

EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "near duplicate"
BLANK = "blank"
NEAR_BLANK = "near blank"
REASONS = (EXACT_DUPLICATE, NEAR_DUPLICATE, BLANK, NEAR_BLANK)
REPORT_COLUMNS = ["path", "reason", "duplicate_of"]

# A pixel is content when one of its channels differs from the background by more than this (of 255): above JPEG
# ringing and anti-aliasing haze, below any stroke a viewer would notice.
CONTENT_THRESHOLD = 24
BLANK_STD = 2.0
NEAR_BLANK_FRACTION = 0.01
# Hamming radius on 64-bit DCT hashes. Re-encoding, resizing or recolouring a drawing moves a few bits. On Open
# Clip Art's 8,000 cropped drawings, pairs within 4 bits are the same drawing recoloured or re-exported, or the
# same template (a playing card of another suit, a flag of the same layout, a star with more points); from about
# 8 bits unrelated drawings appear (a dragonfly on blue and a blue flag). The hash is of the grey levels, so two
# colourings of one drawing are copies, as they are for the CNN features.
NEAR_DUPLICATE_RADIUS = 4
# For the split only (keeping copies on one side costs nothing but balance), a second, coarser hash: a 64-bit
# difference hash (``imagehash.dhash``, signs of horizontal gradients on a 9×8 thumbnail) within this radius. On
# Open Clip Art it groups what the DCT hash misses but ImageNet features call copies (cosine ≥ 0.99): the
# procedurally generated stars (a 80-point and a 82-point star are 20 DCT bits apart, 0–2 dHash bits).
SPLIT_DHASH_RADIUS = 2
CROP_MARGIN = 0.04
# Content fraction and standard deviation are measured on at most this many pixels (a reduced copy): a drawing's
# share of the page does not depend on its resolution, and a 40-megapixel photo need not be scanned in full.
MEASURE_PIXELS = 1_000_000


class HygieneError(CbirError, ValueError):
    """Arguments that hygiene cannot work with (an empty list, a negative radius, ...)."""


@dataclass(frozen=True)
class ImageFingerprint:
    """What hygiene knows of one image.

    ``pixel_hash``: SHA-1 (hex) of the width, height and RGB bytes; ``phash``: 64-bit DCT perceptual hash as an
    unsigned int; ``content_fraction``: share of pixels that differ from the background (0..1); ``pixel_std``:
    standard deviation of all RGB values (0..~128); ``dhash``: 64-bit difference hash (coarser, for splits).
    """

    pixel_hash: str
    phash: int
    content_fraction: float
    pixel_std: float
    dhash: int

    def blank_reason(self, near_blank_fraction: float = NEAR_BLANK_FRACTION) -> str | None:
        """:data:`BLANK` (one colour), :data:`NEAR_BLANK` (content on less than ``near_blank_fraction`` of the
        pixels) or ``None`` (the image has content)."""
        if self.pixel_std < BLANK_STD or self.content_fraction == 0.0:
            return BLANK
        if self.content_fraction < near_blank_fraction:
            return NEAR_BLANK
        return None


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise HygieneError(f"expected an RGB image of shape (H, W, 3), got shape {array.shape}")
    return array


def _reduced(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 with at most ``MEASURE_PIXELS`` pixels (box-reduced by an integer factor)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_rgb_array(image).astype(np.uint8, copy=False))
    factor = int(np.ceil(np.sqrt(image.width * image.height / MEASURE_PIXELS)))
    if factor > 1:
        image = image.reduce(factor)
    return _rgb_array(image)


def background_colour(image: Image.Image | np.ndarray) -> np.ndarray:
    """The page colour: per-channel median of the one-pixel border. Returns shape (3,), float64."""
    array = _rgb_array(image)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def content_mask(
    image: Image.Image | np.ndarray,
    background: Sequence[float] | np.ndarray | None = None,
    threshold: float = CONTENT_THRESHOLD,
) -> np.ndarray:
    """(H, W) bool: pixels whose largest channel difference from ``background`` (default: the border median,
    :func:`background_colour`) exceeds ``threshold``."""
    array = _rgb_array(image)
    page = background_colour(array) if background is None else np.asarray(background, dtype=np.float64)
    if page.shape != (3,):
        raise HygieneError(f"background must be an RGB triple, got {background!r}")
    difference = np.abs(array.astype(np.int16) - page.astype(np.int16))
    # the largest of the three channels, taken channel by channel: numpy's max over a last axis of 3 was 5-8× slower
    # (an upload's content check took 10-30 ms of the Search page's first answer)
    return np.maximum(np.maximum(difference[..., 0], difference[..., 1]), difference[..., 2]) > threshold


def content_fraction(image: Image.Image | np.ndarray, background: Sequence[float] | np.ndarray | None = None) -> float:
    """Share (0..1) of the pixels that are content (:func:`content_mask`); below :data:`NEAR_BLANK_FRACTION` the
    image has almost nothing to search with. Measured on a copy of at most ``MEASURE_PIXELS`` pixels."""
    return float(content_mask(_reduced(image), background).mean())


def content_box(
    image: Image.Image, margin: float = CROP_MARGIN, background: Sequence[float] | np.ndarray | None = None
) -> tuple[int, int, int, int] | None:
    """(left, upper, right, lower) of the content's bounding box grown by ``margin`` × its longer side on every
    side (clipped to the image), or ``None`` when the image has no content."""
    if not 0.0 <= margin <= 1.0:
        raise HygieneError(f"margin must be in [0, 1], got {margin}")
    mask = content_mask(image, background)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad = round(margin * max(bottom - top, right - left))
    return (max(0, left - pad), max(0, top - pad), min(image.width, right + pad), min(image.height, bottom + pad))


def crop_to_content(
    image: Image.Image, margin: float = CROP_MARGIN, background: Sequence[float] | np.ndarray | None = None
) -> Image.Image:
    """``image`` cropped to :func:`content_box` (so a small drawing fills the frame); unchanged when blank."""
    box = content_box(image, margin, background)
    return image if box is None or box == (0, 0, image.width, image.height) else image.crop(box)


def pixel_hash(image: Image.Image) -> str:
    """SHA-1 (hex) of an RGB image's size and pixels: equal for the same picture in any lossless file."""
    rgb = image.convert("RGB")
    digest = hashlib.sha1(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (``imagehash.phash``) as an unsigned int."""
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def difference_hash(image: Image.Image) -> int:
    """64-bit difference hash (``imagehash.dhash``) as an unsigned int."""
    bits = imagehash.dhash(image, hash_size=8).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def fingerprint(image: Image.Image, background: Sequence[float] | None = None) -> ImageFingerprint:
    """The :class:`ImageFingerprint` of a decoded RGB image; content is measured against ``background``
    (default: the border's median colour, see :func:`content_mask`)."""
    reduced = _reduced(image)
    return ImageFingerprint(
        pixel_hash=pixel_hash(image),
        phash=perceptual_hash(image),
        content_fraction=float(content_mask(reduced, background).mean()),
        pixel_std=float(reduced.std()),
        dhash=difference_hash(image),
    )


class FingerprintCache:
    """Fingerprints by file (absolute path + size + mtime + ``variant``), kept in a JSON file so that a rescan
    decodes only new or changed files. ``variant`` names a transform applied before fingerprinting (e.g. a
    crop), so that fingerprints of different views of one file never mix. Thread-safe."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):  # a damaged cache is only lost time: start afresh
                self._entries = {}

    VERSION = 2  # bumped when ImageFingerprint changes: older entries are never read

    @staticmethod
    def key(path: str | os.PathLike[str], variant: str = "") -> str:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{variant}|v{FingerprintCache.VERSION}"

    def get(self, key: str) -> ImageFingerprint | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else ImageFingerprint(**entry)

    def put(self, key: str, value: ImageFingerprint) -> None:
        with self._lock:
            self._entries[key] = asdict(value)
            self._dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def save(self) -> None:
        """Write the cache (atomically) when something was added."""
        if self.path is None or not self._dirty:
            return
        with self._lock, atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps(self._entries))
            self._dirty = False


def fingerprint_file(
    path: str | os.PathLike[str],
    transform: Callable[[Image.Image], Image.Image] | None = None,
    cache: FingerprintCache | None = None,
    variant: str = "",
    background: Sequence[float] | None = None,
) -> ImageFingerprint:
    """Decode ``path`` (:func:`cbir.data.images.load_image`), apply ``transform`` and fingerprint it (``variant``
    names the transform and background in the cache).

    Raises :class:`cbir.data.images.ImageDecodeError` when the file cannot be used."""
    key = None
    if cache is not None:
        key = FingerprintCache.key(path, variant)
        cached = cache.get(key)
        if cached is not None:
            return cached
    image = load_image(path)
    if transform is not None:
        image = transform(image)
    result = fingerprint(image, background)
    if cache is not None and key is not None:
        cache.put(key, result)
    return result


def fingerprint_files(
    paths: Sequence[str | os.PathLike[str]],
    workers: int = 2,
    transform: Callable[[Image.Image], Image.Image] | None = None,
    cache: FingerprintCache | None = None,
    variant: str = "",
    progress: Callable[[int, int], None] | None = None,
    background: Sequence[float] | None = None,
) -> tuple[list[ImageFingerprint | None], dict[str, str]]:
    """Fingerprint files in ``workers`` threads (decoding releases the GIL), with a progress bar and
    ``progress(done, total)``. Returns one fingerprint per path (``None`` for unusable files) and
    ``{path: reason}`` for those."""
    if workers < 1:
        raise HygieneError(f"workers must be at least 1, got {workers}")

    def one(path: str | os.PathLike[str]) -> ImageFingerprint | str:
        try:
            return fingerprint_file(path, transform, cache, variant, background)
        except ImageDecodeError as exc:
            return str(exc)

    results: list[ImageFingerprint | None] = []
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, result in tqdm(
            zip(paths, pool.map(one, paths), strict=True), total=len(paths), desc="fingerprints", unit="img"
        ):
            if isinstance(result, str):
                errors[str(path)] = result
                results.append(None)
            else:
                results.append(result)
            if progress is not None and (len(results) % 64 == 0 or len(results) == len(paths)):
                progress(len(results), len(paths))
    if cache is not None:
        cache.save()
    return results, errors


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def near_pairs(phashes: np.ndarray, radius: int = NEAR_DUPLICATE_RADIUS, block: int = 1024) -> np.ndarray:
    """All pairs ``(i, j)``, ``i < j``, of 64-bit hashes within Hamming distance ``radius``.

    ``phashes``: (n,) uint64. Returns (m, 2) int64. All-pairs popcount in blocks of ``block`` rows (memory
    ``block × n`` bytes per byte of hash): some 10⁷ pairs a second, fine for tens of thousands of images."""
    if radius < 0:
        raise HygieneError(f"radius must be non-negative, got {radius}")
    codes = np.ascontiguousarray(np.asarray(phashes, dtype=np.uint64))
    if codes.ndim != 1:
        raise HygieneError(f"phashes must be one-dimensional, got shape {codes.shape}")
    as_bytes = codes.view(np.uint8).reshape(-1, 8)
    found = []
    for start in range(0, len(codes), block):
        stop = min(start + block, len(codes))
        distance = np.zeros((stop - start, len(codes)), dtype=np.uint8)
        for byte in range(8):
            distance += _POPCOUNT[as_bytes[start:stop, byte, None] ^ as_bytes[None, :, byte]]
        rows, cols = np.nonzero(distance <= radius)
        rows += start
        upper = rows < cols
        found.append(np.stack([rows[upper], cols[upper]], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), dtype=np.int64)


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member index) of each of ``n`` nodes; (n,) int64."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def duplicate_groups(
    fingerprints: Sequence[ImageFingerprint],
    radius: int = NEAR_DUPLICATE_RADIUS,
    dhash_radius: int | None = SPLIT_DHASH_RADIUS,
) -> np.ndarray:
    """(n,) int64: connected components of "copy of" among these images, named by their smallest member index,
    for splitting: same pixels, DCT hashes within ``radius`` bits, or (unless ``dhash_radius`` is ``None``)
    difference hashes within ``dhash_radius`` bits. Give it the images that are actually in a collection:
    :func:`cbir.data.collection.stratified_split` keeps each group in one split, so no query has a copy among the
    indexed images. The grouping is wider than :func:`find_duplicates`' on purpose: a pair grouped here is kept
    on one side, not dropped, so a false match costs only a little balance.
    """
    phashes = np.array([fp.phash for fp in fingerprints], dtype=np.uint64)
    pairs = [near_pairs(phashes, radius)]  # exact copies share their hashes: included
    if dhash_radius is not None:
        pairs.append(near_pairs(np.array([fp.dhash for fp in fingerprints], dtype=np.uint64), dhash_radius))
    return _components(len(phashes), np.concatenate(pairs))


def find_duplicates(
    fingerprints: Sequence[ImageFingerprint],
    names: Sequence[str],
    preference: Sequence[Any] | None = None,
    radius: int = NEAR_DUPLICATE_RADIUS,
) -> pd.DataFrame:
    """Duplicate groups and which image of each to keep.

    ``names``: one name per fingerprint (a path); ``preference``: sort keys, the smallest is kept first (default:
    ``(len(name), name)``). Returns one row per image, in input order, with columns ``path``, ``group`` (int:
    the split group of :func:`duplicate_groups`: use it to keep a group in one split), ``reason``
    (``None``, :data:`EXACT_DUPLICATE` or :data:`NEAR_DUPLICATE`) and ``duplicate_of`` (the name of the image it
    copies: the kept image with the same pixels, else the first kept image within ``radius``).

    The kept images are pairwise more than ``radius`` bits apart, and every other image has a copy among them.
    """
    n = len(fingerprints)
    if len(names) != n:
        raise HygieneError(f"{n} fingerprints but {len(names)} names")
    keys = [(len(name), name) for name in names] if preference is None else list(preference)
    if len(keys) != n:
        raise HygieneError(f"{n} fingerprints but {len(keys)} preference keys")
    order = sorted(range(n), key=lambda i: (keys[i], names[i]))
    codes = np.array([fp.phash for fp in fingerprints], dtype=np.uint64)
    pairs = near_pairs(codes, radius)
    group = duplicate_groups(fingerprints, radius)
    neighbours: dict[int, list[int]] = {}
    for i, j in pairs:
        neighbours.setdefault(int(i), []).append(int(j))
        neighbours.setdefault(int(j), []).append(int(i))

    reason: list[str | None] = [None] * n
    duplicate_of: list[str | None] = [None] * n
    exact_keeper: dict[str, int] = {}
    kept = np.zeros(n, dtype=bool)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    for i in order:  # preferred first: an image is kept unless a kept one is an exact or near copy of it
        same = exact_keeper.get(fingerprints[i].pixel_hash)
        if same is not None:
            reason[i], duplicate_of[i] = EXACT_DUPLICATE, names[same]
            continue
        exact_keeper[fingerprints[i].pixel_hash] = i
        near = [j for j in neighbours.get(i, ()) if kept[j]]
        if near:
            reason[i], duplicate_of[i] = NEAR_DUPLICATE, names[min(near, key=lambda j: rank[j])]
            continue
        kept[i] = True
    return pd.DataFrame({"path": list(names), "group": group, "reason": reason, "duplicate_of": duplicate_of})


def assess(
    fingerprints: Sequence[ImageFingerprint | None],
    names: Sequence[str],
    preference: Sequence[Any] | None = None,
    radius: int = NEAR_DUPLICATE_RADIUS,
    near_blank_fraction: float = NEAR_BLANK_FRACTION,
) -> pd.DataFrame:
    """Blank and duplicate verdicts of every image, in input order (``near_blank_fraction``: see
    :meth:`ImageFingerprint.blank_reason`).

    Columns ``path``, ``group`` (duplicate group; blanks and unusable images are groups of their own),
    ``reason`` (``None`` or one of :data:`BLANK`, :data:`NEAR_BLANK`, :data:`EXACT_DUPLICATE`,
    :data:`NEAR_DUPLICATE`), ``duplicate_of``, ``content_fraction`` (NaN when unusable) and ``keep`` (bool: what
    :func:`clean` keeps by default). Blank images are not matched as duplicates: twenty empty pages are twenty
    blanks, not one kept page and nineteen copies. ``fingerprints[i] is None`` marks an unusable file (not kept,
    no reason here: the decoder's reason is reported by whoever decoded it).
    """
    n = len(fingerprints)
    if len(names) != n or (preference is not None and len(preference) != n):
        raise HygieneError("fingerprints, names and preference must have the same length")
    table = pd.DataFrame(
        {
            "path": list(names),
            "group": np.arange(n, dtype=np.int64),
            "reason": pd.Series([None] * n, dtype=object),
            "duplicate_of": pd.Series([None] * n, dtype=object),
            "content_fraction": [np.nan if fp is None else fp.content_fraction for fp in fingerprints],
        }
    )
    usable = [i for i, fp in enumerate(fingerprints) if fp is not None]
    blank = {i: fingerprints[i].blank_reason(near_blank_fraction) for i in usable}  # type: ignore[union-attr]
    candidates = [i for i in usable if blank[i] is None]
    for i in usable:
        table.at[i, "reason"] = blank[i]
    if candidates:
        dup = find_duplicates(
            [fingerprints[i] for i in candidates],  # type: ignore[misc]
            [names[i] for i in candidates],
            None if preference is None else [preference[i] for i in candidates],
            radius,
        )
        index = np.array(candidates)
        # a group is named by its member with the smallest input position, so group ids are input positions
        table.loc[index, "group"] = index[dup["group"].to_numpy()]
        table.loc[index, "reason"] = dup["reason"].to_numpy()
        table.loc[index, "duplicate_of"] = dup["duplicate_of"].to_numpy()
    table["keep"] = table["reason"].isna() & table["content_fraction"].notna()
    return table


def summarize(report: pd.DataFrame) -> pd.Series:
    """How many images per reason (a report of :func:`clean` or :func:`assess`)."""
    return report["reason"].value_counts().reindex(list(REASONS), fill_value=0).rename("images")
