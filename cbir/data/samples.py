"""Out-of-domain example photos: scikit-image's bundled sample photos (public domain / CC0, no download).

The default collection is drawings; a photo of a cat or a cup of coffee is the query a new user tries first, and
the one that exposes hubs (blank images that answer every unfamiliar query). The Search page offers these photos
as example queries, and the hubness figures of ``report`` and the comparison page are measured on them.
"""

from __future__ import annotations

import io

from PIL import Image

from cbir.core.errors import CbirError

# Colour photos that ship inside the scikit-image wheel (no pooch download needed).
SAMPLE_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket")


class SamplesUnavailableError(CbirError):
    """scikit-image (which carries the sample photos) is not installed."""


def sample_photo(name: str) -> Image.Image:
    """One of :data:`SAMPLE_PHOTOS` as an RGB image."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose from {', '.join(SAMPLE_PHOTOS)}")
    try:
        from skimage import data
    except ImportError as exc:
        raise SamplesUnavailableError(
            "the example photos come from scikit-image: pip install scikit-image (in requirements.txt)"
        ) from exc
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def sample_photos() -> dict[str, Image.Image]:
    """Every sample photo, by name."""
    return {name: sample_photo(name) for name in SAMPLE_PHOTOS}


def sample_photo_png(name: str) -> bytes:
    """One of :data:`SAMPLE_PHOTOS` encoded as PNG: what an upload of it would send."""
    buffer = io.BytesIO()
    sample_photo(name).save(buffer, format="PNG")
    return buffer.getvalue()
