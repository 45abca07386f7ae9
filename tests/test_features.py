"""Feature extraction: shapes, determinism, the per-image cache, resumption and broken files."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from cbir.collection import scan_collection
from cbir.features import FeatureExtractor, extract_collection, feature_path, load_features
from cbir.storage import ArtifactError
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


def test_default_path_is_under_artifacts(tmp_path: Path) -> None:
    path = feature_path(tmp_path, "resnet50", "random-seed0")
    assert path.name == "resnet50-random-seed0.joblib" and "features" in path.parts


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
