"""Decoding real files in every odd mode and every broken form."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.data.images import ImageDecodeError, load_image, resize_for_model
from tests.conftest import write_image


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix"),
    [
        ("RGB", "JPEG", ".jpg"),
        ("L", "JPEG", ".jpg"),
        ("CMYK", "JPEG", ".jpg"),
        ("RGB", "PNG", ".png"),
        ("RGBA", "PNG", ".png"),
        ("LA", "PNG", ".png"),
        ("P", "PNG", ".png"),
        ("I;16", "PNG", ".png"),
        ("1", "PNG", ".png"),
        ("RGB", "WEBP", ".webp"),
        ("RGBA", "WEBP", ".webp"),
        ("RGB", "BMP", ".bmp"),
        ("P", "GIF", ".gif"),
        ("RGB", "TIFF", ".tiff"),
        ("CMYK", "TIFF", ".tif"),
    ],
)
def test_every_mode_and_format_becomes_rgb(tmp_path: Path, mode: str, fmt: str, suffix: str) -> None:
    path = write_image(tmp_path / f"img{suffix}", mode=mode, size=(40, 30), fmt=fmt)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    array = np.asarray(image)
    assert array.std() > 0, "decoded content should not be blank"


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))  # opaque blue left half
    path = tmp_path / "t.png"
    rgba.save(path)
    array = np.asarray(load_image(path))
    assert tuple(array[5, 2]) == (0, 0, 255)
    assert tuple(array[5, 15]) == (255, 255, 255)


def test_sixteen_bit_uses_full_range(tmp_path: Path) -> None:
    array = np.asarray(load_image(write_image(tmp_path / "g16.png", mode="I;16", size=(64, 16))))
    assert array.min() == 0 and array.max() == 255  # not clipped to white


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    array = np.asarray(load_image(path))
    assert array[8, 8, 0] > 200 and array[8, 8, 1] < 50  # red, the first frame


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 60)


def test_bytes_input_and_resize(tmp_path: Path) -> None:
    data = write_image(tmp_path / "a.png", size=(100, 50)).read_bytes()
    image = load_image(data)
    array = resize_for_model(image, (224, 224))
    assert array.shape == (224, 224, 3) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 255.0


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_jpeg(tmp_path: Path) -> Path:
    data = write_image(tmp_path / "full.jpg", size=(256, 256)).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_png(tmp_path: Path) -> Path:
    data = write_image(tmp_path / "full.png", size=(256, 256)).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_png(tmp_path: Path) -> Path:
    data = bytearray(write_image(tmp_path / "ok.png", size=(128, 128)).read_bytes())
    data[100:400] = bytes(300)  # zero out part of the compressed stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    return path


def _bomb(tmp_path: Path) -> Path:
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 megapixels in a few kilobytes
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _file(p / "empty.jpg", b""), "empty"),
        (lambda p: _file(p / "notes.jpg", b"hello, not an image"), "not an image"),
        (_truncated_jpeg, "corrupt or truncated"),
        (_truncated_png, "corrupt or truncated"),
        (_corrupt_png, "corrupt or truncated"),
        (_bomb, "too large"),
        (lambda p: write_image(p / "tiny.png", size=(1, 1)), "too small"),
        (lambda p: p / "missing.png", "no such file"),
    ],
)
def test_broken_inputs_raise_clear_errors(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ImageDecodeError, match=message):
        load_image(path)
    if path.exists():
        with pytest.raises(ImageDecodeError, match=message.replace("no such file", "empty")):
            load_image(path.read_bytes())


def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(io.BytesIO(b"%PDF-1.4 not really").getvalue())


@pytest.mark.integration
def test_real_openclipart_images_decode(openclipart_small: Path) -> None:
    files = sorted(openclipart_small.rglob("*.jpg"))[:30]
    assert len(files) == 30
    for path in files:
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 8


def test_big_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    """A 50-megapixel photo is usable: the JPEG decoder itself downscales it below the pixel limit."""
    path = tmp_path / "photo50mp.jpg"
    Image.new("RGB", (8660, 5774), (30, 120, 200)).save(path, quality=70)
    image = load_image(path)
    assert image.size == (2165, 1444)  # 1/4: the coarsest DCT scale that keeps at least a megapixel
    assert np.asarray(image)[10, 10].tolist() == pytest.approx([30, 120, 200], abs=3)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(path, max_pixels=500_000)  # 50 MP is more than 64 × 0.5 MP: refused


def test_decode_or_reason_and_prefetched(tmp_path: Path) -> None:
    import threading

    from cbir.data.images import decode_or_reason, prefetched

    good = write_image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert decode_or_reason(str(good), lambda image: image.size) == (64, 48)
    reason = decode_or_reason(str(bad), lambda image: image.size)
    assert isinstance(reason, str) and "not an image" in reason
    # in order, whatever the threads finish first; at most `depth` items ahead of the consumer
    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * item

    results = prefetched(work, range(10), depth=3, workers=2)
    assert next(results) == 0
    assert max(started) <= 3
    assert list(results) == [i * i for i in range(1, 10)]
