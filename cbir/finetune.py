"""Fine-tuning the backbones on a collection's labels (the paper's Section 5), made feasible on a small CPU.

Two models per backbone, both with the paper's head — three pairs of ``Dropout(0.5)`` + ``Dense(256/128/64,
relu)`` then ``Dense(n_classes, softmax)`` — on the pooled backbone output:

* **Model 1**: the backbone frozen up to :data:`FIRST_TRAINABLE` (the paper unfreezes from ``conv5_block1_1_conv``),
  trained with Adam at the paper's learning rate ``1e-6`` by default. The frozen part never changes, so its output
  (the *boundary* tensor: the input of the first trainable layer) is computed once per image and cached on disk as
  a float16 memmap; training then runs only the trainable tail (conv5 stage + head) on the cache. For ResNet50 this
  cuts a training step from ~12 GFLOP/image (forward + backward of the whole net) to the conv5 stage alone.
* **Model 2**: the same head on the whole backbone, everything trainable, with data augmentation (random horizontal
  flip, translation up to 10 % with edge fill, brightness ×[0.8, 1.2]). Decoded, resized images are cached once as a
  uint8 memmap and augmented on the fly, so an epoch never decodes a file again.

Both train with early stopping on the validation loss (patience 10, the best weights restored) under an optional
budget (``max_epochs``, ``max_minutes``) and checkpoint after every epoch (model + optimizer state, history and
early-stopping state, atomically), so a rerun continues where the last one stopped.

Data: training = catalog rows with role ``index`` and a label; validation (the paper's "test" numbers) = role
``query``; distractors are unused. Outputs go to ``<artifacts>/finetune/<collection-id>/<backbone>-model<N>/``:
``history.json``, ``report.csv`` (classification report), ``metrics.json``, ``classifier.keras`` and the feature
models ``model<N>-pool.keras`` (pooled backbone output, 2048/1280-d) and ``model<N>-dense256.keras`` (the 256-d
dense layer). A feature model takes the same input as the backbone (a 224×224 RGB batch already normalised by the
backbone's own ``preprocess_input``), so ``FeatureExtractor(backbone, weights="<path>.keras")`` and
``python -m cbir extract --backbone B --weights <path>.keras`` use it like any other weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbir import config
from cbir.backbones import WeightsArg, build_model, get_backbone, resolve_weights, weights_identity
from cbir.collection import Catalog, collection_id, scan_collection
from cbir.errors import CbirError
from cbir.images import ImageDecodeError, load_image, resize_for_model
from cbir.storage import atomic_output, atomic_write_bytes

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
STATE_VERSION = 1
_CE_EPSILON = 1e-7  # Keras clips probabilities to [eps, 1 - eps] in its cross-entropy; we match it


class FinetuneError(CbirError, RuntimeError):
    """Fine-tuning cannot proceed (no labelled data, a checkpoint from another configuration, no epoch fits)."""


# ---------------------------------------------------------------------------------------------------------------
# Metrics, tables and figures
# ---------------------------------------------------------------------------------------------------------------


def classification_report(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-class precision, recall, f1-score and support, plus accuracy, macro and weighted averages.

    ``y_true``, ``y_pred``: 1-D integer class indices in ``[0, n_classes)``. ``class_names``: one name per index
    (default ``"0"``, ``"1"``, ...). Returns a DataFrame indexed by the class names then ``accuracy``, ``macro avg``,
    ``weighted avg``, columns ``precision``, ``recall``, ``f1-score`` (float) and ``support`` (int) — the paper's
    table. Undefined ratios (no prediction / no sample of a class) count as 0; the ``accuracy`` row holds the
    accuracy in ``f1-score`` (NaN precision/recall) and the total support, as scikit-learn prints it.
    """
    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels, y_pred {pred.size}")
    n_classes = (
        len(class_names) if class_names is not None else int(max(true.max(initial=-1), pred.max(initial=-1)) + 1)
    )
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n_classes)]
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    total = int(support.sum())
    accuracy = float(tp.sum() / total) if total else 0.0
    weights = support / total if total else np.zeros(n_classes)
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1-score": f1, "support": support},
        index=pd.Index(names, name="class"),
    )
    summary = pd.DataFrame(
        {
            "precision": [np.nan, precision.mean(), float(precision @ weights)],
            "recall": [np.nan, recall.mean(), float(recall @ weights)],
            "f1-score": [accuracy, f1.mean(), float(f1 @ weights)],
            "support": [total, total, total],
        },
        index=pd.Index(["accuracy", "macro avg", "weighted avg"], name="class"),
    )
    report = pd.concat([table, summary])
    report["support"] = report["support"].astype(np.int64)
    return report


