"""The training loop: epochs of ``train_on_batch`` with early stopping, a time budget and resumable checkpoints.

:class:`TrainingState` is everything a rerun needs to continue (epochs done, history, best epoch and loss, the
early-stopping counter, the checkpoint files); it is saved as ``state.json`` after every epoch, the commit point of
the checkpoint. :func:`train_loop` knows nothing of images or backbones: it gets a compiled model, a function that
makes a training batch and one that predicts the validation set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cbir.core.storage import atomic_write_bytes
from cbir.data.images import prefetched
from cbir.features.finetune.data import epoch_batches
from cbir.features.finetune.errors import FinetuneError
from cbir.features.finetune.metrics import cross_entropy
from cbir.features.finetune.models import save_model_atomic
from cbir.features.finetune.runs import STATE_FILE, best_weights_name, checkpoint_name, discard_checkpoint

STATE_VERSION = 1  # a state.json of another version is ignored (the run starts over) rather than misread
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


class EpochRecord(TypedDict):
    """One row of the training history. ``epoch`` is 1-based; ``loss`` / ``accuracy`` are the means over the
    epoch's batches in training mode (dropout on), ``val_*`` the validation set's after the epoch (inference
    mode); ``seconds``: wall time of the epoch, validation included."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class TrainingState:
    """Where a run stands after its last finished epoch; saved as ``state.json`` with the checkpoint.

    ``identity``: JSON-able description of everything that defines the run (data, model, lr, ...); a checkpoint
    of another identity is refused. ``epoch``: epochs finished (0 before the first). ``history``: one
    :class:`EpochRecord` per finished epoch. ``best_epoch`` / ``best_val_loss``: the 1-based epoch with the lowest
    validation loss and that loss (0 / ``None`` before the first). ``epochs_since_best``: the early-stopping
    patience counter. ``checkpoint``: file name, in the run folder, of the last epoch's model + optimizer state;
    ``best_weights``: of the best epoch's weights. ``stopped``: ``"early_stopping"`` once the patience ran out (a
    rerun then trains no more), else ``None`` (budgets are per call, so they are not part of the state).
    """

    identity: dict[str, Any]
    epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float | None = None
    epochs_since_best: int = 0
    checkpoint: str | None = None
    best_weights: str | None = None
    stopped: str | None = None

    def end_epoch(self, record: EpochRecord, patience: int) -> bool:
        """Book the finished epoch ``record``: history, best epoch, patience counter, checkpoint file names, and
        ``stopped`` once ``patience`` epochs passed without a lower validation loss.

        Returns whether the validation loss improved, i.e. whether :attr:`best_weights` now names a new file that
        the caller must write. Touches no file.
        """
        self.history.append(record)
        self.epoch = int(record["epoch"])
        val_loss = record["val_loss"]
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
            self.best_epoch = self.epoch
            self.epochs_since_best = 0
            self.best_weights = best_weights_name(self.epoch)
        else:
            self.epochs_since_best += 1
        self.checkpoint = checkpoint_name(self.epoch)
        if self.epochs_since_best >= patience:
            self.stopped = "early_stopping"
        return improved

    def files(self) -> set[str]:
        """The file names in the run folder that this state refers to (checkpoint and best weights)."""
        return {name for name in (self.checkpoint, self.best_weights) if name}

    def to_json(self) -> dict[str, Any]:
        """The ``state.json`` document (keys and order as in every version-1 checkpoint; the counter is ``wait``)."""
        return {
            "version": STATE_VERSION,
            "identity": self.identity,
            "epoch": self.epoch,
            "history": [dict(record) for record in self.history],
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "wait": self.epochs_since_best,
            "checkpoint": self.checkpoint,
            "best_weights": self.best_weights,
            "stopped": self.stopped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        """The state of a ``state.json`` document written by :meth:`to_json`."""
        return cls(
            identity=data["identity"],
            epoch=int(data["epoch"]),
            history=list(data["history"]),
            best_epoch=int(data["best_epoch"]),
            best_val_loss=data["best_val_loss"],
            epochs_since_best=int(data["wait"]),
            checkpoint=data["checkpoint"],
            best_weights=data["best_weights"],
            stopped=data["stopped"],
        )

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``run_dir/state.json`` atomically (after the files it names, which makes it the commit point)."""
        path = Path(run_dir) / STATE_FILE
        atomic_write_bytes(path, json.dumps(self.to_json(), indent=1).encode())
        return path

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> TrainingState | None:
        """The state saved in ``run_dir``; ``None`` when there is none or it has another :data:`STATE_VERSION`."""
        path = Path(run_dir) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls.from_json(data) if data.get("version") == STATE_VERSION else None


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


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_resumable(run_dir: str | os.PathLike[str], identity: dict[str, Any]) -> TrainingState | None:
    """The checkpoint state in ``run_dir`` (``None`` when there is none); :class:`FinetuneError` when it was made
    with another ``identity`` (data, weights, lr, ...), which a silent restart would throw away."""
    state = TrainingState.load(run_dir)
    if state is not None and state.identity != identity:
        raise FinetuneError(
            f"{run_dir} holds a checkpoint of another configuration "
            f"({'; '.join(_diff(state.identity, identity))}); rerun with --restart to discard it"
        )
    return state


def _train_epoch(
    model: Any,
    train_batch: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    batches: list[np.ndarray],
    epoch: int,
    over_budget: Callable[[], bool],
    bar_label: str,
    progress: bool,
) -> tuple[float, float] | None:
    """Train ``model`` on ``batches`` (row indices) of 0-based ``epoch``: the epoch's mean loss and accuracy, or
    ``None`` when ``over_budget()`` turned true mid-epoch (the caller then discards the partial epoch)."""
    # Keras' train_on_batch resets the metrics on every call: the epoch means are accumulated here, weighted by
    # batch size, as fit() reports them (training mode, i.e. with dropout, each batch before its update)
    seen, loss_sum, correct_sum = 0, 0.0, 0.0
    with tqdm(total=len(batches), desc=bar_label, unit="batch", disable=not progress, leave=False) as bar:
        for x, y in prefetched(lambda rows: train_batch(rows, epoch), batches):
            logs = model.train_on_batch(x, y, return_dict=True)
            seen += len(y)
            loss_sum += float(logs["loss"]) * len(y)
            correct_sum += float(logs["accuracy"]) * len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct_sum / seen:.3f}")
            if over_budget():
                return None
    return loss_sum / seen, correct_sum / seen


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

    After each epoch, ``run_dir`` gets (atomically, in this order) ``best-e<k>.weights.h5`` when the validation
    loss improved, ``checkpoint-e<k>.keras`` (model + optimizer), then ``state.json`` (:class:`TrainingState`) —
    the commit point naming both. A rerun loads them and continues; an early-stopped run does not train again. On
    return the model holds the best epoch's weights. ``verbose`` prints a line per epoch; ``progress`` (default:
    ``verbose``) shows batch bars.
    """
    progress = verbose if progress is None else progress
    run_dir = Path(run_dir)
    state = _resume(model, run_dir, identity, restart)
    y_val = np.asarray(y_val)
    start = time.perf_counter()
    budget = None if settings.max_minutes is None else settings.max_minutes * 60.0

    def over_budget(next_epoch_seconds: float = 0.0) -> bool:
        return budget is not None and time.perf_counter() - start + next_epoch_seconds > budget

    last_epoch_seconds = state.history[-1]["seconds"] if state.history else None
    stopped = state.stopped if state.stopped == "early_stopping" else None
    epochs_now = 0
    while stopped is None:
        epoch = state.epoch  # 0-based index of the epoch to train
        if epoch >= settings.max_epochs:
            stopped = "max_epochs"
            break
        if last_epoch_seconds is not None and over_budget(last_epoch_seconds):
            stopped = "time_budget"  # the next epoch would not fit: stop now rather than discard it half-done
            break
        t0 = time.perf_counter()
        batches = epoch_batches(n_train, settings.batch_size, epoch, settings.seed, settings.steps_per_epoch)
        label = f"epoch {epoch + 1}/{settings.max_epochs}"
        train_means = _train_epoch(model, train_batch, batches, epoch, over_budget, label, progress)
        if train_means is None:  # over budget mid-epoch: the partial epoch is discarded (the checkpoint is intact)
            stopped = "time_budget"
            if verbose:
                tqdm.write(
                    f"time budget reached during epoch {epoch + 1}; it is discarded (an epoch takes longer "
                    f"than the budget allows: raise --max-minutes or lower --steps-per-epoch)"
                )
            break
        proba = np.asarray(predict_val(), dtype=np.float64)
        last_epoch_seconds = time.perf_counter() - t0
        record = _epoch_record(epoch, train_means, proba, y_val, last_epoch_seconds)
        epochs_now += 1
        _commit_epoch(model, run_dir, state, record, settings.patience, verbose)
        stopped = state.stopped
    if state.best_weights is None:
        raise FinetuneError(
            "no epoch finished within the time budget; raise --max-minutes or set a smaller --steps-per-epoch"
        )
    model.load_weights(run_dir / state.best_weights)
    history = pd.DataFrame(state.history, columns=list(HISTORY_COLUMNS))
    per_epoch = float(np.median(history["seconds"])) if len(history) else float("nan")
    return LoopOutcome(history, state.best_epoch, state.epoch, epochs_now, str(stopped), per_epoch)


def _epoch_record(
    epoch: int, train_means: tuple[float, float], proba: np.ndarray, y_val: np.ndarray, seconds: float
) -> EpochRecord:
    """Epoch ``epoch`` (0-based) in the history: the training means and the validation loss and accuracy."""
    return {
        "epoch": epoch + 1,
        "loss": train_means[0],
        "accuracy": train_means[1],
        "val_loss": cross_entropy(proba, y_val),
        "val_accuracy": float((proba.argmax(axis=1) == y_val).mean()) if len(y_val) else float("nan"),
        "seconds": seconds,
    }


def _resume(model: Any, run_dir: Path, identity: dict[str, Any], restart: bool) -> TrainingState:
    """The run's state: a new one, or the checkpoint's (its weights and optimizer state loaded into ``model``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if restart:
        discard_checkpoint(run_dir)
    state = check_resumable(run_dir, identity)
    if state is None:
        return TrainingState(identity=identity)
    if state.checkpoint is None:
        raise FinetuneError(f"{run_dir / STATE_FILE} names no checkpoint; rerun with --restart to discard it")
    model.load_weights(run_dir / state.checkpoint)  # weights and optimizer state (moments, iterations)
    return state


def _commit_epoch(
    model: Any, run_dir: Path, state: TrainingState, record: EpochRecord, patience: int, verbose: bool
) -> None:
    """Record a finished epoch: the best weights when it improved, the checkpoint, then ``state.json`` (the commit
    point); files the state no longer names are removed only then."""
    old_files = state.files()
    if state.end_epoch(record, patience):
        save_model_atomic(model, run_dir / str(state.best_weights), weights_only=True)
    save_model_atomic(model, run_dir / str(state.checkpoint))
    state.save(run_dir)
    for old in old_files - state.files():  # only now that state.json no longer names them
        (run_dir / old).unlink(missing_ok=True)
    if verbose:
        epoch = record["epoch"]
        mark = " *" if state.best_epoch == epoch else ""
        tqdm.write(
            f"epoch {epoch}: loss {record['loss']:.4f} acc {record['accuracy']:.4f} val_loss "
            f"{record['val_loss']:.4f} val_acc {record['val_accuracy']:.4f} ({record['seconds']:.1f} s){mark}"
        )
        if state.stopped == "early_stopping":
            tqdm.write(f"early stopping: no improvement for {patience} epochs; best epoch {state.best_epoch}")
