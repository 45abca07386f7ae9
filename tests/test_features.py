"""Feature extraction: shapes, determinism, the per-image cache, resumption, broken files and the feature store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from cbir.core.storage import ArtifactError, save_artifact
from cbir.data.collection import scan_collection
from cbir.features.extractor import FeatureExtractor, extract_collection, feature_path, legacy_path, model_device
from cbir.features.sources import FEATURES_KIND, FeatureSet, FeatureSetVersion, load_features, read_meta
from cbir.features.store import is_store, write_store
from tests.conftest import write_image

BACKBONE = "resnet50v2"  # random weights: the pipeline is under test, not the ImageNet features


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(BACKBONE, weights=None, batch_size=4, workers=2)


def _collection(root: Path, per_class: int = 4) -> Path:
    for label in ("a", "b"):
        for i in range(per_class):
            write_image(root / label / f"{i}.png", size=(50 + i, 40), seed=i + (10 if label == "b" else 0))
    return root


def test_shape_dtype_and_determinism(tmp_path: Path, extractor: FeatureExtractor) -> None:
    catalog = scan_collection(_collection(tmp_path / "c"))
    first = extract_collection(catalog, extractor, out_path=tmp_path / "f1.joblib")
    assert first.features.shape == (8, 2048) and first.features.dtype == np.float32
    assert np.isfinite(first.features).all()
    other = FeatureExtractor(BACKBONE, weights=None, batch_size=3, workers=1)  # new model, same seed
    second = extract_collection(catalog, other, out_path=tmp_path / "f2.joblib")
    assert np.allclose(first.features, second.features, atol=1e-4)
    assert first.catalog["path"].tolist() == catalog.images["path"].tolist()


def test_cache_reuse_and_incremental(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c")
    out = tmp_path / "features.joblib"
    first = extract_collection(scan_collection(root), extractor, out_path=out)
    assert first.meta["computed"] == 8
    again = extract_collection(scan_collection(root), extractor, out_path=out)
    assert again.meta["computed"] == 0
    assert np.array_equal(first.features, again.features)
    write_image(root / "a" / "new.png", seed=99)
    added = extract_collection(scan_collection(root), extractor, out_path=out)
    assert added.meta["computed"] == 1 and len(added.features) == 9
    write_image(root / "b" / "0.png", size=(70, 70), seed=123)  # changed content → size/mtime change
    changed = extract_collection(scan_collection(root), extractor, out_path=out)
    assert changed.meta["computed"] == 1
    assert np.array_equal(load_features(out).features, changed.features)


def test_broken_files_are_reported_not_fatal(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c", per_class=3)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    result = extract_collection(scan_collection(root), extractor, out_path=tmp_path / "f.joblib")
    assert len(result.features) == 6
    assert sorted(Path(p).name for p in result.report["path"]) == ["broken.jpg", "empty.png"]
    again = extract_collection(scan_collection(root), extractor, out_path=tmp_path / "f.joblib")
    assert again.meta["computed"] == 0 and len(again.report) == 2  # rejections are cached too


@pytest.mark.slow
def test_half_written_or_foreign_artifact_is_rebuilt(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c", per_class=2)
    out = tmp_path / "f.joblib"
    extract_collection(scan_collection(root), extractor, out_path=out)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 3])  # half-written
    with pytest.raises(ArtifactError):
        load_features(out)
    rebuilt = extract_collection(scan_collection(root), extractor, out_path=out)
    assert rebuilt.meta["computed"] == 4
    joblib.dump(
        {"kind": "features", "version": 1, "payload": {"meta": {"backbone": "resnet50", "weights_id": "x"}}}, out
    )
    assert extract_collection(scan_collection(root), extractor, out_path=out).meta["computed"] == 4


@pytest.mark.slow
def test_interrupted_run_resumes(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c", per_class=6)
    out = tmp_path / "f.joblib"

    def interrupt(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_collection(scan_collection(root), extractor, out_path=out, progress=interrupt, checkpoint_every=4)
    with pytest.raises(ArtifactError, match="interrupted"):
        load_features(out)
    resumed = extract_collection(scan_collection(root), extractor, out_path=out)
    assert resumed.meta["computed"] == 12 - 8 and len(resumed.features) == 12


def test_default_path_is_a_store_under_artifacts(tmp_path: Path) -> None:
    path = feature_path(tmp_path, "resnet50", "random-seed0")
    assert path.name == "resnet50-random-seed0" and "features" in path.parts and is_store(path)


def _catalog(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(n)],
            "relpath": [f"{i}.png" for i in range(n)],
            "label": [None if i % 5 == 0 else f"c{i % 3}" for i in range(n)],
            "split": "train",
            "role": ["distractor" if i % 5 == 0 else "index" for i in range(n)],
            "size": np.arange(n, dtype=np.int64) + 100,
            "mtime_ns": np.arange(n, dtype=np.int64) * 1_000_000_007,
        }
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_reopens_as_memory_map_equal_to_the_features(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1000, 24)).astype(np.float32)
    catalog = _catalog(1000)
    meta = {"backbone": "b", "weights_id": "w", "dim": 24, "complete": True, "n_images": 1000}
    chunks = (features[i : i + 300] for i in range(0, 1000, 300))  # streamed in uneven chunks
    write_store(tmp_path / "s", chunks, catalog, pd.DataFrame(columns=["path", "reason"]), {}, meta, dtype=dtype)
    loaded = load_features(tmp_path / "s")
    assert isinstance(loaded.features, np.memmap) and loaded.features.filename is not None  # mapped, not copied
    assert not loaded.features.flags.writeable and loaded.features.dtype == np.dtype(dtype)
    assert np.array_equal(loaded.features, features.astype(dtype))
    pd.testing.assert_frame_equal(loaded.catalog, catalog, check_dtype=False)
    assert loaded.meta["dtype"] == dtype and read_meta(tmp_path / "s" / "meta.json")["n_images"] == 1000


def test_failed_store_write_keeps_the_previous_generation(tmp_path: Path) -> None:
    features = np.arange(40, dtype=np.float32).reshape(10, 4)
    meta = {"backbone": "b", "weights_id": "w", "dim": 4, "complete": True}
    write_store(tmp_path / "s", [features], _catalog(10), pd.DataFrame(columns=["path", "reason"]), {}, meta)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())

    def broken() -> Iterator[np.ndarray]:
        yield features[:5]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_store(tmp_path / "s", broken(), _catalog(10), pd.DataFrame(columns=["path", "reason"]), {}, meta)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before  # no temp file left, old one intact
    assert np.array_equal(load_features(tmp_path / "s").features, features)


def test_store_extraction_equals_joblib_and_reuses_its_cache(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c", per_class=3)
    (root / "a" / "broken.jpg").write_bytes(b"not an image")
    catalog = scan_collection(root)
    in_memory = extract_collection(catalog, extractor, out_path=tmp_path / "f.joblib")
    store = tmp_path / "store"
    stored = extract_collection(catalog, extractor, out_path=store)
    assert isinstance(stored.features, np.memmap)
    assert np.array_equal(stored.features, in_memory.features)  # max abs difference 0
    assert stored.report["path"].tolist() == in_memory.report["path"].tolist()
    assert stored.catalog["path"].tolist() == in_memory.catalog["path"].tolist()
    assert extract_collection(scan_collection(root), extractor, out_path=store).meta["computed"] == 0
    write_image(root / "b" / "new.png", seed=77)
    added = extract_collection(scan_collection(root), extractor, out_path=store)
    assert added.meta["computed"] == 1 and len(load_features(store).features) == 7
    assert {p.suffix for p in store.iterdir()} == {".json", ".npy", ".parquet"}  # old generations removed
    assert len(list(store.glob("*.npy"))) == 1
    half = extract_collection(scan_collection(root), extractor, out_path=store, dtype="float16")
    assert half.features.dtype == np.float16 and np.array_equal(half.features, added.features.astype(np.float16))
    write_image(root / "b" / "newer.png", seed=78)
    assert extract_collection(scan_collection(root), extractor, out_path=store).features.dtype == np.float16  # kept


def test_store_in_a_user_folder_leaves_other_files_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data.npy").write_bytes(b"mine too")
    meta = {"backbone": "b", "weights_id": "w", "dim": 2, "complete": True}
    for _ in range(2):
        write_store(tmp_path, [np.ones((3, 2), np.float32)], _catalog(3), pd.DataFrame(), {}, meta)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "data.npy").is_file()
    assert len(list(tmp_path.glob("features-*.npy"))) == 1


def test_joblib_version_reads_an_untouched_file_once(
    tmp_path: Path, real_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A legacy joblib feature set's version (what saved indexes and the engine key on): its mtime and its rows,
    counted once per state of the file: asked again, an untouched file is not read; a rewritten one, even with the
    same mtime, is."""
    path = tmp_path / "f.joblib"

    def write(n: int) -> None:  # the real features' first n rows, as the extractor's single-file format holds them
        catalog = real_features.catalog.iloc[:n].reset_index(drop=True)
        features = np.asarray(real_features.features[:n], dtype=np.float32)
        meta = {**real_features.meta, "complete": True, "n_images": n}
        payload = {"features": features, "catalog": catalog, "report": pd.DataFrame(), "meta": meta}
        save_artifact(path, FEATURES_KIND, payload)

    write(300)
    first = FeatureSetVersion.of(path)
    mtime = path.stat().st_mtime_ns
    assert first == FeatureSetVersion(str(mtime), 0, 300)

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("joblib.load called for an untouched file")

    with monkeypatch.context() as patch:
        patch.setattr(joblib, "load", no_reading)
        assert FeatureSetVersion.of(path) == first
    write(200)
    os.utime(path, ns=(mtime, mtime))  # rewritten within the same clock tick
    assert FeatureSetVersion.of(path) == FeatureSetVersion(str(mtime), 0, 200)
    assert len(load_features(path).features) == 200


