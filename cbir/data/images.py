"""Decoding images safely: every image is fully decoded with Pillow before it is used.

Corrupt, truncated, zero-byte, non-image and decompression-bomb inputs raise :class:`ImageDecodeError` with a
message a user understands; any mode (L, LA, P, RGBA, CMYK, I;16, ...) becomes RGB, transparency is composited
on white, only the first frame of an animation is used and the EXIF orientation is honoured.
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cbir.core.errors import CbirError

# Refuse, rather than half-decode, truncated files.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# 40 megapixels: Pillow's default bomb limit is ~89 MP (warning) / 179 MP (error); we decode many images in a row
# on a 24 GiB machine, so anything above this is treated as a bomb. A 50-megapixel photo is reported, not decoded.
MAX_PIXELS = 40_000_000
# A big JPEG can be decoded at 1/2, 1/4 or 1/8 scale by the DCT itself (cheap, no full-size buffer), so photos
# up to 8×8 times the limit are accepted, decoded at the coarsest scale that keeps at least REDUCED_MIN_PIXELS
# (the models look at 224×224 pixels; a megapixel is plenty for them and for display).
MAX_JPEG_SCALE = 8
MAX_JPEG_PIXELS = MAX_JPEG_SCALE**2 * MAX_PIXELS
REDUCED_MIN_PIXELS = 1_000_000
MIN_SIDE = 8
# Pillow modes that need more than a plain .convert("RGB"): 16/32-bit greyscale is rescaled by its own range, and
# modes with an alpha channel are composited on white. The query notes (cbir.data.query) name the same modes.
HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})

T = TypeVar("T")
R = TypeVar("R")


class ImageDecodeError(CbirError, ValueError):
    """The input cannot be used as an image; ``str(err)`` is a message for the user."""


def _source_name(source: str | os.PathLike[str] | bytes) -> str:
    return "uploaded data" if isinstance(source, bytes | bytearray) else str(source)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in HIGH_BIT_MODES:
        # 16/32-bit greyscale: rescale to 8 bit by the image's own range, not by clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | os.PathLike[str] | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Fully decode ``source`` (a path or the bytes of an upload) into an RGB ``PIL.Image``.

    Raises :class:`ImageDecodeError` for empty, non-image, corrupt, truncated, too small or too large inputs.
    """
    name = _source_name(source)
    if isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise ImageDecodeError("the file is empty (0 bytes)")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if not stream.is_file():
            raise ImageDecodeError(f"{name}: no such file")
        if stream.stat().st_size == 0:
            raise ImageDecodeError(f"{name}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                width, height = opened.size
                if opened.format == "JPEG" and max_pixels < width * height <= MAX_JPEG_SCALE**2 * max_pixels:
                    scale = 2
                    while scale < MAX_JPEG_SCALE and (
                        (width // scale) * (height // scale) > max_pixels
                        or (width // (2 * scale)) * (height // (2 * scale)) >= REDUCED_MIN_PIXELS
                    ):
                        scale *= 2
                    opened.draft(None, (width // scale, height // scale))
                elif width * height > max_pixels:
                    raise ImageDecodeError(
                        f"{name}: the image is too large ({width}×{height} = {width * height / 1e6:.1f} megapixels; "
                        f"the limit is {max_pixels / 1e6:.0f} megapixels)"
                    )
                opened.seek(0)  # first frame of an animated GIF/WebP/TIFF
                opened.load()
                image = ImageOps.exif_transpose(opened)
                if image is None:  # pragma: no cover - Pillow < 9.4 returned None in place
                    image = opened
                image = _to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"{name}: the image is too large (refused as a possible decompression bomb: {exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: not an image file (or a format that is not supported)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{name}: the image is corrupt or truncated ({exc})") from exc
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            f"{name}: the image is too small ({image.size[0]}×{image.size[1]} pixels; at least {MIN_SIDE} per side)"
        )
    return image


def decode_or_reason(path: str | os.PathLike[str], prepare: Callable[[Image.Image], T]) -> T | str:
    """``prepare(load_image(path))``, or the reason the file cannot be used (``str(ImageDecodeError)``): what the
    collection checks, feature extraction and the fine-tuning image cache record for an unusable file."""
    try:
        return prepare(load_image(path))
    except ImageDecodeError as exc:
        return str(exc)


def prefetched(fn: Callable[[T], R], items: Iterable[T], depth: int = 2, workers: int = 1) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed up to ``depth`` items ahead by ``workers`` threads, so that
    decoding (I/O, Pillow: both release the GIL) overlaps the model working on the previous results."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[Future[R]] = [pool.submit(fn, item) for item in items[:depth]]
        for i in range(len(items)):
            result = pending.pop(0).result()
            if i + depth < len(items):
                pending.append(pool.submit(fn, items[i + depth]))
            yield result


def resize_for_model(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``size`` (width, height) with bilinear filtering; returns (H, W, 3) float32 in 0..255."""
    resized = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.float32)


def thumbnail(image: Image.Image, side: int = 256) -> Image.Image:
    """A copy fitting in ``side``×``side``, for display."""
    copy = image.copy()
    copy.thumbnail((side, side))
    return copy


DISPLAY_JPEG_QUALITY = 85  # of the pictures a page sends: Streamlit encodes a PIL image at quality 100 on every run


def jpeg_bytes(image: Image.Image, quality: int = DISPLAY_JPEG_QUALITY) -> bytes:
    """``image`` (RGB) as JPEG file bytes, for display: a page passes them as they are, encoded once (a PIL image is
    encoded again at every run, at 3-5 times the bytes)."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def jpeg_data_url(jpeg: bytes) -> str:
    """JPEG file bytes as a ``data:`` URL: a page that passes it to ``st.image`` sends the picture inside its message
    (Streamlit takes a URL as it is), so the browser draws it without a request (the Search page's eleven pictures were
    eleven requests to Streamlit's media endpoint, the server storing each first)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
