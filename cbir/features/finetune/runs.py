"""Run bookkeeping: where a run lives, what its folder holds, the finished runs of a collection.

A run folder ``<artifacts>/finetune/<collection-id>/<backbone>-model<N>/`` holds, while training, the resume
checkpoint (:data:`STATE_FILE` naming ``checkpoint-e<k>.keras`` and ``best-e<k>.weights.h5``) and, once finished,
``history.json``, ``report.csv``, ``metrics.json``, ``classifier.keras`` and the feature models
``model<N>-pool.keras`` / ``model<N>-dense256.keras``. The activation and image caches of all the collection's runs
share the sibling ``cache/`` folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.core import config
from cbir.data.collection import collection_id
from cbir.features.finetune.errors import FinetuneError

STATE_FILE = "state.json"  # the checkpoint's commit point: it names the files below
HISTORY_FILE = "history.json"
REPORT_FILE = "report.csv"
METRICS_FILE = "metrics.json"
CLASSIFIER_FILE = "classifier.keras"


def finetune_dir(collection: str | os.PathLike[str], backbone: str, model: int) -> Path:
    """``<artifacts>/finetune/<collection-id>/<backbone>-model<N>``."""
    return config.artifacts_dir() / "finetune" / collection_id(collection) / f"{backbone}-model{model}"


def shared_cache_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The image / activation cache folder shared by the runs of ``run_dir``'s collection (its sibling ``cache``)."""
    return Path(run_dir).parent / "cache"


def checkpoint_name(epoch: int) -> str:
    """File name of the whole-model checkpoint (weights + optimizer state) after 1-based ``epoch``."""
    return f"checkpoint-e{epoch:04d}.keras"


def best_weights_name(epoch: int) -> str:
    """File name of the weights of the best 1-based ``epoch`` so far (what early stopping restores)."""
    return f"best-e{epoch:04d}.weights.h5"


def discard_checkpoint(run_dir: str | os.PathLike[str]) -> None:
    """Delete the resume checkpoint of ``run_dir`` (``--restart``); the finished run's outputs stay until rewritten."""
    run_dir = Path(run_dir)
    for old in [*run_dir.glob("checkpoint-e*.keras"), *run_dir.glob("best-e*.weights.h5")]:
        old.unlink(missing_ok=True)
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def load_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The per-epoch history saved in ``run_dir`` (``history.json``, else the checkpoint state)."""
    run_dir = Path(run_dir)
    for name, key in ((HISTORY_FILE, None), (STATE_FILE, "history")):
        path = run_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            return pd.DataFrame(data[key] if key else data)
    raise FinetuneError(f"no training history in {run_dir}")


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
    for metrics_file in sorted(root.glob(f"*/{METRICS_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True):
        run_dir = metrics_file.parent
        report_file = run_dir / REPORT_FILE
        report = pd.read_csv(report_file, index_col=0) if report_file.is_file() else None
        runs.append(
            FinishedRun(
                run_dir,
                json.loads(metrics_file.read_text()),
                load_history(run_dir),
                report if report is not None else pd.DataFrame(),
            )
        )
    return runs
