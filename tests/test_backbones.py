"""The backbone registry and the order in which weights are resolved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.features.backbones import (
    BACKBONES,
    WeightsNotFoundError,
    build_model,
    get_backbone,
    imagenet_search_paths,
    resolve_weights,
)


def test_registry_entries_are_complete() -> None:
    assert {"resnet50", "resnet50v2", "efficientnet_lite0"} <= set(BACKBONES)
    assert get_backbone("resnet50").dim == 2048 and get_backbone("efficientnet_lite0").dim == 1280
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg'.*resnet50"):
        get_backbone("vgg")


def test_preprocessing_differs_per_backbone() -> None:
    x = np.full((1, 4, 4, 3), 255.0, dtype=np.float32)
    x[..., 0] = 0.0
    v1 = get_backbone("resnet50").preprocess(x)
    v2 = get_backbone("resnet50v2").preprocess(x)
    assert np.allclose(v2[0, 0, 0], [-1.0, 1.0, 1.0])  # scaled to [-1, 1]
    assert np.allclose(v1[0, 0, 0], [255.0 - 103.939, 255.0 - 116.779, 0.0 - 123.68], atol=1e-3)  # BGR - mean
    assert x[0, 0, 0, 0] == 0.0, "preprocessing must not modify its input"


def test_imagenet_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local, keras_home = tmp_path / "weights", tmp_path / "keras"
    monkeypatch.setenv("CBIR_WEIGHTS_DIR", str(local))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    spec = get_backbone("resnet50v2")
    assert imagenet_search_paths(spec) == [local / spec.imagenet_file, keras_home / "models" / spec.imagenet_file]
    assert resolve_weights(spec, "imagenet") == "imagenet"  # nothing local: the builder will try to download
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / spec.imagenet_file).write_bytes(b"x")
    assert resolve_weights(spec, "imagenet") == str(keras_home / "models" / spec.imagenet_file)
    local.mkdir()
    (local / spec.imagenet_file).write_bytes(b"x")
    assert resolve_weights(spec, "imagenet") == str(local / spec.imagenet_file)  # the configured folder wins
    assert resolve_weights(spec, None) is None
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        resolve_weights(spec, tmp_path / "missing.h5")


def test_missing_imagenet_weights_error_names_file_and_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIR_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    try:
        model, _ = build_model("resnet50", "imagenet")
    except WeightsNotFoundError as exc:  # offline: the download fails
        message = str(exc)
        assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
        assert str(tmp_path / "w") in message and str(tmp_path / "k" / "models") in message
    else:  # online: the real download worked, which is the path users with internet get
        assert model.output_shape == (None, 2048)


@pytest.mark.slow
def test_keras_model_file_as_weights(tmp_path: Path) -> None:
    model, weights_id = build_model("resnet50v2", None, seed=3)
    assert weights_id == "random-seed3"
    path = tmp_path / "tuned.keras"
    model.save(path)
    loaded, loaded_id = build_model("resnet50v2", path)
    assert loaded_id.startswith("tuned-")
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    assert np.allclose(model(x), loaded(x), atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["resnet50", "resnet50v2"])
def test_shared_resnet_weights_load(shared_weights: Path, name: str) -> None:
    spec = get_backbone(name)
    resnet_files = [get_backbone(n).imagenet_file for n in ("resnet50", "resnet50v2")]
    if not any((shared_weights / f).is_file() for f in resnet_files):
        pytest.fail(f"{shared_weights} exists but holds neither of {resnet_files}")
    if not (shared_weights / spec.imagenet_file).is_file():
        pytest.skip(f"{shared_weights} has no {spec.imagenet_file} (yet)")
    model, weights_id = build_model(name, "imagenet")
    assert model.output_shape == (None, 2048)
    assert weights_id != "imagenet-download"


def test_weights_identity_follows_content(tmp_path: Path) -> None:
    from cbir.features.backbones import weights_identity

    first, copy, other = tmp_path / "a" / "w.h5", tmp_path / "b" / "w.h5", tmp_path / "c" / "w.h5"
    for path, data in ((first, b"weights"), (copy, b"weights"), (other, b"changed")):
        path.parent.mkdir()
        path.write_bytes(data)
    assert weights_identity(str(first)) == weights_identity(str(copy))
    assert weights_identity(str(first)) != weights_identity(str(other))
    assert weights_identity(str(first)).startswith("w-")
