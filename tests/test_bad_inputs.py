"""The bad-input corpus (issue 11, item 3): files a user may drop on the Search page that are empty, not images,
broken, dangerous, odd or useless. Each gets a clear message (an error for the unusable ones, a note for odd modes,
a warning for an image with almost no content, the browser's own refusal for a file over the upload limit), and
the app keeps working afterwards. Checked once through :func:`cbir.data.query.decode_query` (fast) and once through
the real app in headless Chromium (``browser``), with a screenshot per file under ``artifacts/screenshots/``."""

from __future__ import annotations

import io
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from conftest import SCREENSHOTS
from PIL import Image

from cbir.data.hygiene import content_fraction
from cbir.data.images import ImageDecodeError
from cbir.data.query import MAX_UPLOAD_BYTES, decode_query
from cbir.data.samples import sample_photo

Outcome = Literal["error", "note", "warning", "refused"]


@dataclass(frozen=True)
class BadInput:
    """One file of the corpus: what the user must be told (``outcome``) and words the message must contain."""

    name: str
    path: Path
    outcome: Outcome
    words: str


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30_000) -> bytes:
    """A real 1-bit PNG of ``side``×``side`` black pixels (900 megapixels for 30,000) in about 100 kB."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row * 1000) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def build_corpus(folder: Path) -> list[BadInput]:
    """Write the corpus under ``folder`` (generated with Pillow and numpy; nothing committed)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = sample_photo("coffee")  # 400×600 RGB
    yy, xx = np.mgrid[0:120, 0:160]
    sixteen = Image.fromarray((xx * 400 + yy * 10).astype(np.uint16))  # mode I;16, values up to ~65,000
    frames = [photo.resize((160, 120)), photo.resize((160, 120)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    jpeg, png = encoded(photo, "JPEG", quality=90), encoded(photo, "PNG")
    small_png = encoded(photo.resize((120, 80)), "PNG")
    files: list[tuple[str, str, bytes, Outcome, str]] = [
        ("zero-byte", "zero-byte.jpg", b"", "error", "the file is empty"),
        ("text named .jpg", "notes.jpg", b"Shopping list:\n- milk\n- eggs\n" * 20, "error", "not an image"),
        ("truncated JPEG", "truncated.jpg", jpeg[: len(jpeg) * 3 // 5], "error", "corrupt or truncated"),
        ("truncated PNG", "truncated.png", png[: len(png) // 2], "error", "corrupt or truncated"),
        ("decompression bomb", "bomb.png", bomb_png(), "error", "too large (900 megapixels"),
        ("1×1 image", "one-pixel.png", encoded(Image.new("RGB", (1, 1), "red"), "PNG"), "error", "too small"),
        ("16-bit PNG", "sixteen-bit.png", encoded(sixteen, "PNG"), "note", "16-bit"),
        ("CMYK JPEG", "cmyk.jpg", encoded(photo.convert("CMYK"), "JPEG", quality=90), "note", "CMYK"),
        ("animated GIF", "animated.gif", gif.getvalue(), "note", "animated (2 frames)"),
        ("all-white image", "white.png", encoded(Image.new("RGB", (400, 300), "white"), "PNG"), "warning", "content"),
        # a valid PNG padded past the limit: the browser refuses it before the app sees it
        ("over the upload limit", "huge.png", small_png + bytes(MAX_UPLOAD_BYTES + 1024), "refused", "or smaller"),
    ]
    corpus = []
    for name, file_name, data, outcome, words in files:
        path = folder / file_name
        path.write_bytes(data)
        corpus.append(BadInput(name, path, outcome, words))
    return corpus


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[BadInput]:
    return build_corpus(tmp_path_factory.mktemp("bad-inputs"))


def test_corpus_decodes_to_the_promised_messages(bad_inputs: list[BadInput]) -> None:
    assert len(bad_inputs) == 11
    for case in bad_inputs:
        data = case.path.read_bytes()
        if case.outcome in ("error", "refused"):
            with pytest.raises(ImageDecodeError) as info:
                decode_query(data)
            words = case.words if case.outcome == "error" else "too big"  # the app's own cap behind the browser's
            assert words in str(info.value), (case.name, str(info.value))
            continue
        query = decode_query(data)
        assert query.image.mode == "RGB" and min(query.image.size) >= 8, case.name
        messages = query.notes if case.outcome == "note" else query.warnings
        assert any(case.words in message for message in messages), (case.name, query.notes, query.warnings)
        if case.outcome == "note":
            assert query.warnings == [], (case.name, query.warnings)


def test_content_fraction_tells_an_empty_page_from_a_photo() -> None:
    white = Image.new("RGB", (300, 200), "white")
    assert content_fraction(white) == 0.0
    dot = white.copy()
    dot.paste((0, 0, 0), (100, 100, 103, 103))  # 9 of 60,000 pixels
    assert 0 < content_fraction(dot) < 0.001
    assert decode_query(dot).warnings and "almost no content" in decode_query(dot).warnings[0]
    assert content_fraction(sample_photo("coffee")) > 0.5
    assert decode_query(sample_photo("coffee")).warnings == []


# ----------------------------------------------------------------------------------------------------------
# Through the browser
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.slow
def test_corpus_through_the_search_page(server: Any, browser: Any, bad_inputs: list[BadInput], tmp_path: Path) -> None:
    from benchmarks.browser import (
        PAGE_S,
        app_running,
        body_text,
        elements,
        open_page,
        page_errors,
        result_images,
        upload,
        wait_for,
        wait_until_idle,
    )

    driver = browser
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    open_page(driver, f"{server.url}/Search", "input[type=file]")

    def alerts(selector: str) -> list[str]:
        return [str(e.text) for e in elements(driver, selector)]

    def shown(case: BadInput) -> bool:
        if app_running(driver):
            return False
        text = body_text(driver)
        if case.outcome == "error":
            return any(case.path.name in a and case.words in a for a in alerts('[data-testid="stAlertContentError"]'))
        if case.outcome == "refused":
            return case.words in text
        return f"Query: {case.path.name}" in text and "Most similar images" in text

    seen: dict[str, str] = {}
    for case in bad_inputs:
        try:
            upload(driver, case.path)
            wait_for(lambda case=case: shown(case), PAGE_S, f"the answer to {case.path.name}")
            time.sleep(0.5)  # let the images paint for the screenshot
        except TimeoutError as exc:  # say what the page showed instead: a CI log is all there is to read
            shown_instead = alerts('[data-testid="stAlert"]') + alerts('[data-testid="stFileUploader"]')
            raise AssertionError(f"{exc}; the page showed {shown_instead}, running={app_running(driver)}") from exc
        finally:
            driver.save_screenshot(str(SCREENSHOTS / f"bad-input-{case.path.name.replace('.', '-')}.png"))
        exceptions = alerts('[data-testid="stException"]')
        assert exceptions == [], (case.name, exceptions)
        errors = alerts('[data-testid="stAlertContentError"]')
        infos = alerts('[data-testid="stAlertContentInfo"]')
        warnings = alerts('[data-testid="stAlertContentWarning"]')
        if case.outcome == "error":
            assert len(errors) == 1 and "cannot be used as a query" in errors[0], (case.name, errors)
            assert "Most similar images" not in body_text(driver), case.name
            seen[case.name] = errors[0]
        elif case.outcome == "note":
            assert errors == [] and any(case.words in i for i in infos), (case.name, infos, errors)
            assert result_images(driver) == 11, case.name
            seen[case.name] = next(i for i in infos if case.words in i)
        elif case.outcome == "warning":
            assert errors == [] and any(case.words in w for w in warnings), (case.name, warnings, errors)
            assert result_images(driver) == 11, case.name
            seen[case.name] = next(w for w in warnings if case.words in w)
        else:  # refused by the browser: the app never saw it
            text = body_text(driver)
            seen[case.name] = next(line for line in text.splitlines() if case.words in line)
    # the app keeps working: a good photo after the whole corpus gets its ten results
    good = tmp_path / "good-photo.jpg"
    sample_photo("chelsea").save(good, quality=90)
    upload(driver, good)
    wait_for(lambda: f"Query: {good.name}" in body_text(driver) and not app_running(driver), PAGE_S, "the good photo")
    wait_until_idle(driver, PAGE_S, "the page")
    time.sleep(0.5)
    driver.save_screenshot(str(SCREENSHOTS / "bad-input-after-good-photo.png"))
    assert result_images(driver) == 11, body_text(driver)
    assert page_errors(driver) == [], page_errors(driver)
    (SCREENSHOTS / "bad-input-messages.txt").write_text("".join(f"{k}: {v}\n" for k, v in seen.items()))
    log = server.log()
    assert "Traceback" not in log, log
