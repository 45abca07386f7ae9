"""The retrieval head and its training step: an MLP with an L2-normalised output trained by a metric loss.

:func:`build_head` is the embedding model (pooled features → unit vectors); :func:`fit_embedding` trains any Keras
model ending in such an embedding (the head alone on cached pooled features, or the backbone's last stage + head on
cached boundary activations) with one of :data:`~cbir.features.finetune.losses.LOSSES` on class-balanced batches
(:func:`~cbir.features.finetune.data.class_balanced_batches`). The loss's own parameters (proxy-anchor's proxies,
cross-entropy's classifier) live in a :class:`LossParameters` layer that is trained beside the model and not saved
with it: retrieval only needs the embedding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cbir.features.finetune.data import class_balanced_batches
from cbir.features.finetune.errors import FinetuneError
from cbir.features.finetune.losses import (
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    DEFAULT_TEMPERATURE,
    LOSSES,
    proxy_anchor_loss,
    softmax_ce_loss,
    supcon_loss,
)

HEAD_PREFIX = "rh_"  # every layer of the head is named rh_*, so a saved extractor shows where the head starts


def build_head(input_dim: int, dim: int = 256, hidden: int | None = 1024, seed: int = 0, name: str = "head") -> Any:
    """The retrieval head: (N, input_dim) float32 → (N, dim) float32 unit vectors.

    ``hidden``: width of a ReLU hidden layer (``None``: a linear projection). The input is standardised by a
    batch-normalisation layer first (pooled CNN activations have widely different scales per channel).
    """
    import keras
    from keras import layers

    if dim < 1 or (hidden is not None and hidden < 1):
        raise FinetuneError(f"head sizes must be >= 1, got dim={dim}, hidden={hidden}")
    keras.utils.set_random_seed(seed + 2)
    inputs = keras.Input((input_dim,), name=f"{HEAD_PREFIX}input")
    x = layers.BatchNormalization(name=f"{HEAD_PREFIX}input_norm")(inputs)
    if hidden is not None:
        x = layers.Dense(hidden, activation="relu", name=f"{HEAD_PREFIX}hidden")(x)
    x = layers.Dense(dim, name=f"{HEAD_PREFIX}projection")(x)
    out = layers.UnitNormalization(name=f"{HEAD_PREFIX}l2")(x)
    return keras.Model(inputs, out, name=name)


@dataclass(frozen=True)
class LossSettings:
    """The loss and its options. ``temperature``: SupCon's; ``alpha`` / ``margin``: proxy-anchor's scale and margin."""

    loss: str = "supcon"
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = DEFAULT_ALPHA
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise FinetuneError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.temperature > 0 or not self.alpha > 0 or self.margin < 0:
            raise FinetuneError(
                f"need temperature > 0, alpha > 0, margin >= 0; got {self.temperature}, {self.alpha}, {self.margin}"
            )


def loss_parameters(settings: LossSettings, dim: int, n_classes: int, seed: int = 0) -> Any | None:
    """The trainable parameters of the loss: proxy-anchor's (C, dim) proxies or cross-entropy's classifier, as a
    Keras ``Dense`` layer (its kernel is (dim, C)); ``None`` for SupCon, which has none."""
    import keras

    if settings.loss == "supcon":
        return None
    keras.utils.set_random_seed(seed + 3)
    if settings.loss == "proxy_anchor":
        # the paper initialises proxies with He normal; they are normalised inside the loss
        layer = keras.layers.Dense(n_classes, use_bias=False, kernel_initializer="he_normal", name="proxies")
    else:
        layer = keras.layers.Dense(n_classes, name="classifier")
    layer.build((None, dim))
    return layer


def batch_loss(settings: LossSettings, embeddings: Any, labels: Any, params: Any | None) -> Any:
    """The scalar loss of one batch: (B, dim) ``embeddings``, (B,) int ``labels``."""
    import tensorflow as tf

    if settings.loss == "supcon":
        return supcon_loss(embeddings, labels, settings.temperature)
    if settings.loss == "proxy_anchor":
        return proxy_anchor_loss(embeddings, labels, tf.transpose(params.kernel), settings.alpha, settings.margin)
    return softmax_ce_loss(params(embeddings), labels)


@dataclass(frozen=True)
class FitSettings:
    """How :func:`fit_embedding` trains: ``epochs`` of about one pass each in batches of ``classes_per_batch`` ×
    ``per_class`` rows, Adam at ``lr`` (cosine-decayed to 0 over the run, the proxies at ``proxy_lr_scale`` × it)
    with ``weight_decay``, the backbone's layers (unfrozen runs) at ``backbone_lr_scale`` × it: they start from
    trained weights; ``max_minutes`` stops early (between epochs)."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    classes_per_batch: int = 32
    per_class: int = 16
    proxy_lr_scale: float = 100.0
    backbone_lr_scale: float = 0.1
    max_minutes: float | None = None
    seed: int = 0


