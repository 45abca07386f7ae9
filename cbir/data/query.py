"""A query image from what a user gives: an upload's bytes, a path or a PIL image, decoded with notes for the user.

:func:`decode_query` refuses what cannot be searched with a message for the user (:class:`ImageDecodeError`) and
explains what it converted (CMYK, 16-bit, transparency, animation, a big JPEG decoded at reduced scale), and
warns when the image has almost no content (:func:`cbir.data.hygiene.content_fraction`: an all-white page finds only
blank drawings);
:func:`tile` makes the square thumbnails of a result grid, :func:`tiles_jpeg` those of many files at once as JPEG bytes
(kept per file).
"""

from __future__ import annotations

import functools
import io
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cbir.core.storage import ArtifactError, load_artifact, save_artifact
from cbir.data.hygiene import NEAR_BLANK_FRACTION, content_fraction
from cbir.data.images import (
    ALPHA_MODES,
    HIGH_BIT_MODES,
    MAX_JPEG_PIXELS,
    MAX_PIXELS,
    ImageDecodeError,
    jpeg_bytes,
    load_image,
)

# A second, app-side cap for uploads (the browser is capped by .streamlit/config.toml's maxUploadSize): a camera
# frame or a programmatic upload must not reach the decoder when it is absurdly large.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Pillow's decompression-bomb error names the pixel count: "Image size (900000000 pixels) exceeds limit of …"
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")
MISSING_TILE_COLOR = "#d0d0d0"  # the tile of an image that cannot be read
TILE_BATCH = 128  # tiles :func:`keep_tiles` makes between two pauses (~0.25 s on a busy core)
TILE_CACHE_SIZE = 8192  # JPEG tiles kept per process (~4 kB each at RESULT_TILE_SIDE; 10 kB at 256 px)
RESULT_TILE_SIDE = 170  # px: the Search page's result tiles (five a row); the app's warm start makes them ahead


