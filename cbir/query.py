"""A query image from what a user gives: an upload's bytes, a path or a PIL image, decoded with notes for the user.

:func:`decode_query` refuses what cannot be searched with a message for the user (:class:`ImageDecodeError`) and
explains what it converted (CMYK, 16-bit, transparency, animation, a big JPEG decoded at reduced scale);
:func:`tile` makes the square thumbnails of a result grid.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cbir.images import ALPHA_MODES, HIGH_BIT_MODES, MAX_JPEG_PIXELS, MAX_PIXELS, ImageDecodeError, load_image

# A second, app-side cap for uploads (the browser is capped by .streamlit/config.toml's maxUploadSize): a camera
# frame or a programmatic upload must not reach the decoder when it is absurdly large.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


@dataclass
class QueryImage:
    """A decoded query: RGB ``image`` plus ``notes`` telling the user what was converted."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    original_mode: str = "RGB"
    format: str | None = None


def _probe(data: bytes) -> tuple[str | None, str, tuple[int, int], int, bool]:
    """Format, mode, size, frame count and transparency of an image, read from its header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as probe:
            transparent = probe.mode in ALPHA_MODES or "transparency" in probe.info
            return probe.format, probe.mode, probe.size, int(getattr(probe, "n_frames", 1) or 1), transparent


def decode_query(source: bytes | str | os.PathLike[str] | Image.Image) -> QueryImage:
    """Decode an uploaded file (bytes), a path or a PIL image into an RGB query image.

    Raises :class:`cbir.images.ImageDecodeError` with a user-facing message for empty, non-image, corrupt,
    truncated, too small and too large inputs; what is converted (CMYK, 16-bit, transparency, animation, a big
    photo decoded at reduced scale) is explained in ``notes``.
    """
    if isinstance(source, Image.Image):
        image = source if source.mode == "RGB" else source.convert("RGB")
        return QueryImage(image=image, original_size=source.size, original_mode=source.mode)
    if not isinstance(source, bytes | bytearray):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"{path}: no such file")
        source = path.read_bytes()
    data = bytes(source)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageDecodeError(
            f"the file is too big ({len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB)"
        )
    notes: list[str] = []
    try:
        fmt, mode, size, frames, transparent = _probe(data)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        fmt, mode, size, frames, transparent = None, "RGB", (0, 0), 1, False  # load_image words the error
    pixels = size[0] * size[1]
    if fmt == "JPEG" and MAX_PIXELS < pixels <= MAX_JPEG_PIXELS:  # load_image decodes it at a reduced scale
        notes.append(
            f"This photo is {pixels / 1e6:.0f} megapixels; it was decoded at reduced size for the search "
            f"(the model looks at 224×224 pixels anyway)."
        )
    elif pixels > MAX_PIXELS:  # say it in megapixels before Pillow's decompression-bomb wording does
        raise ImageDecodeError(
            f"the image is too large ({size[0]}×{size[1]} = {pixels / 1e6:.0f} megapixels; the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels). Please use a smaller version of it."
        )
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
    return QueryImage(image=image, notes=notes, original_size=size, original_mode=mode, format=fmt)


def tile(source: str | os.PathLike[str] | Image.Image, side: int = 256) -> Image.Image:
    """A ``side``×``side`` RGB tile: the image fitted inside, centred on white, so result grids line up."""
    image = source if isinstance(source, Image.Image) else load_image(source)
    fitted = image.convert("RGB")
    fitted.thumbnail((side, side))
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(fitted, ((side - fitted.width) // 2, (side - fitted.height) // 2))
    return canvas
