"""Feature extraction: images → pooled CNN features, batched, overlapped, cached per image, resumable.

The cache of one (collection, backbone, weights) lives in one joblib artifact
``artifacts/features/<collection-id>/<backbone>-<weights-id>.joblib`` holding the features of every image keyed
by ``path|size|mtime_ns``, the reasons images were rejected (same keys), the catalog and metadata. A rerun reuses
every key that is still valid, so an unchanged collection computes nothing and an added image computes one.
Progress is checkpointed (atomically) every ``checkpoint_every`` images, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cbir import config
from cbir.backbones import WeightsArg, build_model, get_backbone, resolve_weights
from cbir.collection import Catalog, collection_id, with_rejected
from cbir.errors import ConfigError
from cbir.images import decode_or_reason, prefetched, resize_for_model
from cbir.storage import ArtifactError, load_artifact, save_artifact

FEATURES_KIND = "features"
Progress = Callable[[int, int], None]


@dataclass
class FeatureSet:
    """Features aligned with a catalog.

    ``features``: (n, dim) float32, row i is the image ``catalog.iloc[i]``. ``catalog``: columns path, relpath,
    label, split, role, size, mtime_ns. ``report``: rejected files (path, reason). ``meta``: backbone, weights_id,
    collection root/id, n_images, created (ISO date), computed (images computed by the last run).
    """

    features: np.ndarray
    catalog: pd.DataFrame
    report: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.catalog["label"].to_numpy(dtype=object)

    @property
    def roles(self) -> np.ndarray:
        return self.catalog["role"].to_numpy(dtype=object)


def cache_key(path: str, size: int, mtime_ns: int) -> str:
    return f"{path}|{size}|{mtime_ns}"


def catalog_keys(images: pd.DataFrame) -> list[str]:
    """The cache key of every catalog row, in row order."""
    return [cache_key(p, s, m) for p, s, m in zip(images["path"], images["size"], images["mtime_ns"], strict=True)]


def feature_path(root: str | os.PathLike[str], backbone: str, weights_id: str) -> Path:
    return config.artifacts_dir() / "features" / collection_id(root) / f"{backbone}-{weights_id}.joblib"


class FeatureExtractor:
    """Pooled CNN features of images (scikit-learn style: configure, then ``transform``).

    Parameters: ``backbone`` a name in :data:`cbir.backbones.BACKBONES`; ``weights`` ``"imagenet"``, ``None`` or a
    weights file; ``batch_size``; ``workers`` decoding threads that prepare the next batches while the model runs.
    """

    def __init__(
        self,
        backbone: str = "resnet50v2",
        weights: WeightsArg = "imagenet",
        batch_size: int = 32,
        workers: int = 2,
        seed: int = 0,
    ) -> None:
        self.spec = get_backbone(backbone)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.backbone = backbone
        self.weights = weights
        self.batch_size = batch_size
        self.workers = max(1, workers)
        self.seed = seed
        self._model: Any = None
        self._weights_id: str | None = None

    def _ensure_model(self) -> Any:
        if self._model is None:
            self._model, self._weights_id = build_model(self.backbone, self.weights, seed=self.seed)
        return self._model

    @property
    def weights_path(self) -> str | None:
        """The weights file the model was built from (``None`` for random or downloaded weights)."""
        resolved = resolve_weights(self.spec, self.weights)
        return resolved if resolved not in (None, "imagenet") else None

    @property
    def weights_id(self) -> str:
        self._ensure_model()
        assert self._weights_id is not None
        return self._weights_id

    @property
    def dim(self) -> int:
        return int(self._ensure_model().output_shape[-1])

    def prepare(self, image: Image.Image) -> np.ndarray:
        """An RGB image → (H, W, 3) float32 0..255 at the model's input size."""
        return resize_for_model(image, self.spec.input_size)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 0..255 → (N, dim) float32 features."""
        model = self._ensure_model()
        out = model(self.spec.preprocess(batch), training=False)
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)

    def transform(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Features of already-decoded RGB images: (len(images), dim) float32."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [
            self.predict_arrays(np.stack([self.prepare(im) for im in images[i : i + self.batch_size]]))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out)

    def _decode(self, path: str) -> np.ndarray | str:
        return decode_or_reason(path, self.prepare)

    def iter_batches(self, paths: Sequence[str]) -> Iterator[tuple[list[str], np.ndarray | None, dict[str, str]]]:
        """Yield ``(batch_paths_ok, features, rejected)``; decoding of the next two batches overlaps the model."""
        # closing: a consumer that stops early also stops the decoding threads
        with contextlib.closing(prefetched(self._decode, paths, 2 * self.batch_size, self.workers)) as decoded:
            for start in range(0, len(paths), self.batch_size):
                chunk = list(paths[start : start + self.batch_size])
                items = [next(decoded) for _ in chunk]
                rejected = {p: d for p, d in zip(chunk, items, strict=True) if isinstance(d, str)}
                good = [(p, d) for p, d in zip(chunk, items, strict=True) if not isinstance(d, str)]
                features = self.predict_arrays(np.stack([d for _, d in good])) if good else None
                yield [p for p, _ in good], features, rejected


def load_features(path: str | os.PathLike[str]) -> FeatureSet:
    """Load a feature artifact written by :func:`extract_collection` (raises ``ArtifactError`` when unusable)."""
    payload = load_artifact(path, FEATURES_KIND)
    try:
        features = np.asarray(payload["features"], dtype=np.float32)
        catalog = payload["catalog"]
        if not payload["meta"].get("complete", False):
            raise ArtifactError(f"{path}: extraction was interrupted; rerun `python -m cbir extract` to finish it")
        if features.ndim != 2 or len(features) != len(catalog):
            raise ArtifactError(f"{path}: {len(features)} feature rows for {len(catalog)} catalog rows")
        return FeatureSet(features=features, catalog=catalog, report=payload["report"], meta=payload["meta"])
    except KeyError as exc:
        raise ArtifactError(f"{path}: missing field {exc}") from exc


def _load_cache(path: Path, backbone: str, weights_id: str, dim: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The per-image cache at ``path``; empty when absent, unreadable or made by another model."""
    if not path.exists():
        return {}, {}
    try:
        payload = load_artifact(path, FEATURES_KIND)
        meta = payload["meta"]
        if meta.get("backbone") != backbone or meta.get("weights_id") != weights_id:
            raise ArtifactError(f"made by {meta.get('backbone')}/{meta.get('weights_id')}")
        cached = np.asarray(payload["cache_features"], dtype=np.float32)
        keys = list(payload["cache_keys"])
        if cached.ndim != 2 or cached.shape != (len(keys), dim):
            raise ArtifactError(f"cache shape {cached.shape} does not match {len(keys)} keys × {dim}")
        return dict(zip(keys, cached, strict=True)), dict(payload["cache_rejected"])
    except (ArtifactError, KeyError, TypeError, ValueError) as exc:
        tqdm.write(f"feature cache {path} is not usable ({exc}); rebuilding it")
        return {}, {}