@dataclass
class QueryImage:
    """A decoded query: RGB ``image`` plus ``notes`` telling the user what was converted."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    original_mode: str = "RGB"
    format: str | None = None
    warnings: list[str] = field(default_factory=list)  # the query works, but its results will disappoint
    content_share: float = 1.0


def near_blank_warning(share: float) -> str | None:
    """The warning for an image whose :func:`cbir.data.hygiene.content_fraction` is ``share``, or ``None`` when it has
    content (the collection's near-blank rule, :data:`cbir.data.hygiene.NEAR_BLANK_FRACTION`)."""
    if share >= NEAR_BLANK_FRACTION:
        return None
    what = "no content at all (one flat colour)" if share == 0 else f"almost no content ({share:.1%} of its pixels)"
    return (
        f"This image has {what}: there is nearly nothing to search with, so the results are mostly blank or "
        "near-blank images of the collection. Try an image with a visible subject."
    )


def too_big(n_bytes: int) -> ImageDecodeError:
    """The error for an upload of ``n_bytes`` bytes, above :data:`MAX_UPLOAD_BYTES` (the HTTP API words a body
    over the limit with it too, before reading it)."""
    return ImageDecodeError(
        f"the file is too big ({n_bytes / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB)"
    )


def _too_large(pixels: int, size: tuple[int, int] | None = None) -> ImageDecodeError:
    """The error for an image of ``pixels`` pixels (``size`` when known), above :data:`MAX_PIXELS`."""
    dimensions = f"{size[0]}×{size[1]} = " if size else ""
    return ImageDecodeError(
        f"the image is too large ({dimensions}{pixels / 1e6:.0f} megapixels; the limit is "
        f"{MAX_PIXELS / 1e6:.0f} megapixels): use a smaller version of it"
    )


def _probe(data: bytes) -> tuple[str | None, str, tuple[int, int], int, bool]:
    """Format, mode, size, frame count and transparency of an image, read from its header only.

    Pillow refuses to even open an image of more than twice its own pixel limit (a decompression bomb); that is
    reported as too large, in megapixels, like any image over :data:`MAX_PIXELS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                transparent = probe.mode in ALPHA_MODES or "transparency" in probe.info
                return probe.format, probe.mode, probe.size, int(getattr(probe, "n_frames", 1) or 1), transparent
        except Image.DecompressionBombError as exc:
            found = _BOMB_PIXELS.search(str(exc))
            raise _too_large(int(found.group(1)) if found else MAX_PIXELS + 1) from exc


def header_pixels(data: bytes) -> int | None:
    """The pixel count of the image ``data`` read from its header only (nothing decoded), or ``None`` when Pillow
    cannot open it (not an image, or a decompression bomb: :func:`decode_query` refuses those at once)."""
    try:
        size = _probe(data)[2]
    except (ImageDecodeError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return size[0] * size[1]


def decode_query(source: bytes | str | os.PathLike[str] | Image.Image) -> QueryImage:
    """Decode an uploaded file (bytes), a path or a PIL image into an RGB query image.

    Raises :class:`cbir.data.images.ImageDecodeError` with a user-facing message for empty, non-image, corrupt,
    truncated, too small and too large inputs; what is converted (CMYK, 16-bit, transparency, animation, a big
    photo decoded at reduced scale) is explained in ``notes``; an almost empty image gets a ``warnings`` entry.
    """
    if isinstance(source, Image.Image):
        image = source if source.mode == "RGB" else source.convert("RGB")
        return _with_content_check(QueryImage(image=image, original_size=source.size, original_mode=source.mode))
    if not isinstance(source, bytes | bytearray):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"{path}: no such file")
        source = path.read_bytes()
    data = bytes(source)
    if len(data) > MAX_UPLOAD_BYTES:
        raise too_big(len(data))
    notes: list[str] = []
    try:
        fmt, mode, size, frames, transparent = _probe(data)
    except ImageDecodeError:  # a ValueError too: not one for load_image to word
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        fmt, mode, size, frames, transparent = None, "RGB", (0, 0), 1, False  # load_image words the error
    pixels = size[0] * size[1]
    if fmt == "JPEG" and MAX_PIXELS < pixels <= MAX_JPEG_PIXELS:  # load_image decodes it at a reduced scale
        notes.append(
            f"This photo is {pixels / 1e6:.0f} megapixels; it was decoded at reduced size for the search "
            f"(the model looks at 224×224 pixels anyway)."
        )
    elif pixels > MAX_PIXELS:  # say it in megapixels before Pillow's decompression-bomb wording does
        raise _too_large(pixels, size)
    try:
        image = load_image(data)
    except ImageDecodeError as exc:  # load_image names its source; for an upload that is just noise
        raise ImageDecodeError(str(exc).removeprefix("uploaded data: ")) from exc
    if mode == "CMYK":
        notes.append("The image is in CMYK (print) colours; it was converted to RGB.")
    elif mode in HIGH_BIT_MODES:
        notes.append(
            f"The image has {'16' if mode.startswith('I;16') else '32'}-bit greyscale pixels; it was "
            "rescaled to 8 bits per channel."
        )
    elif mode in ("L", "1", "LA"):
        notes.append("The image is greyscale; it is searched as a grey RGB image.")
    if transparent:
        notes.append("The image has transparent areas; they were filled with white.")
    if frames > 1:
        notes.append(f"The image is animated ({frames} frames); only the first frame is used.")
    return _with_content_check(QueryImage(image=image, notes=notes, original_size=size, original_mode=mode, format=fmt))


def _with_content_check(query: QueryImage) -> QueryImage:
    """``query`` with its :func:`cbir.data.hygiene.content_fraction` measured and, when it is almost empty, a
    warning."""
    query.content_share = content_fraction(query.image)
    if (warning := near_blank_warning(query.content_share)) is not None:
        query.warnings.append(warning)
    return query


def tile(source: str | os.PathLike[str] | Image.Image, side: int = 256) -> Image.Image:
    """A ``side``×``side`` RGB tile: the image fitted inside, centred on white, so result grids line up; a plain
    grey tile when the file is missing or unreadable (a synthetic feature set has no images; a file may have been
    removed since the extraction)."""
    try:
        image = source if isinstance(source, Image.Image) else load_image(source)
    except ImageDecodeError:
        return Image.new("RGB", (side, side), MISSING_TILE_COLOR)
    fitted = image.convert("RGB")
    fitted.thumbnail((side, side))
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(fitted, ((side - fitted.width) // 2, (side - fitted.height) // 2))
    return canvas


def tile_jpeg(path: str, side: int = 256) -> bytes:
    """:func:`tile` of the file at ``path`` as JPEG bytes (:func:`cbir.data.images.jpeg_bytes`), kept per process
    (every session shows the same results) for as long as the file keeps its size and modification time."""
    key = _tile_key(path, side)
    with _tiles_lock:
        kept = _tiles.get(key)
        if kept is not None:
            _tiles.move_to_end(key)
            return kept
    made = jpeg_bytes(tile(path, side))
    with _tiles_lock:
        made = _tiles.setdefault(key, made)  # a tile made twice at once: every caller gets the first one kept
        while len(_tiles) > TILE_CACHE_SIZE:
            _tiles.popitem(last=False)
    return made


_tiles: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()  # kept tiles, least recently used first
_tiles_lock = threading.Lock()


def _tile_key(path: str, side: int) -> tuple[str, int, int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (path, -1, -1, side)  # the grey tile of a missing file
    return (path, stat.st_mtime_ns, stat.st_size, side)


TILES_KIND = "cbir_tiles"  # the artifact kind of a file of kept tiles (:func:`keep_tiles`)


def keep_tiles(
    paths: Sequence[str], side: int, file: str | os.PathLike[str], pause: Callable[[], None] = lambda: None
) -> int:
    """Have the ``side``-px tile of every one of ``paths`` in this process' tile cache (:func:`tile_jpeg`): those kept
    in ``file`` by an earlier call (any process) whose image has kept its size and modification time are read back,
    the others made (in batches of :data:`TILE_BATCH`, ``pause()`` after each) and ``file`` written again (atomically,
    with every tile of ``paths``). Returns how many were made. A server's warm start makes its Search page's tiles so
    (:func:`cbir.service.search.warm_start`): the default collection's 5,418 took ~12 s of one core to make the first
    time and are read back in well under a second after."""
    try:
        kept: dict[tuple[str, int, int, int], bytes] = load_artifact(file, TILES_KIND)["tiles"]
    except (ArtifactError, KeyError, TypeError):
        kept = {}
    keys = [_tile_key(path, side) for path in paths]
    with _tiles_lock:
        for key in keys:
            if key in kept and key not in _tiles:
                _tiles[key] = kept[key]
        while len(_tiles) > TILE_CACHE_SIZE:
            _tiles.popitem(last=False)
    missing = [path for path, key in zip(paths, keys, strict=True) if key not in kept]
    for start in range(0, len(missing), TILE_BATCH):
        for path in missing[start : start + TILE_BATCH]:
            tile_jpeg(path, side)
        pause()
    if missing:
        with _tiles_lock:
            tiles = {key: _tiles[key] for key in keys if key in _tiles}
        save_artifact(file, TILES_KIND, {"tiles": tiles})
    return len(missing)


def tiles_jpeg(paths: Sequence[str], side: int = 256) -> list[bytes]:
    """:func:`tile_jpeg` of each path, those not kept yet made in parallel threads (Pillow decodes and resizes without
    the GIL): a query's ten results, read from disk, cost about one file's time per core; kept ones are returned at
    once (no thread started)."""
    keys = [_tile_key(path, side) for path in paths]
    with _tiles_lock:
        missing = sum(key not in _tiles for key in keys)
    workers = min(missing, os.cpu_count() or 1)
    if workers <= 1:
        return [tile_jpeg(path, side) for path in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbir-tiles") as pool:
        return list(pool.map(functools.partial(tile_jpeg, side=side), paths))
