"""The whole fine-tuning run: :func:`finetune` reads a collection, builds Model 1 or 2, trains and saves its outputs.

It wires the other modules together: :mod:`~cbir.features.finetune.data` (caches, augmentation),
:mod:`~cbir.features.finetune.models`
(classifier, split, feature models), :mod:`~cbir.features.finetune.training` (the loop),
:mod:`~cbir.features.finetune.metrics` (the
report) and :mod:`~cbir.features.finetune.runs` (where the outputs go).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbir.core import config
from cbir.core.storage import atomic_write_bytes
from cbir.data.collection import Catalog, scan_collection
from cbir.data.images import prefetched
from cbir.features.backbones import WeightsArg, get_backbone, resolve_weights, weights_identity
from cbir.features.finetune.data import Augmentation, ImageCache, activation_cache, augment_batch, image_cache
from cbir.features.finetune.errors import FinetuneError
from cbir.features.finetune.metrics import classification_report, cross_entropy
from cbir.features.finetune.models import (
    FIRST_TRAINABLE,
    PAPER_LR,
    build_backbone,
    build_classifier,
    compile_model,
    feature_models,
    save_model_atomic,
    set_trainable,
    split_model,
)
from cbir.features.finetune.runs import (
    CLASSIFIER_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    REPORT_FILE,
    finetune_dir,
    shared_cache_dir,
)
from cbir.features.finetune.training import LoopSettings, check_resumable, train_loop


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


def _batched_predict(
    model: Any, load: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """``model``'s (len(rows), n_out) output on ``load(chunk)`` for each ``batch_size`` chunk of ``rows``."""
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    out = [np.asarray(model.predict_on_batch(x)) for x in prefetched(load, chunks)]
    return np.concatenate(out) if out else np.zeros((0, int(model.output.shape[-1])), dtype=np.float32)


@dataclass
class _LabelledSplit:
    """Training and validation rows of an :class:`ImageCache`. ``classes``: the sorted labels of the decodable
    training rows; ``labels``: (n,) int64 class index of every cache row, -1 for a label absent from training;
    ``train_rows`` / ``val_rows``: int64 row indices (validation keeps only the training classes)."""

    classes: list[str]
    labels: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray


def _split_rows(cache: ImageCache, root: Path) -> _LabelledSplit:
    """Training = role ``index``, validation = role ``query`` (the paper's "test" numbers), decodable rows only."""
    rows = cache.rows
    train_mask = (rows["role"] == "index").to_numpy() & cache.ok
    classes = sorted(rows.loc[train_mask, "label"].unique().tolist())
    class_index = {c: i for i, c in enumerate(classes)}
    val_mask = (rows["role"] == "query").to_numpy() & cache.ok & rows["label"].isin(classes).to_numpy()
    train_rows, val_rows = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise FinetuneError(
            f"{root}: need labelled training (index) and validation (query) images, got "
            f"{len(train_rows)} and {len(val_rows)}"
        )
    labels = np.array([class_index.get(label, -1) for label in rows["label"]], dtype=np.int64)
    return _LabelledSplit(classes, labels, train_rows, val_rows)


def _run_identity(
    cfg: FinetuneConfig, weights_id: str, size: tuple[int, int], classes: list[str], data_key: str
) -> dict[str, Any]:
    """Everything that defines a run's training (see :func:`check_resumable`): a checkpoint of another identity
    cannot be continued. Budgets (max epochs / minutes), patience and workers are not part of it."""
    return {
        "backbone": cfg.backbone,
        "model": cfg.model,
        "weights_id": weights_id,
        "input_size": list(size),
        "classes": classes,
        "data": data_key,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "freeze_bn": cfg.freeze_bn,
        "steps_per_epoch": cfg.steps_per_epoch,
        "first_trainable": FIRST_TRAINABLE[cfg.backbone] if cfg.model == 1 else None,
        "activation_dtype": cfg.activation_dtype if cfg.model == 1 else None,
        "augmentation": asdict(cfg.augmentation) if cfg.model == 2 else None,
    }