def test_legacy_joblib_is_converted_to_a_store(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c", per_class=2)
    store = tmp_path / "features" / "x"
    legacy = extract_collection(scan_collection(root), extractor, out_path=legacy_path(store))
    converted = extract_collection(scan_collection(root), extractor, out_path=store)
    assert converted.meta["computed"] == 0 and np.array_equal(converted.features, legacy.features)
    assert not legacy_path(store).exists() and (store / "meta.json").is_file()


@pytest.mark.slow
def test_interrupted_store_extraction_resumes_from_parts(tmp_path: Path, extractor: FeatureExtractor) -> None:
    root = _collection(tmp_path / "c", per_class=6)
    out = tmp_path / "store"
    reference = extract_collection(scan_collection(root), extractor, out_path=tmp_path / "ref.joblib")

    def interrupt(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_collection(scan_collection(root), extractor, out_path=out, progress=interrupt, checkpoint_every=4)
    assert len(list(out.glob("part-*.npy"))) == 2  # two checkpoints of 4 rows
    with pytest.raises(ArtifactError, match="interrupted"):
        load_features(out)
    resumed = extract_collection(scan_collection(root), extractor, out_path=out)
    assert resumed.meta["computed"] == 12 - 8 and np.array_equal(resumed.features, reference.features)
    assert not list(out.glob("part-*"))


@pytest.mark.integration
def test_real_images_real_imagenet_features(openclipart_small: Path) -> None:
    """EfficientNet-Lite0 ImageNet features on real clip art: same-class images are closer than others."""
    catalog = scan_collection(openclipart_small)
    extractor = FeatureExtractor("efficientnet_lite0", "imagenet", batch_size=16)
    result = extract_collection(catalog, extractor)
    assert result.features.shape == (len(catalog.images), 1280)
    labelled = result.catalog["label"].notna().to_numpy()
    x, labels = result.features[labelled], result.labels[labelled]
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    same = labels[:, None] == labels[None]
    np.fill_diagonal(same, False)
    different = labels[:, None] != labels[None]
    assert d[same].mean() < d[different].mean()


def test_model_device_names_the_device() -> None:
    import tensorflow as tf

    device = model_device()
    gpus = tf.config.list_physical_devices("GPU")
    assert device.startswith("GPU: ") if gpus else device == "CPU (no GPU found)"
