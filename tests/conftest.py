"""Shared fixtures. Real-data fixtures skip locally when the data is absent; under CI (``CBIR_REQUIRE_REAL_DATA=1``,
set by ``.ci/run``) the installed Open Clip Art collection is required, and ``../shared/data`` / ``../shared/weights``
are required whenever those folders exist."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cbir.core import config
from cbir.features.sources import FeatureSet, load_features

# the benchmark scripts import their shared harness as `harness` (their own folder is on the path when run as
# scripts); the tests import them as benchmarks.<name>, so that folder goes last on the path
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

REQUIRE_REAL = os.environ.get("CBIR_REQUIRE_REAL_DATA") == "1"
# Fixtures that cost tens of seconds per session (the small Open Clip Art collection is converted and its features
# extracted): every test that uses one, directly or through another fixture, is slow.
SLOW_FIXTURES = frozenset({"openclipart_small"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need a :data:`SLOW_FIXTURES` fixture ``slow``, so ``-m "not slow"`` stays quick."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail under CI: a missing real input must not pass silently there."""
    if not condition:
        if REQUIRE_REAL:
            pytest.fail(f"required real input missing: {reason}")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_artifacts(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Tests write artifacts under a temp dir unless they opt into the real ones (``real_artifacts`` marker)."""
    if request.node.get_closest_marker("real_artifacts") is None:
        artifacts = tmp_path_factory.mktemp("artifacts")
        # converted EfficientNet weights are costly to redo: share the real conversion cache
        real_weights = config.PROJECT_ROOT / "artifacts" / "weights"
        real_weights.mkdir(parents=True, exist_ok=True)
        (artifacts / "weights").symlink_to(real_weights, target_is_directory=True)
        monkeypatch.setenv("CBIR_ARTIFACTS", str(artifacts))


@pytest.fixture(scope="session")
def openclipart_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real collection: up to 6 index + 6 query images per Open Clip Art category (+ distractors)."""
    source = config.openclipart_dir()
    require(source.is_dir(), f"no Open Clip Art at {source} (apt-get install openclipart-png)")
    from cbir.data.openclipart import build_collection

    out = tmp_path_factory.mktemp("openclipart_small")
    build_collection(out, limit_per_class=6, workers=2)
    return out


@pytest.fixture(scope="session")
def paper_data() -> Path:
    """The paper's real data under ``../shared/data`` (required when that folder exists)."""
    data = config.shared_data_dir()
    if data is None or not data.is_dir() or not any(data.iterdir()):
        pytest.skip(f"no paper data at {data}")
    return data


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """``../shared/weights`` with the Keras ResNet files (required when that folder exists)."""
    folder = config.weights_dir()
    if folder is None or not folder.is_dir():
        pytest.skip(f"no weights folder at {folder}")
    return folder


def write_image(
    path: Path,
    mode: str = "RGB",
    size: tuple[int, int] = (64, 48),
    fmt: str | None = None,
    seed: int = 0,
    **save_kwargs: object,
) -> Path:
    """A real image file with structured content (gradients + noise) in ``mode``."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), rng.integers(0, 256, (h, w))], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode == "I;16":
        image = Image.fromarray((xx * 60000 // max(w - 1, 1)).astype(np.uint16))
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **save_kwargs)
    return path


@pytest.fixture(scope="session")
def small_features_file(openclipart_small: Path) -> Path:
    """EfficientNet-Lite0 features of :func:`openclipart_small` (extracted once per session)."""
    from builders import small_feature_path

    return small_feature_path(openclipart_small)


@pytest.fixture(scope="session")
def small_features(small_features_file: Path) -> FeatureSet:
    return load_features(small_features_file)


# ----------------------------------------------------------------------------------------------------------
# The app in a real browser (test_browser, test_bad_inputs, test_load): the helpers are benchmarks/browser.py's
# ----------------------------------------------------------------------------------------------------------

SCREENSHOTS = config.PROJECT_ROOT / "artifacts" / "screenshots"


@pytest.fixture
def server(tmp_path: Path, openclipart_small: Path) -> Iterator[Any]:
    """``streamlit run app.py`` on a free loopback port against the small collection (a
    :class:`benchmarks.browser.Server`: ``.url``, ``.log()``); always stopped afterwards."""
    from builders import install_feature_set, small_feature_path

    from benchmarks.browser import chromium_available, streamlit_server

    if not chromium_available():
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    install_feature_set(small_feature_path(openclipart_small), openclipart_small)
    env = {"CBIR_COLLECTION": str(openclipart_small), "CBIR_ARTIFACTS": str(config.artifacts_dir())}
    with streamlit_server(tmp_path / "streamlit.log", env) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver), quit afterwards."""
    from benchmarks.browser import chromium, chromium_available

    if not chromium_available():
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def grown(tmp_path: Path) -> tuple[Path, Path]:
    """(collection, store): copies of 15 real images + 3 distractors, features by a model-free extractor
    (:class:`builders.PixelExtractor`); the collection and the store to grow and shrink (tests of growth and of
    the saved indexes that follow it)."""
    from builders import REAL_COLLECTION, PixelExtractor, copy_real_collection

    from cbir.data.collection import scan_collection
    from cbir.features.extractor import extract_collection

    require(REAL_COLLECTION.is_dir(), f"no default collection at {REAL_COLLECTION} (python -m cbir openclipart)")
    root = copy_real_collection(tmp_path / "collection")
    store = tmp_path / "features" / "pixels"
    extract_collection(scan_collection(root), PixelExtractor(), out_path=store)
    return root, store


@pytest.fixture(scope="session")
def real_features(request: pytest.FixtureRequest) -> FeatureSet:
    """The default collection's real EfficientNet-Lite0 ImageNet features (4,913 indexed x 1280-d) when they have
    been extracted, else those of the small real collection the other tests use (a fresh clone, CI)."""
    from builders import REAL_COLLECTION

    stores = sorted((REAL_COLLECTION.parents[1] / "features").glob("*/efficientnet_lite0-*imagenet*/meta.json"))
    if stores:
        return load_features(stores[0].parent)
    return request.getfixturevalue("small_features")
