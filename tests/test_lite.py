"""A query's forward pass through TensorFlow Lite (cbir.features.lite): the real EfficientNet-Lite0 ImageNet model
converted once per module, its features of real photos and drawings equal to TensorFlow's, the conversion kept and
read back (a corrupt one converted again), TensorFlow kept when told or when the features differ, and one model
shared by threads. How much sooner it embeds is measured by benchmarks/query_model.py, not here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cbir.data.query import decode_query
from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png
from cbir.features import lite
from cbir.features.extractor import FeatureExtractor

LITE = "TensorFlow Lite (XNNPACK)"


def model() -> FeatureExtractor:
    return FeatureExtractor("efficientnet_lite0", "imagenet", batch_size=1)


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the real model's conversion is kept (converted once here, ~5 s)."""
    folder = tmp_path_factory.mktemp("lite")
    assert lite.use_for_queries(model(), folder) == LITE
    return folder


@pytest.fixture(scope="module")
def images(openclipart_small: Path) -> list[Image.Image]:
    """Real photos (the Example photos of the Search page) and drawings of the collection, decoded as queries."""
    drawings = sorted(openclipart_small.rglob("*.jpg"))[:3]
    return [decode_query(sample_photo_png(name)).image for name in SAMPLE_PHOTOS[:3]] + [
        decode_query(path).image for path in drawings
    ]


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*_args: Any) -> bytes:
        raise AssertionError("converted again")

    monkeypatch.setattr(lite, "convert", refuse)
    yield


@pytest.mark.slow
def test_tensorflow_lite_gives_the_models_features_of_real_images(kept: Path, images: list[Image.Image]) -> None:
    extractor = model()
    expected = np.concatenate([extractor.transform([image]) for image in images])  # TensorFlow's graph
    assert extractor.single_forward is None
    assert lite.use_for_queries(extractor, kept) == LITE
    assert extractor.single_forward is not None
    got = np.concatenate([extractor.transform([image]) for image in images])
    assert got.shape == expected.shape == (len(images), 1280) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= lite.TOLERANCE * np.abs(expected).max()
    assert not np.array_equal(got, expected)  # the other runtime did run: its sums differ in the last bits
    # each image's nearest among them is itself either way, and the order of distances holds
    distances = np.linalg.norm(got[:, None] - expected[None], axis=-1)
    assert (distances.argmin(axis=1) == np.arange(len(images))).all()
    batch = extractor.predict_arrays(np.stack([extractor.prepare(image) for image in images[:2]]))
    np.testing.assert_allclose(batch, expected[:2], rtol=1e-5, atol=1e-5)  # a batch keeps TensorFlow's graph


@pytest.mark.slow
def test_the_conversion_is_kept_and_read_back(kept: Path, no_conversion: None) -> None:
    files = list(kept.glob("*.tflite"))
    assert [file.name for file in files] == [lite.cache_file(model(), kept).name]
    assert lite.use_for_queries(model(), kept) == LITE  # read back, not converted (convert() refuses here)


@pytest.mark.slow
def test_a_corrupt_kept_conversion_is_converted_again(kept: Path, tmp_path: Path) -> None:
    extractor = model()
    file = lite.cache_file(extractor, tmp_path)
    file.write_bytes(kept.joinpath(file.name).read_bytes()[:100_000])  # half-written
    assert lite.use_for_queries(extractor, tmp_path) == LITE
    assert file.read_bytes() == kept.joinpath(file.name).read_bytes()


@pytest.mark.slow
def test_queries_keep_tensorflow_when_told_or_when_the_features_differ(
    kept: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lite.RUNTIME_ENV, "keras")
    extractor = model()
    assert lite.use_for_queries(extractor, kept) == "TensorFlow (CBIR_QUERY_RUNTIME=keras)"
    assert extractor.single_forward is None
    monkeypatch.delenv(lite.RUNTIME_ENV)
    monkeypatch.setattr(lite, "TOLERANCE", 0.0)  # not even the last bits may differ
    said = lite.use_for_queries(extractor, tmp_path)
    assert said.startswith("TensorFlow (TensorFlow Lite's features differ by") and extractor.single_forward is None
    assert not list(tmp_path.glob("*.tflite"))  # nothing kept that is not used


@pytest.mark.slow
def test_a_model_the_converter_refuses_keeps_tensorflow(tmp_path: Path, no_conversion: None) -> None:
    extractor = model()
    said = lite.use_for_queries(extractor, tmp_path)
    assert said == "TensorFlow (the model could not be converted: converted again)"
    assert extractor.single_forward is None


@pytest.mark.slow
def test_one_model_answers_threads_at_once(kept: Path, images: list[Image.Image]) -> None:
    extractor = model()
    assert lite.use_for_queries(extractor, kept) == LITE
    alone = [extractor.transform([image]) for image in images]
    together: dict[int, list[np.ndarray]] = {}

    def embed(worker: int) -> None:
        together[worker] = [extractor.transform([image]) for image in images for _ in range(3)][::3]

    workers = [threading.Thread(target=embed, args=(worker,)) for worker in range(4)]  # more than its interpreters
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert sorted(together) == [0, 1, 2, 3]
    for features in together.values():
        for got, expected in zip(features, alone, strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_a_conversion_that_cannot_be_kept_is_used_all_the_same(tmp_path: Path) -> None:
    extractor = model()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the folder would be")
    assert lite.use_for_queries(extractor, not_a_folder) == LITE  # converted, used, not kept (logged)
    assert extractor.single_forward is not None and not_a_folder.is_file()
