"""Query decoding (cbir.data.query): bad uploads get a message for the user, unusual ones a note, and result tiles."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from builders import bad_uploads, gradient, unusual_uploads
from PIL import Image

from cbir.data.images import ImageDecodeError
from cbir.data.query import MISSING_TILE_COLOR, decode_query, keep_tiles, tile, tiles_jpeg


@pytest.mark.parametrize("name", list(bad_uploads()))
def test_bad_uploads_raise_user_messages(name: str) -> None:
    data, words = bad_uploads()[name]
    with pytest.raises(ImageDecodeError) as info:
        decode_query(data)
    message = str(info.value)
    assert words in message
    assert "uploaded data" not in message  # no internal wording


@pytest.mark.parametrize("name", list(unusual_uploads()))
def test_unusual_uploads_decode_with_a_note(name: str) -> None:
    data, words = unusual_uploads()[name]
    query = decode_query(data)
    assert query.image.mode == "RGB"
    assert min(query.image.size) >= 8
    assert any(words in note for note in query.notes), query.notes
    if name == "50 MP photo":  # decoded at reduced scale, not at 50 MP
        assert query.image.size[0] * query.image.size[1] < 4_000_000
        assert query.original_size == (8200, 6150)


def test_plain_images_have_no_notes(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    gradient().save(path)
    query = decode_query(path)
    assert query.notes == [] and query.image.size == (96, 64)
    assert decode_query(gradient()).image.size == (96, 64)
    with pytest.raises(ImageDecodeError, match="no such file"):
        decode_query(tmp_path / "missing.png")


def test_tile_is_square() -> None:
    square = tile(gradient((300, 100)), side=128)
    assert square.size == (128, 128) and square.mode == "RGB"
    assert square.getpixel((64, 2)) == (255, 255, 255)  # padding above a wide image


def test_result_tiles_are_small_jpegs_kept_per_file_until_it_changes(tmp_path: Path) -> None:
    wide, tall, missing = tmp_path / "wide.png", tmp_path / "tall.png", tmp_path / "missing.png"
    gradient((300, 100)).save(wide)
    gradient((50, 200)).save(tall)
    paths = [str(wide), str(tall), str(missing)]
    first = tiles_jpeg(paths, side=128)
    for data, path in zip(first[:2], paths, strict=False):
        shown = Image.open(io.BytesIO(data))
        assert shown.format == "JPEG" and shown.size == (128, 128) and shown.mode == "RGB"
        difference = np.abs(np.asarray(shown, dtype=int) - np.asarray(tile(path, side=128), dtype=int))
        assert difference.mean() < 3  # the same tile, up to JPEG's loss
    grey = np.asarray(Image.open(io.BytesIO(first[2])), dtype=int)
    assert np.abs(grey - np.array(Image.new("RGB", (1, 1), MISSING_TILE_COLOR).getpixel((0, 0)))).max() < 8
    again = tiles_jpeg(paths, side=128)
    assert all(a is b for a, b in zip(again, first, strict=True))  # kept, not read again
    gradient((100, 100)).save(wide)
    os.utime(wide, ns=(1, 1))  # another modification time
    changed = tiles_jpeg(paths, side=128)
    assert changed[0] != first[0] and changed[1] is first[1]  # the changed file is read again


def test_tiles_are_kept_on_disk_and_read_back_while_their_files_keep_their_size_and_time(tmp_path: Path) -> None:
    from cbir.data import query

    images = []
    for n, size in enumerate([(300, 100), (50, 200), (64, 64)]):
        images.append(tmp_path / f"image{n}.png")
        gradient(size).save(images[-1])
    paths, kept = [str(path) for path in images], tmp_path / "cache" / "tiles.joblib"
    pauses: list[int] = []
    assert keep_tiles(paths, 96, kept, pause=lambda: pauses.append(1)) == 3 and kept.is_file() and pauses
    made = tiles_jpeg(paths, side=96)
    query._tiles.clear()  # a new server: an empty tile cache
    assert keep_tiles(paths, 96, kept) == 0  # all read back, none made
    assert tiles_jpeg(paths, side=96) == made
    gradient((100, 100)).save(images[0])
    os.utime(images[0], ns=(1, 1))  # changed since: made again, the others read back
    query._tiles.clear()
    assert keep_tiles(paths, 96, kept) == 1 and keep_tiles(paths, 96, kept) == 0
    kept.write_bytes(b"not a joblib file")  # unreadable: every tile made again, the file written anew
    query._tiles.clear()
    assert keep_tiles(paths, 96, kept) == 3 and keep_tiles(paths, 96, kept) == 0
