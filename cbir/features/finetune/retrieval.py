"""Features trained for retrieval: a metric-learning head on the backbone, beside the paper's softmax classifier.

:func:`train_retrieval` trains a :func:`~cbir.features.finetune.heads.build_head` (MLP → L2-normalised ``dim``-d
output) with SupCon, proxy-anchor or softmax cross-entropy on the labels of the collection's **index split only**
(never the queries, never the distractors; nothing is held out for early stopping either: the run has a fixed
length). Two ways, as the paper's Model 1:

* frozen backbone (default): the head trains on the pooled backbone features of the index split, read from the
  collection's ImageNet feature set (extracted first when missing: that store is the activation cache, keyed by
  backbone and weights). Minutes on a CPU. The trained feature set is then written by passing the stored pooled
  features through the head (seconds instead of a new extraction; ``extract --weights`` gives the same rows);
* ``unfreeze_last_stage``: the backbone's last stage trains with the head, on the boundary activations cached by
  Model 1's :func:`~cbir.features.finetune.data.activation_cache` (shared with Model 1's runs). Afterwards run
  ``python -m cbir extract --weights <extractor>`` (the backbone changed, so every image is recomputed).

Outputs, in ``<artifacts>/finetune/<collection-id>/retrieval/<backbone>-<loss>-<frozen|laststage>/``: the
extractor ``retrieval-<loss>-<frozen|laststage>.keras`` (backbone + head: the backbone's input, (N, dim) unit
vectors out; what ``FeatureExtractor(backbone, weights=path)`` and ``extract --weights`` take), ``head.keras``
(frozen runs: pooled features → embedding) and ``metrics.json`` (configuration, what it was trained on, loss
history, training seconds).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.core import config
from cbir.core.storage import atomic_write_bytes
from cbir.data.collection import Catalog, collection_id
from cbir.features.backbones import WeightsArg, get_backbone
from cbir.features.extractor import FeatureExtractor, FeatureSet, extract_collection, feature_path, load_features
from cbir.features.finetune.data import activation_cache, image_cache
from cbir.features.finetune.errors import FinetuneError
from cbir.features.finetune.heads import FitOutcome, FitSettings, LossSettings, build_head, embed, fit_embedding
from cbir.features.finetune.models import FIRST_TRAINABLE, build_backbone, save_model_atomic, split_model
from cbir.features.finetune.runs import METRICS_FILE, finetune_dir, shared_cache_dir

HEAD_FILE = "head.keras"


@dataclass
class RetrievalConfig:
    """One retrieval-head run. ``dim``: output size; ``hidden``: the head's hidden width (``None``: linear).
    ``loss`` / ``fit``: :class:`LossSettings` / :class:`FitSettings`. ``unfreeze_last_stage``: train the backbone
    from :data:`FIRST_TRAINABLE` on too. ``input_size`` (W, H) is for tests (unfrozen runs only)."""

    backbone: str = "efficientnet_lite0"
    weights: WeightsArg = "imagenet"
    dim: int = 256
    hidden: int | None = 1024
    loss: LossSettings = field(default_factory=LossSettings)
    fit: FitSettings = field(default_factory=FitSettings)
    unfreeze_last_stage: bool = False
    input_size: tuple[int, int] | None = None
    workers: int = 2


@dataclass
class RetrievalResult:
    """Outcome of :func:`train_retrieval`: the run folder, the saved ``extractor`` (and frozen runs' ``head``), the
    trained ``feature_set`` path (frozen runs; ``None`` until ``extract --weights`` for unfrozen ones), the fit
    history and ``metrics`` (what ``metrics.json`` holds)."""

    run_dir: Path
    extractor: Path
    head: Path | None
    feature_set: Path | None
    outcome: FitOutcome
    metrics: dict[str, Any]


def run_name(loss: str, unfrozen: bool) -> str:
    """``retrieval-<loss>-<frozen|laststage>``: the stem of the extractor file, hence of its feature set's weights id
    (``retrieval-supcon-frozen-<digest>``), which is how the report and the pages tell the trained sets apart."""
    return f"retrieval-{loss}-{'laststage' if unfrozen else 'frozen'}"


def retrieval_root(collection: str | os.PathLike[str]) -> Path:
    """``<artifacts>/finetune/<collection-id>/retrieval``: the retrieval runs of a collection."""
    return config.artifacts_dir() / "finetune" / collection_id(collection) / "retrieval"


def retrieval_dir(collection: str | os.PathLike[str], backbone: str, loss: str, unfrozen: bool) -> Path:
    """``<retrieval_root>/<backbone>-<loss>-<frozen|laststage>``; the extractor inside is ``<run_name>.keras``."""
    return retrieval_root(collection) / f"{backbone}-{run_name(loss, unfrozen).removeprefix('retrieval-')}"


def retrieval_runs(collection: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The finished retrieval runs of ``collection`` (default collection when ``None``): one row each with the
    backbone, loss, what was trained, output size, what it was trained on, epochs, training seconds (and the load
    average then) and the extractor's path."""
    columns = ["backbone", "loss", "trained", "dim", "trained on", "epochs", "train s", "load avg", "extractor"]
    rows = []
    for file in sorted(retrieval_root(collection or config.default_collection()).glob(f"*/{METRICS_FILE}")):
        m = json.loads(file.read_text())
        rows.append(
            [
                m["backbone"],
                m["loss"],
                f"last stage ({m['unfrozen']} on) + head" if m["unfrozen"] else "head (frozen backbone)",
                m["dim"],
                f"{m['n_train']} index images, {len(m['classes'])} classes",
                len(m["history"]),
                m["train_seconds"],
                m["load_average"][0],
                m["extractor"],
            ]
        )
    return pd.DataFrame(rows, columns=columns)


def index_split(labels: np.ndarray, roles: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The training rows: role ``index`` with a label. Returns ``(rows, y, classes)``: (n,) int64 row indices,
    (n,) int64 class indices into the sorted ``classes``. Queries and distractors are never among them."""
    labels, roles = np.asarray(labels, dtype=object), np.asarray(roles, dtype=object)
    mask = (roles == "index") & np.array([label is not None and label == label for label in labels])
    rows = np.flatnonzero(mask)
    classes = sorted({str(label) for label in labels[rows]})
    if len(classes) < 2:
        raise FinetuneError(f"need at least 2 labelled classes in the index split, got {len(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    return rows, np.array([index[str(label)] for label in labels[rows]], dtype=np.int64), classes


def base_feature_set(
    collection: str | os.PathLike[str] | Catalog, backbone: str, weights: WeightsArg, workers: int = 2
) -> FeatureSet:
    """The collection's pooled features of ``backbone`` / ``weights``: its complete feature store when there is
    one (what ``extract`` indexed: the frozen head's activation cache), else extracted first (the collection
    scanned with ``extract``'s hygiene unless a catalog is given)."""
    from cbir.data.cleaning import clean_collection

    root = collection.root if isinstance(collection, Catalog) else Path(collection)
    extractor = FeatureExtractor(backbone, weights, workers=workers)
    path = feature_path(root, backbone, extractor.weights_id)
    if (path / "meta.json").is_file():
        features = load_features(path)
        if features.meta.get("complete"):
            return features
    catalog = collection if isinstance(collection, Catalog) else clean_collection(root)[0]
    return extract_collection(catalog, extractor, out_path=path)


def _projecting_engine(base: FeatureSet, head: Any) -> Any:
    """An ``extract_collection`` engine that takes each image's pooled row from ``base`` through ``head``."""
    row_of = {p: i for i, p in enumerate(base.catalog["path"])}
    reasons = dict(zip(base.report["path"], base.report["reason"], strict=True)) if len(base.report) else {}

    def engine(extractor: FeatureExtractor, paths: list[str]) -> Iterator[tuple[list[str], Any, dict[str, str]]]:
        for start in range(0, len(paths), 1024):
            chunk = paths[start : start + 1024]
            ok = [p for p in chunk if p in row_of]
            bad = {p: reasons.get(p, "not in the base feature set") for p in chunk if p not in row_of}
            rows = np.array([row_of[p] for p in ok], dtype=np.int64)
            yield ok, (embed(head, base.features[rows]) if ok else None), bad

    return engine


def project_feature_set(base: FeatureSet, head: Any, extractor_path: Path, root: Path) -> Path:
    """Write the feature set of ``extractor_path`` (backbone + ``head``) from ``base``'s pooled rows, in the store
    ``extract --weights extractor_path`` would write; returns its path."""
    catalog = Catalog(root=root, images=base.catalog, report=base.report)
    extractor = FeatureExtractor(base.meta["backbone"], str(extractor_path))
    out = feature_path(root, extractor.backbone, extractor.weights_id)
    extract_collection(catalog, extractor, out_path=out, engine=_projecting_engine(base, head))
    return out


def _train_frozen(collection: Path | Catalog, cfg: RetrievalConfig, progress: bool) -> tuple[Any, ...]:
    base = base_feature_set(collection, cfg.backbone, cfg.weights, cfg.workers)
    rows, y, classes = index_split(base.labels, base.roles)
    x = np.asarray(base.features[rows], dtype=np.float32)  # the index split's pooled activations, in memory
    head = build_head(x.shape[1], cfg.dim, cfg.hidden, seed=cfg.fit.seed)
    outcome = fit_embedding(head, lambda r: x[r], y, cfg.loss, cfg.fit, progress=progress)
    backbone, weights_id = build_backbone(cfg.backbone, cfg.weights, seed=cfg.fit.seed)
    import keras

    extractor = keras.Model(backbone.input, head(backbone.output), name=f"{cfg.backbone}_retrieval")
    return base, head, extractor, weights_id, outcome, classes, len(rows)


def _train_last_stage(collection: Path | Catalog, cfg: RetrievalConfig, progress: bool) -> tuple[Any, ...]:
    import keras

    from cbir.data.cleaning import clean_collection

    catalog = collection if isinstance(collection, Catalog) else clean_collection(collection)[0]
    backbone, weights_id = build_backbone(cfg.backbone, cfg.weights, input_size=cfg.input_size, seed=cfg.fit.seed)
    head = build_head(int(backbone.output.shape[-1]), cfg.dim, cfg.hidden, seed=cfg.fit.seed)
    extractor = keras.Model(backbone.input, head(backbone.output), name=f"{cfg.backbone}_retrieval")
    frozen, tail = split_model(extractor, cfg.backbone)
    cache_dir = shared_cache_dir(finetune_dir(catalog.root, cfg.backbone, 1))  # Model 1's caches, shared
    spec = get_backbone(cfg.backbone)
    size = tuple(cfg.input_size) if cfg.input_size is not None else tuple(spec.input_size)
    images = image_cache(catalog, cache_dir, size=size, workers=cfg.workers, progress=progress)
    acts = activation_cache(images, frozen, cfg.backbone, weights_id, cache_dir, progress=progress)
    roles = images.rows["role"].to_numpy(dtype=object)
    labels = images.rows["label"].to_numpy(dtype=object)
    rows, y, classes = index_split(labels, np.where(images.ok, roles, "rejected"))
    for layer in extractor.layers:
        layer.trainable = True
    for layer in frozen.layers:
        layer.trainable = False
    load = lambda r: np.asarray(acts[rows[r]], np.float32)  # noqa: E731
    outcome = fit_embedding(tail, load, y, cfg.loss, cfg.fit, progress, head=head)
    return None, None, extractor, weights_id, outcome, classes, len(rows)


def train_retrieval(
    collection: str | os.PathLike[str] | Catalog | None = None,
    cfg: RetrievalConfig | None = None,
    progress: bool = True,
) -> RetrievalResult:
    """Train a retrieval head on ``collection``'s index split (see the module docstring) and save its outputs.

    ``collection``: a folder or a catalog; default collection when ``None``. Frozen runs read the collection's
    stored feature set (extracting it first when missing) and also write the trained one, so the report and the
    Search page list it at once. Unfrozen runs scan the folder with ``extract``'s hygiene.
    """
    cfg = cfg or RetrievalConfig()
    if cfg.backbone not in FIRST_TRAINABLE:
        raise FinetuneError(f"no fine-tuning split defined for backbone {cfg.backbone!r}")
    if cfg.input_size is not None and not cfg.unfreeze_last_stage:
        raise FinetuneError("input_size only applies to unfrozen runs (frozen ones read the stored features)")
    if collection is None:
        collection = config.default_collection()
    source = collection if isinstance(collection, Catalog) else Path(collection)
    root = source.root if isinstance(source, Catalog) else source
    run_dir = retrieval_dir(root, cfg.backbone, cfg.loss.loss, cfg.unfreeze_last_stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train = _train_last_stage if cfg.unfreeze_last_stage else _train_frozen
    base, head, extractor, weights_id, outcome, classes, n_train = train(source, cfg, progress)
    extractor_path = save_model_atomic(extractor, run_dir / f"{run_name(cfg.loss.loss, cfg.unfreeze_last_stage)}.keras")
    head_path = save_model_atomic(head, run_dir / HEAD_FILE) if head is not None else None
    feature_set = project_feature_set(base, head, extractor_path, root) if base is not None else None
    metrics = {
        "kind": "retrieval",
        "backbone": cfg.backbone,
        "weights_id": weights_id,
        "loss": cfg.loss.loss,
        "unfrozen": FIRST_TRAINABLE[cfg.backbone] if cfg.unfreeze_last_stage else None,
        "dim": cfg.dim,
        "hidden": cfg.hidden,
        "loss_settings": asdict(cfg.loss),
        "fit_settings": asdict(cfg.fit),
        "trained_on": "labels of the index split only (no query, no distractor)",
        "classes": classes,
        "n_train": n_train,
        "train_seconds": outcome.seconds,
        "total_seconds": time.perf_counter() - start,
        "stopped": outcome.stopped,
        "history": outcome.history,
        "load_average": list(os.getloadavg()),
        "extractor": str(extractor_path),
        "feature_set": str(feature_set) if feature_set is not None else None,
    }
    atomic_write_bytes(run_dir / METRICS_FILE, json.dumps(metrics, indent=1).encode())
    return RetrievalResult(run_dir, extractor_path, head_path, feature_set, outcome, metrics)
