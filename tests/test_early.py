"""cbir.service.early: an upload's query begun as its bytes arrive is the same query the page's run would compute
(errors included), taken once; and the app's hook (cbir.app.uploads.begin_queries_on_upload) begins it when Streamlit
stores an upload of a session whose Search page was drawn, and never breaks the upload."""

from __future__ import annotations

import threading
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
from builders import encode
from PIL import Image

from cbir.data.images import ImageDecodeError
from cbir.data.query import header_pixels
from cbir.features.query_model import extractor_spec, make_extractor
from cbir.features.sources import FeatureSet
from cbir.service import early
from cbir.service.search import SearchEngine


@pytest.fixture(scope="module")
def engine(small_features: FeatureSet) -> SearchEngine:
    return SearchEngine(small_features, make_extractor(extractor_spec(small_features.meta)))


@pytest.fixture(autouse=True)
def nothing_begun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(early, "_begun", OrderedDict())  # what another test began is not counted here


def photo_bytes(features: FeatureSet, row: int = 0, fmt: str = "PNG") -> bytes:
    return encode(Image.open(features.catalog["path"].iloc[row]).convert("RGB"), fmt)


class CountingEmbeds:
    """Counts the model calls of ``engine`` (and which thread made them) while it is patched in."""

    def __init__(self, engine: SearchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[str] = []
        embed = engine.embed

        def counted(image: Image.Image) -> np.ndarray:
            self.threads.append(threading.current_thread().name)
            return embed(image)

        monkeypatch.setattr(engine, "embed", counted)


def test_begun_query_is_taken_once_with_the_same_features(
    engine: SearchEngine, small_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = photo_bytes(small_features)
    expected = engine.embed_query(data)
    calls = CountingEmbeds(engine, monkeypatch)
    early.begin(engine, data)
    early.begin(engine, data)  # the same bytes again (a second add_file of one upload): one model call
    assert early.pending() == 1
    taken = early.embedded(engine, data)
    assert calls.threads and all(name.startswith("cbir-early-query") for name in calls.threads)
    assert len(calls.threads) == 1
    np.testing.assert_allclose(taken.vector, expected.vector, atol=1e-5)
    assert taken.image.original_size == expected.image.original_size and taken.embed_seconds > 0
    assert early.pending() == 0
    # taken once: the next run of the page (the same query, a slider moved) computes it again, in its own thread
    again = early.embedded(engine, data)
    assert len(calls.threads) == 2 and calls.threads[-1] == threading.current_thread().name
    np.testing.assert_allclose(again.vector, expected.vector, atol=1e-5)
    # and a query answers the same from what was begun as from the bytes
    early.begin(engine, data)
    answer = engine.query(early.embedded(engine, data))
    assert answer.results["id"].tolist() == engine.query(data).results["id"].tolist()
    assert answer.results.iloc[0]["id"] == 0 and answer.embed_seconds > 0


def test_a_bad_upload_begun_raises_the_pages_error(engine: SearchEngine, small_features: FeatureSet) -> None:
    good = photo_bytes(small_features, fmt="JPEG")
    for bad in (b"not an image at all", good[: len(good) // 3]):  # text; a truncated JPEG
        with pytest.raises(ImageDecodeError) as direct:
            engine.embed_query(bad)
        early.begin(engine, bad)
        with pytest.raises(ImageDecodeError) as begun:
            early.embedded(engine, bad)
        assert str(begun.value) == str(direct.value)
    assert early.pending() == 0


def test_a_large_file_is_decoded_in_the_worker(
    engine: SearchEngine, small_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = photo_bytes(small_features, row=1)
    monkeypatch.setattr(early, "INLINE_DECODE_BYTES", len(data) - 1)  # this file counts as large
    decoded_in: list[str] = []
    decode = early.decode_query
    monkeypatch.setattr(early, "decode_query", lambda d: decoded_in.append("caller") or decode(d))
    early.begin(engine, data)
    assert early.embedded(engine, data).image.original_size == Image.open(small_features.catalog["path"].iloc[1]).size
    assert decoded_in == []  # the engine decoded it, in the worker


def test_a_flat_image_of_many_pixels_is_decoded_in_the_worker(
    engine: SearchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few kB of PNG can hold megapixels: the header's size, not only the file's, keeps its decoding off the
    server's event loop."""
    flat = encode(Image.new("RGB", (3000, 2000), (200, 40, 40)), "PNG")
    assert len(flat) < early.INLINE_DECODE_BYTES and header_pixels(flat) == 3000 * 2000 > early.INLINE_DECODE_PIXELS
    assert header_pixels(b"not an image at all") is None  # decode_query refuses it at once: decoded inline
    decoded_in: list[str] = []
    decode = early.decode_query
    monkeypatch.setattr(early, "decode_query", lambda d: decoded_in.append("caller") or decode(d))
    early.begin(engine, flat)
    assert early.embedded(engine, flat).image.original_size == (3000, 2000)
    assert decoded_in == []


def test_begun_queries_are_bounded(engine: SearchEngine, small_features: FeatureSet) -> None:
    files = [photo_bytes(small_features, row=row) for row in range(early.MAX_BEGUN + 2)]
    for data in files:
        early.begin(engine, data)
    assert early.pending() == early.MAX_BEGUN
    for data in files:  # the oldest were dropped: computed again when asked for, with the same answer
        assert early.embedded(engine, data).vector.shape == (1, engine.feature_set.features.shape[1])
    assert early.pending() == 0


def test_the_app_begins_an_uploads_query_when_streamlit_stores_it(
    engine: SearchEngine, small_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from cbir.app import uploads

    store = MemoryUploadedFileManager("/upload")
    ctx = SimpleNamespace(uploaded_file_mgr=store, session_id="searching")
    monkeypatch.setattr(uploads, "get_script_run_ctx", lambda: ctx)
    uploads.begin_queries_on_upload(engine)
    uploads.begin_queries_on_upload(engine)  # every run of the page: the store is wrapped once
    data = photo_bytes(small_features, row=2)
    store.add_file("searching", UploadedFileRec("f1", "photo.png", "image/png", data))
    assert early.pending() == 1
    assert [f.file_id for f in store.get_files("searching", ["f1"])] == ["f1"]  # stored as before
    assert early.embedded(engine, data).vector.shape[0] == 1 and early.pending() == 0
    # another session (no Search page drawn): nothing begun; a failure in the hook never fails the upload
    store.add_file("elsewhere", UploadedFileRec("f2", "photo.png", "image/png", data))
    assert early.pending() == 0
    monkeypatch.setattr(early, "begin", lambda *_: 1 / 0)
    store.add_file("searching", UploadedFileRec("f3", "photo.png", "image/png", data))
    assert [f.file_id for f in store.get_files("searching", ["f3"])] == ["f3"]
    monkeypatch.setattr(uploads, "get_script_run_ctx", lambda: None)  # outside a script run: nothing to do
    uploads.begin_queries_on_upload(engine)