def finetune(
    collection: str | os.PathLike[str] | Catalog | None = None,
    cfg: FinetuneConfig | None = None,
    restart: bool = False,
    verbose: bool = True,
    progress: bool | None = None,
) -> FinetuneResult:
    """Fine-tune ``cfg.backbone`` as Model ``cfg.model`` on ``collection`` (a folder or a scanned catalog; default
    :func:`cbir.core.config.default_collection`), save the classifier, feature models, history and report.

    Reruns resume from the checkpoint in :func:`finetune_dir` (``restart=True`` discards it). ``verbose`` prints
    a line per epoch and notes; ``progress`` (default: ``verbose``) shows the progress bars.
    """
    cfg = cfg or FinetuneConfig()
    if cfg.model not in (1, 2):
        raise FinetuneError(f"model must be 1 or 2, got {cfg.model}")
    if cfg.backbone not in FIRST_TRAINABLE:
        raise FinetuneError(f"no fine-tuning split defined for backbone {cfg.backbone!r}")
    spec = get_backbone(cfg.backbone)
    catalog = (
        collection
        if isinstance(collection, Catalog)
        else scan_collection(collection if collection is not None else config.default_collection())
    )
    run_dir = finetune_dir(catalog.root, cfg.backbone, cfg.model)
    cache_folder = shared_cache_dir(run_dir)
    size = tuple(cfg.input_size) if cfg.input_size is not None else tuple(spec.input_size)

    progress = verbose if progress is None else progress
    cache = image_cache(catalog, cache_folder, size=size, workers=cfg.workers, progress=progress)
    split = _split_rows(cache, catalog.root)
    classes, labels, train_rows, val_rows = split.classes, split.labels, split.train_rows, split.val_rows
    if verbose and cache.rejected:
        tqdm.write(f"{len(cache.rejected)} labelled files could not be decoded and are skipped")

    expected_weights_id = weights_identity(resolve_weights(spec, cfg.weights), cfg.seed)
    identity = _run_identity(cfg, expected_weights_id, size, classes, cache.key)
    if not restart:
        check_resumable(run_dir, identity)  # before the (slow) model build

    backbone, weights_id = build_backbone(cfg.backbone, cfg.weights, input_size=cfg.input_size, seed=cfg.seed)
    classifier = build_classifier(backbone, len(classes), seed=cfg.seed)
    trained, load_x, train_batch = _training_data(cfg, classifier, cache, weights_id, cache_folder, split, progress)
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
    return _save_run(cfg, run_dir, classifier, backbone, weights_id, identity, split, outcome, proba, labels[val_rows])


def _training_data(
    cfg: FinetuneConfig,
    classifier: Any,
    cache: Any,
    weights_id: str,
    cache_folder: Path,
    split: Any,
    progress: bool,
) -> tuple[Any, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]]:
    """What Model ``cfg.model`` trains and on what: ``(trained model, load_x(rows), train_batch(idx, epoch))``.
    Model 1 trains the classifier's tail on cached activations of the frozen head; Model 2 the whole classifier on
    augmented images."""
    spec = get_backbone(cfg.backbone)
    labels, train_rows = split.labels, split.train_rows
    if cfg.model == 1:
        frozen, tail = split_model(classifier, cfg.backbone)
        set_trainable(classifier, tail, freeze_bn=cfg.freeze_bn)
        acts = activation_cache(
            cache,
            frozen,
            cfg.backbone,
            weights_id,
            cache_folder,
            batch_size=cfg.batch_size,
            dtype=cfg.activation_dtype,
            progress=progress,
        )

        def load_acts(idx: np.ndarray) -> np.ndarray:
            return np.asarray(acts[idx], dtype=np.float32)

        def act_batch(idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
            rows_ = train_rows[idx]
            return load_acts(rows_), labels[rows_]

        return tail, load_acts, act_batch
    set_trainable(classifier, None, freeze_bn=cfg.freeze_bn)

    def load_images(idx: np.ndarray) -> np.ndarray:
        return spec.preprocess(np.asarray(cache.images[idx], dtype=np.float32))

    def image_batch(idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rows_ = train_rows[idx]
        # seeded by (seed, epoch, first row): the same batch gets the same augmentation after a resume
        rng = np.random.default_rng([cfg.seed, epoch, int(rows_[0])])
        x = spec.preprocess(augment_batch(cache.images[rows_], rng, cfg.augmentation))
        return x, labels[rows_]

    return classifier, load_images, image_batch


def _save_run(
    cfg: FinetuneConfig,
    run_dir: Path,
    classifier: Any,
    backbone: Any,
    weights_id: str,
    identity: dict[str, Any],
    split: Any,
    outcome: Any,
    proba: np.ndarray,
    y_val: np.ndarray,
) -> FinetuneResult:
    """Save the classifier, its feature models, the history, the report and the metrics (atomically)."""
    report = classification_report(y_val, proba.argmax(axis=1), split.classes)
    test_loss, test_acc = cross_entropy(proba, y_val), float((proba.argmax(axis=1) == y_val).mean())
    classifier_path = save_model_atomic(classifier, run_dir / CLASSIFIER_FILE)
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
        "classes": split.classes,
        "n_train": len(split.train_rows),
        "n_val": len(split.val_rows),
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
    atomic_write_bytes(run_dir / HISTORY_FILE, history.to_json(orient="records", indent=1).encode())
    atomic_write_bytes(run_dir / REPORT_FILE, report.to_csv().encode())
    atomic_write_bytes(run_dir / METRICS_FILE, json.dumps(metrics, indent=1).encode())
    return FinetuneResult(
        run_dir=run_dir,
        history=history,
        report=report,
        test_loss=test_loss,
        test_accuracy=test_acc,
        classes=split.classes,
        best_epoch=outcome.best_epoch,
        epochs_done=outcome.epochs_done,
        stopped=outcome.stopped,
        seconds_per_epoch=outcome.seconds_per_epoch,
        classifier_path=classifier_path,
        feature_models=saved,
        metrics=metrics,
    )