@dataclass
class FitOutcome:
    """``history``: one ``{"epoch", "loss", "seconds"}`` per epoch; ``seconds``: wall time of training in all;
    ``stopped``: ``"epochs"`` or ``"time_budget"``."""

    history: list[dict[str, float]]
    seconds: float
    stopped: str


def _optimizer(lr: float, weight_decay: float, total_steps: int) -> Any:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)


def fit_embedding(
    model: Any,
    load_batch: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    loss: LossSettings,
    fit: FitSettings,
    progress: bool = True,
    head: Any | None = None,
) -> FitOutcome:
    """Train ``model`` (inputs → (N, dim) unit embeddings) with ``loss`` on class-balanced batches.

    ``load_batch(rows)``: the model's input for those training rows (e.g. (B, 1280) pooled features or
    (B, 7, 7, 192) boundary activations), float32. ``labels``: (n,) int class index per training row. The model is
    trained in place; the loss's parameters are discarded at the end. ``head``: the head inside ``model`` when
    ``model`` also holds backbone layers; those train at ``fit.backbone_lr_scale`` × the learning rate.
    """
    import tensorflow as tf

    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    if n_classes < 2:
        raise FinetuneError(f"need at least 2 classes to train a retrieval head, got {n_classes}")
    dim = int(model.output.shape[-1])
    params = loss_parameters(loss, dim, n_classes, seed=fit.seed)
    epoch_plan = [
        class_balanced_batches(labels, fit.classes_per_batch, fit.per_class, epoch, fit.seed)
        for epoch in range(fit.epochs)
    ]
    total = sum(len(b) for b in epoch_plan)
    head_variables = (head or model).trainable_variables
    head_ids = {id(v) for v in head_variables}
    backbone_variables = [v for v in model.trainable_variables if id(v) not in head_ids]
    optimizers = [(_optimizer(fit.lr, fit.weight_decay, total), head_variables)]
    if backbone_variables:
        optimizers.append((_optimizer(fit.lr * fit.backbone_lr_scale, fit.weight_decay, total), backbone_variables))
    if params is not None:
        scale = fit.proxy_lr_scale if loss.loss == "proxy_anchor" else 1.0
        optimizers.append((_optimizer(fit.lr * scale, 0.0, total), params.trainable_variables))
    variables = [v for _, group in optimizers for v in group]

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            value = batch_loss(loss, model(x, training=True), y, params)
        grads = tape.gradient(value, variables)
        start = 0
        for optimizer, group in optimizers:
            optimizer.apply_gradients(zip(grads[start : start + len(group)], group, strict=True))
            start += len(group)
        return value

    history: list[dict[str, float]] = []
    begin = time.perf_counter()
    stopped = "epochs"
    bar = tqdm(total=fit.epochs, desc=f"training ({loss.loss})", unit="epoch", disable=not progress)
    for epoch, batches in enumerate(epoch_plan):
        t0 = time.perf_counter()
        losses = [float(step(load_batch(rows), labels[rows])) for rows in batches]
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": seconds})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        elapsed = time.perf_counter() - begin
        if fit.max_minutes is not None and elapsed + seconds > 60.0 * fit.max_minutes and epoch + 1 < fit.epochs:
            stopped = "time_budget"
            break
    bar.close()
    return FitOutcome(history=history, seconds=time.perf_counter() - begin, stopped=stopped)


def embed(model: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """``model``'s (n, dim) float32 output on (n, ...) ``x`` in inference mode, ``batch_size`` rows at a time."""
    chunks = [
        np.asarray(model(np.asarray(x[i : i + batch_size], np.float32), training=False))
        for i in range(0, len(x), batch_size)
    ]
    return (
        np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, int(model.output.shape[-1])), np.float32)
    )