def _save(
    path: Path,
    catalog: Catalog,
    extractor: FeatureExtractor,
    cache: dict[str, np.ndarray],
    rejected: dict[str, str],
    computed: int,
    complete: bool,
) -> FeatureSet:
    images = catalog.images
    keys = catalog_keys(images)
    reasons = {path: rejected.get(key) for path, key in zip(images["path"], keys, strict=True)}
    done = with_rejected(catalog, reasons)
    if complete:
        done_keys = [k for k, r in zip(keys, reasons.values(), strict=True) if r is None]
        features = (
            np.stack([cache[k] for k in done_keys]) if done_keys else np.zeros((0, extractor.dim), dtype=np.float32)
        )
    else:
        done = Catalog(root=catalog.root, images=catalog.images.iloc[:0], report=done.report)
        features = np.zeros((0, extractor.dim), dtype=np.float32)
    meta = {
        "backbone": extractor.backbone,
        "weights_id": extractor.weights_id,
        "weights_path": extractor.weights_path,
        "dim": extractor.dim,
        "collection_root": str(catalog.root),
        "collection_id": collection_id(catalog.root),
        "n_images": len(done.images),
        "n_rejected": len(done.report),
        "complete": complete,
        "computed": computed,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # a finished run keeps only the current images' entries, so deleted or changed files do not pile up
    cache_keys = [k for k in keys if k in cache] if complete else list(cache)
    if complete:
        rejected = {k: rejected[k] for k in keys if k in rejected}
    save_artifact(
        path,
        FEATURES_KIND,
        {
            "features": features,
            "catalog": done.images,
            "report": done.report,
            "meta": meta,
            "cache_keys": cache_keys,
            "cache_features": (
                np.stack([cache[k] for k in cache_keys])
                if cache_keys
                else np.zeros((0, extractor.dim), dtype=np.float32)
            ),
            "cache_rejected": rejected,
        },
    )
    return FeatureSet(features=features, catalog=done.images, report=done.report, meta=meta)


def extract_collection(
    catalog: Catalog,
    extractor: FeatureExtractor,
    out_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    checkpoint_every: int = 1024,
) -> FeatureSet:
    """Features of every image of ``catalog``, computing only those not already cached at ``out_path``.

    ``progress(done, total)`` is called after each batch (the app passes ``st.progress``); the CLI shows tqdm.
    Returns the :class:`FeatureSet` that was written (``meta["computed"]`` = images computed by this call).
    """
    out = (
        Path(out_path) if out_path is not None else feature_path(catalog.root, extractor.backbone, extractor.weights_id)
    )
    cache, rejected = _load_cache(out, extractor.backbone, extractor.weights_id, extractor.dim)
    images = catalog.images
    todo = [
        (path, key)
        for path, key in zip(images["path"], catalog_keys(images), strict=True)
        if key not in cache and key not in rejected
    ]
    key_of = dict(todo)
    computed = 0
    since_checkpoint = 0
    bar = tqdm(total=len(todo), desc=f"{extractor.backbone} features", unit="img", disable=not todo)
    start = time.perf_counter()
    for ok_paths, features, bad in extractor.iter_batches([p for p, _ in todo]):
        for path, reason in bad.items():
            rejected[key_of[path]] = reason
        if features is not None:
            for path, row in zip(ok_paths, features, strict=True):
                cache[key_of[path]] = row
        n_batch = len(ok_paths) + len(bad)
        computed += n_batch
        since_checkpoint += n_batch
        bar.update(n_batch)
        if since_checkpoint >= checkpoint_every and computed < len(todo):
            _save(out, catalog, extractor, cache, rejected, computed, complete=False)
            since_checkpoint = 0
        if progress is not None:
            progress(computed, len(todo))
    bar.close()
    result = _save(out, catalog, extractor, cache, rejected, computed, complete=True)
    result.meta["seconds"] = time.perf_counter() - start
    return result
