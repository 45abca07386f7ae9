"""The models of fine-tuning: backbone + the paper's head, the frozen / trainable split, feature-model export.

:data:`FIRST_TRAINABLE` is the one place that defines where Model 1's frozen part ends. Keras is imported inside the
functions, so importing the package stays cheap for the pages that only read finished runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cbir.core.storage import atomic_output
from cbir.features.backbones import WeightsArg, build_model, get_backbone, resolve_weights, weights_identity
from cbir.features.finetune.errors import FinetuneError

# The first layer that is trained in Model 1, per backbone — the one place that defines the frozen/trainable split.
# Everything downstream of this layer's *input* tensor (the boundary, cached on disk) is trainable, the rest frozen.
# * resnet50 / resnet50v2: the paper's choice. In ResNet50 the boundary is ``conv4_block6_out`` (14×14×1024); in
#   ResNet50V2 it is ``conv5_block1_preact_relu`` (7×7×1024) — the v2 conv5 block starts with a pre-activation BN
#   that precedes ``conv5_block1_1_conv`` in the layer list, so the paper's "unfreeze from conv5_block1_1_conv"
#   left it frozen, and so do we. Both conv5 shortcuts (``conv5_block1_0_conv``) come after it and are trained.
# * efficientnet_lite0: the equivalent is the last stage (stage 7 = block 15, 192→320 channels) plus the 1280-d
#   head conv; the boundary is ``block14_add`` (7×7×192).
FIRST_TRAINABLE: dict[str, str] = {
    "resnet50": "conv5_block1_1_conv",
    "resnet50v2": "conv5_block1_1_conv",
    "efficientnet_lite0": "block15_expand_conv",
}

PAPER_LR = 1e-6
HEAD_UNITS = (256, 128, 64)
HEAD_DROPOUT = 0.5
DENSE_FEATURE_LAYER = "ft_dense_256"


def _sized_backbone(name: str, weights: str | None, shape: tuple[int, int, int]) -> Any:
    """Backbone ``name`` at a non-default input ``shape`` (tests use small inputs to stay fast on a CPU)."""
    if name == "resnet50":
        from keras.applications import ResNet50

        return ResNet50(include_top=False, weights=weights, pooling="avg", input_shape=shape)
    if name == "resnet50v2":
        from keras.applications import ResNet50V2

        return ResNet50V2(include_top=False, weights=weights, pooling="avg", input_shape=shape)
    if name == "efficientnet_lite0":
        from cbir.features.efficientnet_lite import build_efficientnet_lite0

        return build_efficientnet_lite0(include_top=False, pooling="avg", weights=weights, input_shape=shape)
    raise ValueError(f"no sized builder for backbone {name!r}")


def build_backbone(
    name: str, weights: WeightsArg = "imagenet", input_size: tuple[int, int] | None = None, seed: int = 0
) -> tuple[Any, str]:
    """The backbone ``name`` (pooled output) and its weights id, optionally at another ``input_size`` (W, H).

    At the backbone's own size this is :func:`cbir.features.backbones.build_model` (local-first ImageNet weights, weight
    files, whole ``.keras`` models). Another size is for tests and only takes ``None``/ImageNet/weights files.
    """
    spec = get_backbone(name)
    if input_size is None or tuple(input_size) == tuple(spec.input_size):
        return build_model(name, weights, seed=seed)
    resolved = resolve_weights(spec, weights)
    if resolved is not None and resolved.endswith(".keras"):
        raise ValueError("a whole .keras model has a fixed input size; build it at the backbone's own size")
    import keras

    if resolved is None:
        keras.utils.set_random_seed(seed)
    width, height = input_size
    return _sized_backbone(name, resolved, (height, width, 3)), weights_identity(resolved, seed)


def build_classifier(backbone: Any, n_classes: int, seed: int = 0) -> Any:
    """The paper's head on ``backbone``'s pooled output; a functional model sharing the backbone's layers.

    Input: the backbone's input, (N, H, W, 3) float32 normalised by the backbone's ``preprocess_input``.
    Output: (N, n_classes) float32 softmax probabilities. Layers ``ft_dropout_<i>`` / ``ft_dense_<units>`` /
    ``ft_softmax``; :data:`DENSE_FEATURE_LAYER` is the 256-d layer used as a retrieval feature.
    """
    import keras
    from keras import layers

    if n_classes < 2:
        raise FinetuneError(f"need at least 2 classes to train a classifier, got {n_classes}")
    keras.utils.set_random_seed(seed + 1)  # the head's initialisation must not depend on what was built before
    x = backbone.output
    for i, units in enumerate(HEAD_UNITS, start=1):
        x = layers.Dropout(HEAD_DROPOUT, name=f"ft_dropout_{i}")(x)
        x = layers.Dense(units, activation="relu", name=f"ft_dense_{units}")(x)
    out = layers.Dense(n_classes, activation="softmax", name="ft_softmax")(x)
    return keras.Model(backbone.input, out, name=f"{backbone.name}_finetune")


def boundary_tensor(model: Any, backbone: str) -> Any:
    """The symbolic input tensor of ``FIRST_TRAINABLE[backbone]`` in ``model``: what Model 1 caches."""
    try:
        first = model.get_layer(FIRST_TRAINABLE[backbone])
    except (KeyError, ValueError) as exc:
        raise FinetuneError(f"{backbone}: layer {FIRST_TRAINABLE.get(backbone)!r} not found in the model") from exc
    # node 0 is the layer's call in the original graph; splitting the graph adds cloned nodes after it
    inputs = first._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        raise FinetuneError(f"{first.name} has {len(inputs)} inputs; the split needs a single boundary tensor")
    return inputs[0]


def split_model(classifier: Any, backbone: str) -> tuple[Any, Any]:
    """Split ``classifier`` at the boundary: ``(frozen, tail)`` with ``tail(frozen(x)) == classifier(x)``.

    ``frozen``: (N, H, W, 3) preprocessed images → boundary activations, e.g. (N, 14, 14, 1024) for ResNet50.
    ``tail``: boundary activations → (N, n_classes) probabilities; it shares its layers (and weights) with
    ``classifier``. Raises :class:`FinetuneError` when the boundary is not a cut of the graph (some path from the
    input to the output would bypass it).
    """
    import keras

    boundary = boundary_tensor(classifier, backbone)
    frozen = keras.Model(classifier.input, boundary, name=f"{backbone}_frozen")
    try:
        tail = keras.Model(boundary, classifier.output, name=f"{backbone}_tail")
    except ValueError as exc:
        raise FinetuneError(
            f"{backbone}: the input of {FIRST_TRAINABLE[backbone]} does not split the graph ({exc})"
        ) from exc
    return frozen, tail


def set_trainable(classifier: Any, tail: Any | None, freeze_bn: bool = False) -> None:
    """Model 1 (``tail`` given): only the tail's layers train. Model 2 (``tail=None``): every layer trains.

    ``freeze_bn`` keeps BatchNormalization layers frozen (Keras then runs them in inference mode), which small
    batches may need; the paper trained them, so it defaults to off.
    """
    import keras

    trainable_ids = None if tail is None else {id(layer) for layer in tail.layers}
    for layer in classifier.layers:
        trainable = trainable_ids is None or id(layer) in trainable_ids
        if freeze_bn and isinstance(layer, keras.layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable


def feature_models(classifier: Any, backbone: Any) -> dict[str, Any]:
    """Retrieval feature models of a (fine-tuned) ``classifier`` built on ``backbone`` by :func:`build_classifier`.

    ``{"pool": (N, dim) pooled backbone output, "dense256": (N, 256) relu output of the first head layer}``; both
    take the classifier's input, i.e. the backbone's preprocessed (N, H, W, 3) float32 batch.
    """
    import keras

    return {
        "pool": keras.Model(classifier.input, backbone.output, name=f"{backbone.name}_ft_pool"),
        "dense256": keras.Model(
            classifier.input, classifier.get_layer(DENSE_FEATURE_LAYER).output, name=f"{backbone.name}_ft_dense256"
        ),
    }


def compile_model(model: Any, lr: float, run_eagerly: bool = False) -> None:
    """Adam at ``lr`` (the paper names no optimizer) on sparse categorical cross-entropy, with accuracy.

    ``run_eagerly`` skips building the TensorFlow graph of the train step (10-20 s for a whole backbone): slower
    per step, so only worth it for a handful of steps (tests, debugging).
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        run_eagerly=run_eagerly,
    )
    model.optimizer.build(model.trainable_variables)  # so a checkpoint's optimizer state can be loaded into it


def save_model_atomic(model: Any, path: str | os.PathLike[str], weights_only: bool = False) -> Path:
    """``model.save`` (or ``save_weights`` for ``*.weights.h5``) to a temp name, then ``os.replace`` onto ``path``."""
    with atomic_output(path) as tmp:
        (model.save_weights if weights_only else model.save)(tmp)
    return Path(path)