def cross_entropy(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of ``proba`` (n, n_classes) float against ``labels`` (n,) int."""
    if len(labels) == 0:
        return float("nan")
    picked = np.asarray(proba, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(picked, _CE_EPSILON, 1.0 - _CE_EPSILON)).mean())


def training_figure(history: pd.DataFrame, title: str = "") -> Any:
    """Plotly figure of the training curves: accuracy (left) and loss (right), training and validation.

    ``history``: one row per epoch with columns ``epoch``, ``accuracy``, ``val_accuracy``, ``loss``, ``val_loss``
    (as returned by :func:`load_history` / :attr:`FinetuneResult.history`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Training and validation accuracy", "Training and validation loss")
    )
    styles = {"": dict(mode="lines+markers", marker=dict(size=5)), "val_": dict(mode="lines")}
    colors = {"": "#1f77b4", "val_": "#d62728"}
    for col, metric in ((1, "accuracy"), (2, "loss")):
        for prefix, label in (("", "Training"), ("val_", "Validation")):
            fig.add_trace(
                go.Scatter(
                    x=history["epoch"],
                    y=history[prefix + metric],
                    name=f"{label} {metric}",
                    line=dict(color=colors[prefix], dash="solid" if prefix else "dot"),
                    legendgroup=prefix or "train",
                    **styles[prefix],
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=2)
    fig.update_layout(title=title or None, height=380, margin=dict(l=40, r=20, t=60, b=40))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


def _sized_backbone(name: str, weights: str | None, shape: tuple[int, int, int]) -> Any:
    """Backbone ``name`` at a non-default input ``shape`` (tests use small inputs to stay fast on a CPU)."""
    if name == "resnet50":
        from keras.applications import ResNet50

        return ResNet50(include_top=False, weights=weights, pooling="avg", input_shape=shape)
    if name == "resnet50v2":
        from keras.applications import ResNet50V2

        return ResNet50V2(include_top=False, weights=weights, pooling="avg", input_shape=shape)
    if name == "efficientnet_lite0":
        from cbir.efficientnet_lite import build_efficientnet_lite0

        return build_efficientnet_lite0(include_top=False, pooling="avg", weights=weights, input_shape=shape)
    raise ValueError(f"no sized builder for backbone {name!r}")


def build_backbone(
    name: str, weights: WeightsArg = "imagenet", input_size: tuple[int, int] | None = None, seed: int = 0
) -> tuple[Any, str]:
    """The backbone ``name`` (pooled output) and its weights id, optionally at another ``input_size`` (W, H).

    At the backbone's own size this is :func:`cbir.backbones.build_model` (local-first ImageNet weights, weight
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


# ---------------------------------------------------------------------------------------------------------------
# Caches: decoded images (uint8) and frozen-part activations (float16), memory-mapped .npy files
# ---------------------------------------------------------------------------------------------------------------


def write_memmap_atomic(
    path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, fill: Callable[[np.ndarray], None]
) -> Path:
    """Create ``path`` as an ``.npy`` of ``shape``/``dtype``: ``fill(array)`` writes a temp memmap, then rename.

    A reader never sees a half-filled file: the final name appears only once ``fill`` returned.
    """
    with atomic_output(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        fill(array)
        array.flush()
        del array
    return Path(path)


def _remove_stale(folder: Path, prefix: str, keep: Path) -> None:
    """Delete older caches of the same kind (other data hash) so changed collections do not pile up files."""
    for old in folder.glob(f"{prefix}*"):
        if old.name != keep.name and old.with_suffix("").name != keep.with_suffix("").name:
            old.unlink(missing_ok=True)


@dataclass
class ImageCache:
    """Decoded, resized images of the labelled rows, aligned with ``rows`` (memory-mapped, read-only).

    ``images``: (n, H, W, 3) uint8 memmap (rejected files are all-zero rows). ``rows``: the catalog rows (path,
    label, role, ...). ``ok``: (n,) bool, False where the file could not be decoded (reason in ``rejected``).
    ``key``: hash of the rows' (path, size, mtime) and the size — part of every derived cache's name.
    """

    images: np.ndarray
    rows: pd.DataFrame
    ok: np.ndarray
    rejected: dict[str, str]
    key: str
    path: Path


def labelled_rows(catalog: Catalog) -> pd.DataFrame:
    """Rows with a label and role ``index`` (training) or ``query`` (validation), in catalog order."""
    images = catalog.images
    keep = images["label"].notna() & images["role"].isin(["index", "query"])
    return images[keep].reset_index(drop=True)


def _decode(path: str, size: tuple[int, int]) -> np.ndarray | str:
    try:
        # resize_for_model gives float32 holding exact 0..255 integers: uint8 stores them losslessly
        return resize_for_model(load_image(path), size).astype(np.uint8)
    except ImageDecodeError as exc:
        return str(exc)


def image_cache(
    catalog: Catalog,
    cache_dir: str | os.PathLike[str],
    size: tuple[int, int] = (224, 224),
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """The labelled images of ``catalog`` decoded and resized to ``size`` (W, H), cached as a uint8 memmap.

    Built once per (collection content, size) — ``images-<W>x<H>-<hash>.npy`` plus a ``.json`` sidecar listing
    rejected files — and reused while no labelled file is added, removed or modified.
    """
    folder = Path(cache_dir)
    rows = labelled_rows(catalog)
    if rows.empty:
        raise FinetuneError(f"{catalog.root}: no labelled images (training_set/validation_set or class folders)")
    width, height = size
    identity = json.dumps(
        [[p, int(s), int(m)] for p, s, m in zip(rows["path"], rows["size"], rows["mtime_ns"], strict=True)]
        + [[width, height]]
    )
    key = hashlib.sha1(identity.encode()).hexdigest()[:12]
    prefix = f"images-{width}x{height}-"
    npy, sidecar = folder / f"{prefix}{key}.npy", folder / f"{prefix}{key}.json"
    if not (npy.is_file() and sidecar.is_file()):
        paths = rows["path"].tolist()
        rejected: dict[str, str] = {}

        def fill(array: np.ndarray) -> None:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                decoded = pool.map(_decode, paths, [size] * len(paths))
                for i, item in enumerate(
                    tqdm(decoded, total=len(paths), desc="decoding images", unit="img", disable=not progress)
                ):
                    if isinstance(item, str):
                        rejected[paths[i]] = item
                    else:
                        array[i] = item
            # the sidecar goes first: the .npy's final name is the commit point of the pair
            atomic_write_bytes(sidecar, json.dumps({"rejected": rejected, "n": len(paths)}).encode())

        write_memmap_atomic(npy, (len(rows), height, width, 3), np.uint8, fill)
        _remove_stale(folder, prefix, npy)
    meta = json.loads(sidecar.read_text())
    images = np.load(npy, mmap_mode="r")
    if images.shape[0] != len(rows) or meta.get("n") != len(rows):
        raise FinetuneError(f"image cache {npy} does not match the collection; delete it and rerun")
    rejected = dict(meta["rejected"])
    ok = ~rows["path"].isin(rejected.keys()).to_numpy()
    return ImageCache(images=images, rows=rows, ok=ok, rejected=rejected, key=key, path=npy)


def activation_cache(
    images: ImageCache,
    frozen: Any,
    backbone: str,
    weights_id: str,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 32,
    dtype: str = "float16",
    progress: bool = True,
) -> np.ndarray:
    """``frozen``'s output for every cached image: an (n, h, w, c) memmap aligned with ``images.rows``.

    Stored as ``dtype`` (float16 by default: half the disk and page cache; activations are clipped to its range).
    Keyed by backbone, weights id, boundary layer, dtype and the image cache key.
    """
    spec = get_backbone(backbone)
    shape = tuple(int(d) for d in frozen.output.shape[1:])
    height, width = images.images.shape[1:3]
    # named after the first trainable layer: the cache holds that layer's input
    prefix = f"acts-{backbone}-{weights_id}-{width}x{height}-{FIRST_TRAINABLE[backbone]}-{dtype}-"
    path = Path(cache_dir) / f"{prefix}{images.key}.npy"
    if not path.is_file():
        n = len(images.rows)
        limit = float(np.finfo(dtype).max) if np.dtype(dtype).kind == "f" else None

        def fill(array: np.ndarray) -> None:
            starts = range(0, n, batch_size)
            load = lambda s: spec.preprocess(np.asarray(images.images[s : s + batch_size], dtype=np.float32))  # noqa: E731
            for start, batch in tqdm(
                zip(starts, _prefetched(load, starts), strict=True),
                total=len(starts),
                desc=f"{backbone} frozen part",
                unit="batch",
                disable=not progress,
            ):
                out = np.asarray(frozen.predict_on_batch(batch), dtype=np.float32)
                if limit is not None:
                    out = np.clip(out, -limit, limit)
                array[start : start + len(out)] = out.astype(dtype)

        write_memmap_atomic(path, (n, *shape), dtype, fill)
        _remove_stale(Path(cache_dir), prefix, path)
    return np.load(path, mmap_mode="r")


def _prefetched(fn: Callable[[Any], Any], items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """``fn(item)`` for each item, computed ``depth`` items ahead in a thread so I/O overlaps the model."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(fn, item) for item in items[:depth]]
        for i in range(len(items)):
            result = pending.pop(0).result()
            if i + depth < len(items):
                pending.append(pool.submit(fn, items[i + depth]))
            yield result


# ---------------------------------------------------------------------------------------------------------------
# Augmentation and batching
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Model 2's on-the-fly augmentation: horizontal flip, translation (fraction of the side), brightness."""

    flip: bool = True
    max_shift: float = 0.1
    brightness: float = 0.2


def augment_batch(images: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()) -> np.ndarray:
    """Randomly flipped, translated and brightened copies of ``images`` (B, H, W, 3) uint8 → float32 0..255.

    Translation pads with the edge pixels (clip-art backgrounds are flat, so this adds no artificial border).
    """
    batch = np.asarray(images)
    n, height, width = batch.shape[:3]
    out = np.empty(batch.shape, dtype=np.float32)
    sy, sx = round(aug.max_shift * height), round(aug.max_shift * width)
    for i in range(n):
        image = batch[i]
        if aug.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if sy or sx:
            padded = np.pad(image, ((sy, sy), (sx, sx), (0, 0)), mode="edge")
            dy, dx = rng.integers(0, 2 * sy + 1), rng.integers(0, 2 * sx + 1)
            image = padded[dy : dy + height, dx : dx + width]
        out[i] = image
        if aug.brightness:
            out[i] *= rng.uniform(1.0 - aug.brightness, 1.0 + aug.brightness)
    return np.clip(out, 0.0, 255.0, out=out)


def epoch_batches(
    n: int, batch_size: int, epoch: int, seed: int = 0, steps_per_epoch: int | None = None
) -> list[np.ndarray]:
    """Row indices of each training batch of ``epoch`` (0-based): a pure function of its arguments, so a resumed
    run draws exactly the batches an uninterrupted one would.

    Without ``steps_per_epoch``: one shuffled pass over ``n`` rows (the last batch may be smaller). With it: epoch
    ``e`` takes ``steps_per_epoch`` full batches from an endless stream of shuffled passes, so "epochs" can be
    shorter than the data (checkpoints and time-budget checks come more often on a slow model).
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"need n > 0 and batch_size > 0, got {n}, {batch_size}")
    if steps_per_epoch is None:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        return [np.sort(order[i : i + batch_size]) for i in range(0, n, batch_size)]
    start = epoch * steps_per_epoch * batch_size
    positions = np.arange(start, start + steps_per_epoch * batch_size)
    passes = {p: np.random.default_rng([seed, p]).permutation(n) for p in np.unique(positions // n)}
    rows = np.array([passes[p][k] for p, k in zip(positions // n, positions % n, strict=True)])
    return [np.sort(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


# ---------------------------------------------------------------------------------------------------------------
# Training loop with early stopping, time budget and resumable checkpoints
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LoopSettings:
    """Budget and schedule of :func:`train_loop`. ``max_minutes`` counts training time of this call only."""

    max_epochs: int = 100
    max_minutes: float | None = None
    patience: int = 10
    batch_size: int = 32
    steps_per_epoch: int | None = None
    seed: int = 0


@dataclass
class LoopOutcome:
    """What :func:`train_loop` did. ``history``: one row per epoch (epoch, loss, accuracy, val_loss,
    val_accuracy, seconds); ``stopped``: ``early_stopping``, ``max_epochs`` or ``time_budget``."""

    history: pd.DataFrame
    best_epoch: int
    epochs_done: int
    epochs_now: int
    stopped: str
    seconds_per_epoch: float


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if state.get("version") == STATE_VERSION else None


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_resumable(run_dir: str | os.PathLike[str], identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint state in ``run_dir`` (``None`` when there is none); :class:`FinetuneError` when it was made
    with another ``identity`` (data, weights, lr, ...), which a silent restart would throw away."""
    state = _read_state(Path(run_dir))
    if state is not None and state["identity"] != identity:
        raise FinetuneError(
            f"{run_dir} holds a checkpoint of another configuration "
            f"({'; '.join(_diff(state['identity'], identity))}); rerun with --restart to discard it"
        )
    return state


def train_loop(
    model: Any,
    train_batch: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    n_train: int,
    predict_val: Callable[[], np.ndarray],
    y_val: np.ndarray,
    run_dir: str | os.PathLike[str],
    identity: dict[str, Any],
    settings: LoopSettings,
    restart: bool = False,
    verbose: bool = True,
    progress: bool | None = None,
) -> LoopOutcome:
    """Train compiled ``model`` epoch by epoch; checkpoint after each; early-stop on validation loss.

    ``train_batch(rows, epoch)`` → ``(x, y)``: the inputs and int labels of training rows ``rows`` (augmented with
    randomness drawn from ``epoch``). ``predict_val()`` → (n_val, n_classes) probabilities of the validation set
    with the current weights (inference mode). ``identity``: JSON-able description of everything that defines the
    run (data, model, lr, ...): a checkpoint made with another identity is refused unless ``restart``.

    After each epoch, ``run_dir`` gets (atomically, in this order) ``checkpoint-e<k>.keras`` (model + optimizer),
    ``best-e<k>.weights.h5`` when the validation loss improved, then ``state.json`` — the commit point naming both.
    A rerun loads them and continues; an early-stopped run does not train again. On return the model holds the
    best epoch's weights. ``verbose`` prints a line per epoch; ``progress`` (default: ``verbose``) shows batch bars.
    """
    progress = verbose if progress is None else progress
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if restart:
        for old in [*run_dir.glob("checkpoint-e*.keras"), *run_dir.glob("best-e*.weights.h5")]:
            old.unlink(missing_ok=True)
        (run_dir / "state.json").unlink(missing_ok=True)
    state = check_resumable(run_dir, identity)
    if state is None:
        state = {
            "version": STATE_VERSION,
            "identity": identity,
            "epoch": 0,
            "history": [],
            "best_epoch": 0,
            "best_val_loss": None,
            "wait": 0,
            "checkpoint": None,
            "best_weights": None,
            "stopped": None,
        }
    else:
        model.load_weights(run_dir / state["checkpoint"])  # weights and optimizer state (moments, iterations)
    y_val = np.asarray(y_val)
    start = time.perf_counter()
    budget = None if settings.max_minutes is None else settings.max_minutes * 60.0
    epoch_times = [row["seconds"] for row in state["history"][-1:]]
    stopped = state["stopped"] if state["stopped"] == "early_stopping" else None
    epochs_now = 0
    while stopped is None:
        epoch = state["epoch"]
        if epoch >= settings.max_epochs:
            stopped = "max_epochs"
            break
        elapsed = time.perf_counter() - start
        if budget is not None and epoch_times and elapsed + epoch_times[-1] > budget:
            stopped = "time_budget"  # the next epoch would not fit: stop now rather than discard it half-done
            break
        t0 = time.perf_counter()
        batches = epoch_batches(n_train, settings.batch_size, epoch, settings.seed, settings.steps_per_epoch)
        # Keras' train_on_batch resets the metrics on every call: the epoch means are accumulated here, weighted by
        # batch size, as fit() reports them (training mode, i.e. with dropout, each batch before its update)
        seen, loss_sum, correct_sum = 0, 0.0, 0.0
        bar = tqdm(
            total=len(batches),
            desc=f"epoch {epoch + 1}/{settings.max_epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        aborted = False
        for x, y in _prefetched(lambda rows, e=epoch: train_batch(rows, e), batches):
            logs = model.train_on_batch(x, y, return_dict=True)
            seen += len(y)
            loss_sum += float(logs["loss"]) * len(y)
            correct_sum += float(logs["accuracy"]) * len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct_sum / seen:.3f}")
            if budget is not None and time.perf_counter() - start > budget:
                aborted = True  # over budget mid-epoch: this partial epoch is discarded (the checkpoint is intact)
                break
        bar.close()
        if aborted:
            stopped = "time_budget"
            if verbose:
                tqdm.write(
                    f"time budget reached during epoch {epoch + 1}; it is discarded (an epoch takes longer "
                    f"than the budget allows: raise --max-minutes or lower --steps-per-epoch)"
                )
            break
        proba = np.asarray(predict_val(), dtype=np.float64)
        val_loss = cross_entropy(proba, y_val)
        val_acc = float((proba.argmax(axis=1) == y_val).mean()) if len(y_val) else float("nan")
        seconds = time.perf_counter() - t0
        epoch_times.append(seconds)
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "accuracy": correct_sum / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": seconds,
        }
        state["history"].append(record)
        state["epoch"] = epoch + 1
        epochs_now += 1
        old_files = [state["checkpoint"], state["best_weights"]]
        best = state["best_val_loss"]
        if best is None or val_loss < best:
            state.update(
                best_val_loss=val_loss, best_epoch=epoch + 1, wait=0, best_weights=f"best-e{epoch + 1:04d}.weights.h5"
            )
            save_model_atomic(model, run_dir / state["best_weights"], weights_only=True)
        else:
            state["wait"] += 1
        state["checkpoint"] = f"checkpoint-e{epoch + 1:04d}.keras"
        save_model_atomic(model, run_dir / state["checkpoint"])
        if state["wait"] >= settings.patience:
            state["stopped"] = stopped = "early_stopping"
        atomic_write_bytes(run_dir / "state.json", json.dumps(state, indent=1).encode())
        for old in old_files:  # only now that state.json no longer names them
            if old and old not in (state["checkpoint"], state["best_weights"]):
                (run_dir / old).unlink(missing_ok=True)
        if verbose:
            mark = " *" if state["best_epoch"] == epoch + 1 else ""
            tqdm.write(
                f"epoch {epoch + 1}: loss {record['loss']:.4f} acc {record['accuracy']:.4f} "
                f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} ({seconds:.1f} s){mark}"
            )
            if stopped == "early_stopping":
                tqdm.write(
                    f"early stopping: no improvement for {settings.patience} epochs; best epoch {state['best_epoch']}"
                )
    if state["best_weights"] is None:
        raise FinetuneError(
            "no epoch finished within the time budget; raise --max-minutes or set a smaller --steps-per-epoch"
        )
    model.load_weights(run_dir / state["best_weights"])
    history = pd.DataFrame(
        state["history"], columns=["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    )
    per_epoch = float(np.median(history["seconds"])) if len(history) else float("nan")
    return LoopOutcome(
        history=history,
        best_epoch=int(state["best_epoch"]),
        epochs_done=int(state["epoch"]),
        epochs_now=epochs_now,
        stopped=str(stopped),
        seconds_per_epoch=per_epoch,
    )


# ---------------------------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """One fine-tuning run. ``model``: 1 (frozen up to :data:`FIRST_TRAINABLE`, trained from cached activations)
    or 2 (everything trainable, augmented images). ``input_size``: (W, H), ``None`` = the backbone's own 224×224
    (smaller sizes are for tests; feature models for retrieval need the default)."""

    backbone: str = "resnet50v2"
    model: int = 1
    weights: WeightsArg = "imagenet"
    lr: float = PAPER_LR
    batch_size: int = 32
    max_epochs: int = 100
    max_minutes: float | None = None
    patience: int = 10
    steps_per_epoch: int | None = None
    freeze_bn: bool = False
    activation_dtype: str = "float16"
    augmentation: Augmentation = field(default_factory=Augmentation)
    input_size: tuple[int, int] | None = None
    seed: int = 0
    workers: int = 2
    run_eagerly: bool = False


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`. ``report``: :func:`classification_report` of the validation set with the best
    weights; ``test_loss`` / ``test_accuracy``: the paper's ``loss_test`` / ``acc_test`` (validation split).
    ``feature_models``: ``{"pool": path, "dense256": path}`` of the saved ``.keras`` feature extractors."""

    run_dir: Path
    history: pd.DataFrame
    report: pd.DataFrame
    test_loss: float
    test_accuracy: float
    classes: list[str]
    best_epoch: int
    epochs_done: int
    stopped: str
    seconds_per_epoch: float
    classifier_path: Path
    feature_models: dict[str, Path]
    metrics: dict[str, Any]


def finetune_dir(collection: str | os.PathLike[str], backbone: str, model: int) -> Path:
    """``<artifacts>/finetune/<collection-id>/<backbone>-model<N>``."""
    return config.artifacts_dir() / "finetune" / collection_id(collection) / f"{backbone}-model{model}"


def load_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-epoch history saved in ``run_dir`` (``history.json``, else the checkpoint state)."""
    run_dir = Path(run_dir)
    for name, key in (("history.json", None), ("state.json", "history")):
        path = run_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            return pd.DataFrame(data[key] if key else data)
    raise FileNotFoundError(f"no training history in {run_dir}")


@dataclass
class FinishedRun:
    """What a finished fine-tuning run left in its folder: ``metrics`` (metrics.json), the per-epoch ``history``
    and the classification ``report`` (one row per class, then accuracy / macro avg / weighted avg)."""

    run_dir: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    report: pd.DataFrame

    @property
    def label(self) -> str:
        m = self.metrics
        return f"{m['backbone']} · model {m['model']} · lr {m['lr']:g}"


def finished_runs(collection: str | os.PathLike[str] | None = None) -> list[FinishedRun]:
    """The finished fine-tuning runs of ``collection`` (default collection when ``None``), newest first."""
    root = config.artifacts_dir() / "finetune" / collection_id(collection or config.default_collection())
    runs = []
    for metrics_file in sorted(root.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        run_dir = metrics_file.parent
        report = pd.read_csv(run_dir / "report.csv", index_col=0) if (run_dir / "report.csv").is_file() else None
        runs.append(
            FinishedRun(
                run_dir,
                json.loads(metrics_file.read_text()),
                load_history(run_dir),
                report if report is not None else pd.DataFrame(),
            )
        )
    return runs


def _batched_predict(
    model: Any, load: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, batch_size: int
) -> np.ndarray:
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    out = [np.asarray(model.predict_on_batch(x)) for x in _prefetched(load, chunks)]
    return np.concatenate(out) if out else np.zeros((0, int(model.output.shape[-1])), dtype=np.float32)


def finetune(
    collection: str | os.PathLike[str] | Catalog | None = None,
    cfg: FinetuneConfig | None = None,
    restart: bool = False,
    verbose: bool = True,
    progress: bool | None = None,
) -> FinetuneResult:
    """Fine-tune ``cfg.backbone`` as Model ``cfg.model`` on ``collection`` (a folder or a scanned catalog; default
    :func:`cbir.config.default_collection`), save the classifier, feature models, history and report.

    Reruns resume from the checkpoint in :func:`finetune_dir` (``restart=True`` discards it). ``verbose`` prints
    a line per epoch and notes; ``progress`` (default: ``verbose``) shows the progress bars.
    """
    cfg = cfg or FinetuneConfig()
    if cfg.model not in (1, 2):
        raise ValueError(f"model must be 1 or 2, got {cfg.model}")
    if cfg.backbone not in FIRST_TRAINABLE:
        raise ValueError(f"no fine-tuning split defined for backbone {cfg.backbone!r}")
    spec = get_backbone(cfg.backbone)
    catalog = (
        collection
        if isinstance(collection, Catalog)
        else scan_collection(collection if collection is not None else config.default_collection())
    )
    run_dir = finetune_dir(catalog.root, cfg.backbone, cfg.model)
    cache_dir = run_dir.parent / "cache"
    size = tuple(cfg.input_size) if cfg.input_size is not None else tuple(spec.input_size)

    progress = verbose if progress is None else progress
    cache = image_cache(catalog, cache_dir, size=size, workers=cfg.workers, progress=progress)
    rows = cache.rows
    train_mask = (rows["role"] == "index").to_numpy() & cache.ok
    classes = sorted(rows.loc[train_mask, "label"].unique().tolist())
    class_index = {c: i for i, c in enumerate(classes)}
    val_mask = (rows["role"] == "query").to_numpy() & cache.ok & rows["label"].isin(classes).to_numpy()
    train_rows, val_rows = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise FinetuneError(
            f"{catalog.root}: need labelled training (index) and validation (query) images, got "
            f"{len(train_rows)} and {len(val_rows)}"
        )
    labels = np.array([class_index.get(label, -1) for label in rows["label"]], dtype=np.int64)
    if verbose and cache.rejected:
        tqdm.write(f"{len(cache.rejected)} labelled files could not be decoded and are skipped")

    identity = {
        "backbone": cfg.backbone,
        "model": cfg.model,
        "weights_id": weights_identity(resolve_weights(spec, cfg.weights), cfg.seed),
        "input_size": list(size),
        "classes": classes,
        "data": cache.key,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "freeze_bn": cfg.freeze_bn,
        "steps_per_epoch": cfg.steps_per_epoch,
        "first_trainable": FIRST_TRAINABLE[cfg.backbone] if cfg.model == 1 else None,
        "activation_dtype": cfg.activation_dtype if cfg.model == 1 else None,
        "augmentation": asdict(cfg.augmentation) if cfg.model == 2 else None,
    }
    if not restart:
        check_resumable(run_dir, identity)  # before the (slow) model build

    backbone, weights_id = build_backbone(cfg.backbone, cfg.weights, input_size=cfg.input_size, seed=cfg.seed)
    classifier = build_classifier(backbone, len(classes), seed=cfg.seed)
    if cfg.model == 1:
        frozen, tail = split_model(classifier, cfg.backbone)
        set_trainable(classifier, tail, freeze_bn=cfg.freeze_bn)
        acts = activation_cache(
            cache,
            frozen,
            cfg.backbone,
            weights_id,
            cache_dir,
            batch_size=cfg.batch_size,
            dtype=cfg.activation_dtype,
            progress=progress,
        )
        trained = tail

        def load_x(idx: np.ndarray) -> np.ndarray:
            return np.asarray(acts[idx], dtype=np.float32)

        def train_batch(idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
            rows_ = train_rows[idx]
            return load_x(rows_), labels[rows_]
    else:
        set_trainable(classifier, None, freeze_bn=cfg.freeze_bn)
        trained = classifier

        def load_x(idx: np.ndarray) -> np.ndarray:
            return spec.preprocess(np.asarray(cache.images[idx], dtype=np.float32))

        def train_batch(idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
            rows_ = train_rows[idx]
            # seeded by (seed, epoch, first row): the same batch gets the same augmentation after a resume
            rng = np.random.default_rng([cfg.seed, epoch, int(rows_[0])])
            x = spec.preprocess(augment_batch(cache.images[rows_], rng, cfg.augmentation))
            return x, labels[rows_]

    compile_model(trained, cfg.lr, run_eagerly=cfg.run_eagerly)
    identity["weights_id"] = weights_id  # the same unless "imagenet" was downloaded just now
    settings = LoopSettings(
        max_epochs=cfg.max_epochs,
        max_minutes=cfg.max_minutes,
        patience=cfg.patience,
        batch_size=cfg.batch_size,
        steps_per_epoch=cfg.steps_per_epoch,
        seed=cfg.seed,
    )
    if verbose:
        n_trainable = sum(int(np.prod(v.shape)) for v in trained.trainable_variables)
        tqdm.write(
            f"{cfg.backbone} model {cfg.model}: {len(train_rows)} training / {len(val_rows)} validation "
            f"images, {len(classes)} classes, {n_trainable:,} trainable parameters, lr {cfg.lr:g}"
        )
    outcome = train_loop(
        trained,
        train_batch,
        len(train_rows),
        lambda: _batched_predict(trained, load_x, val_rows, cfg.batch_size),
        labels[val_rows],
        run_dir,
        identity,
        settings,
        restart=restart,
        verbose=verbose,
        progress=progress,
    )

    # final evaluation with the restored best weights (Model 1 on the cached activations, as during training)
    proba = _batched_predict(trained, load_x, val_rows, cfg.batch_size)
    y_val = labels[val_rows]
    report = classification_report(y_val, proba.argmax(axis=1), classes)
    test_loss, test_acc = cross_entropy(proba, y_val), float((proba.argmax(axis=1) == y_val).mean())

    classifier_path = save_model_atomic(classifier, run_dir / "classifier.keras")
    saved = {
        name: save_model_atomic(m, run_dir / f"model{cfg.model}-{name}.keras")
        for name, m in feature_models(classifier, backbone).items()
    }
    history = outcome.history
    metrics = {
        "backbone": cfg.backbone,
        "model": cfg.model,
        "weights_id": weights_id,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "classes": classes,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "best_epoch": outcome.best_epoch,
        "epochs_done": outcome.epochs_done,
        "stopped": outcome.stopped,
        "seconds_per_epoch": outcome.seconds_per_epoch,
        "first_trainable": identity["first_trainable"],
        "feature_models": {k: str(v) for k, v in saved.items()},
        "classifier": str(classifier_path),
    }
    atomic_write_bytes(run_dir / "history.json", history.to_json(orient="records", indent=1).encode())
    atomic_write_bytes(run_dir / "report.csv", report.to_csv().encode())
    atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=1).encode())
    return FinetuneResult(
        run_dir=run_dir,
        history=history,
        report=report,
        test_loss=test_loss,
        test_accuracy=test_acc,
        classes=classes,
        best_epoch=outcome.best_epoch,
        epochs_done=outcome.epochs_done,
        stopped=outcome.stopped,
        seconds_per_epoch=outcome.seconds_per_epoch,
        classifier_path=classifier_path,
        feature_models=saved,
        metrics=metrics,
    )
