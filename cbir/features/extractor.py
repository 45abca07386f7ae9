"""Feature extraction: images → pooled CNN features, batched, overlapped, cached per image, resumable.

The features of one (collection, backbone, weights) live in a feature store
``artifacts/features/<collection-id>/<backbone>-<weights-id>/`` (:mod:`cbir.features.store`: ``.npy`` shards
opened as memory maps, a parquet catalog, a JSON manifest written last), or, when asked for a ``.joblib`` path, in
one joblib artifact (the earlier format, still read). Every image is cached by ``path|size|mtime_ns``, and so are the
reasons images were rejected. A rerun reuses every key that is still valid, so an unchanged collection computes
nothing and an added image computes one; a legacy ``<store>.joblib`` beside a new store seeds its cache and is then
removed. Progress is checkpointed (atomically) every ``checkpoint_every`` images, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cbir.core import config
from cbir.core.errors import ConfigError
from cbir.core.storage import ArtifactError, save_artifact
from cbir.data.collection import Catalog, collection_id, with_rejected
from cbir.data.images import decode_or_reason, prefetched, resize_for_model
from cbir.features.backbones import WeightsArg, build_model, get_backbone, resolve_weights, weights_identity
from cbir.features.sources import FEATURES_KIND, FeatureSet, feature_source, load_features
from cbir.features.store import (
    MANIFEST,
    append_part,
    catalog_keys,
    is_store,
    read_manifest,
    store_dir,
    write_store,
)

Progress = Callable[[int, int], None]


def feature_path(root: str | os.PathLike[str], backbone: str, weights_id: str) -> Path:
    """The default feature store (a folder) of a collection and model."""
    return config.artifacts_dir() / "features" / collection_id(root) / f"{backbone}-{weights_id}"


def model_device() -> str:
    """Where TensorFlow runs the models: ``"GPU: <name>"`` (the first GPU TensorFlow sees; several are listed by
    count) or ``"CPU (no GPU found)"``. Extraction and fine-tuning use a visible GPU without being asked."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (no GPU found)"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", gpus[0].name)
    return f"GPU: {name}" + (f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else "")


class FeatureExtractor:
    """Pooled CNN features of images (scikit-learn style: configure, then ``transform``).

    Parameters: ``backbone`` a name in :data:`cbir.features.backbones.BACKBONES`; ``weights`` ``"imagenet"``, ``None``
    or a
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
        self._forward: Any = None  # the model's forward pass as a TensorFlow graph (built with the model)
        # one image's forward pass where a faster runtime gives the same features (cbir.features.lite: a server's)
        self.single_forward: Callable[[np.ndarray], np.ndarray] | None = None
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
        """The weights' id (:func:`cbir.features.backbones.weights_identity`), part of every cache key. Read off the
        weights
        file when it is local, without building the model: a Ray driver, or a run whose features are all cached,
        never loads TensorFlow for it (only weights still to be downloaded need the build to say which file)."""
        if self._weights_id is None:
            resolved = resolve_weights(self.spec, self.weights)
            if resolved == "imagenet":
                self._ensure_model()
            else:
                self._weights_id = weights_identity(resolved, self.seed)
        assert self._weights_id is not None
        return self._weights_id

    @property
    def dim(self) -> int:
        """Features per image: the backbone's pooled width, or, for a whole saved model (``.keras``, e.g. a
        fine-tuned head), its output width (built to read it)."""
        if self._model is None and not str(self.weights_path or "").endswith(".keras"):
            return self.spec.dim
        return int(self._ensure_model().output_shape[-1])

    def prepare(self, image: Image.Image) -> np.ndarray:
        """An RGB image → (H, W, 3) float32 0..255 at the model's input size."""
        return resize_for_model(image, self.spec.input_size)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 0..255 → (N, dim) float32 features: one image by :attr:`single_forward` where set,
        else :meth:`graph_arrays`."""
        if len(batch) == 1 and self.single_forward is not None:
            return self.single_forward(self.spec.preprocess(batch))
        return self.graph_arrays(batch)

    def graph_arrays(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`predict_arrays` by the model's TensorFlow graph (what feature sets are extracted with)."""
        model = self._ensure_model()
        if self._forward is None or self._forward[0] is not model:
            import tensorflow as tf

            # a graph, traced once per batch shape: one query image in ~50 ms where calling the model eagerly runs
            # it op by op in ~500 ms (two busy cores; benchmarks/warm_start.py)
            self._forward = (model, tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True))
        out = self._forward[1](self.spec.preprocess(batch))
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


def legacy_path(store: str | os.PathLike[str]) -> Path:
    """The joblib artifact a store replaces (``<store>.joblib``): its cache seeds the store, which then removes it."""
    store = Path(store)
    return store.parent / f"{store.name}.joblib"


def _load_cache(
    path: Path, backbone: str, weights_id: str, dim: int
) -> tuple[dict[str, np.ndarray], dict[str, str], Path | None]:
    """The per-image cache at ``path`` (a store, or its legacy joblib artifact when the store does not exist yet):
    ``(key → row, key → rejection reason, the source read)``; empty when absent, unreadable or of another model."""
    source = path
    if is_store(path) and not (store_dir(path) / MANIFEST).is_file():
        source = legacy_path(store_dir(path))
    if not source.exists():
        return {}, {}, None
    try:
        cache, rejected = feature_source(source).read_cache(backbone, weights_id, dim)
    except (ArtifactError, KeyError, TypeError, ValueError, OSError) as exc:
        tqdm.write(f"feature cache {source} is not usable ({exc}); rebuilding it")
        return {}, {}, None
    return cache, rejected, source


def _meta(catalog: Catalog, extractor: FeatureExtractor, done: Catalog, computed: int, complete: bool) -> dict:
    return {
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


def _finished(
    catalog: Catalog,
    extractor: FeatureExtractor,
    rejected: dict[str, str],
    computed: int,
    complete: bool = True,
) -> tuple[Catalog, list[str], dict[str, str], dict]:
    """The catalog of the usable images (rejected ones moved to its report), their keys, the rejections of
    current images only (so deleted or changed files do not pile up) and the artifact's meta. An incomplete run
    keeps only the report: no image is usable until every one is done."""
    images = catalog.images
    keys = catalog_keys(images)
    reasons = {path: rejected.get(key) for path, key in zip(images["path"], keys, strict=True)}
    done = with_rejected(catalog, reasons)
    done_keys = [k for k, r in zip(keys, reasons.values(), strict=True) if r is None]
    if not complete:
        done = Catalog(root=catalog.root, images=catalog.images.iloc[:0], report=done.report)
        done_keys = []
    meta = _meta(catalog, extractor, done, computed, complete)
    return done, done_keys, {k: rejected[k] for k in keys if k in rejected}, meta


def _stack(cache: dict[str, np.ndarray], keys: list[str], dim: int) -> np.ndarray:
    """The cached rows of ``keys`` in order, as one (len(keys), dim) array (no rows, float32, when empty)."""
    return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, dim), dtype=np.float32)


def _save_joblib(
    path: Path,
    catalog: Catalog,
    extractor: FeatureExtractor,
    cache: dict[str, np.ndarray],
    rejected: dict[str, str],
    computed: int,
    complete: bool,
) -> FeatureSet:
    """The single-file format: every row, the cache and the catalog in one joblib artifact (small collections)."""
    done, done_keys, current_rejected, meta = _finished(catalog, extractor, rejected, computed, complete)
    features = _stack(cache, done_keys, extractor.dim)
    cache_keys = [k for k in catalog_keys(catalog.images) if k in cache] if complete else list(cache)
    save_artifact(
        path,
        FEATURES_KIND,
        {
            "features": features,
            "catalog": done.images,
            "report": done.report,
            "meta": meta,
            "cache_keys": cache_keys,
            "cache_features": _stack(cache, cache_keys, extractor.dim),
            "cache_rejected": current_rejected if complete else rejected,
        },
    )
    return FeatureSet(features=features, catalog=done.images, report=done.report, meta=meta)


def _save_store(
    path: Path,
    catalog: Catalog,
    extractor: FeatureExtractor,
    cache: dict[str, np.ndarray],
    rejected: dict[str, str],
    computed: int,
    dtype: str,
) -> FeatureSet:
    done, done_keys, current_rejected, meta = _finished(catalog, extractor, rejected, computed)
    chunks = (_stack(cache, done_keys[i : i + 4096], extractor.dim) for i in range(0, len(done_keys), 4096))
    write_store(path, chunks, done.images, done.report, current_rejected, meta, dtype=dtype)
    return load_features(path)


Batches = Iterator[tuple[list[str], "np.ndarray | None", dict[str, str]]]


def extract_collection(
    catalog: Catalog,
    extractor: FeatureExtractor,
    out_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    checkpoint_every: int = 1024,
    dtype: str | None = None,
    engine: Callable[[FeatureExtractor, list[str]], Batches] | None = None,
) -> FeatureSet:
    """Features of every image of ``catalog``, computing only those not already cached at ``out_path``.

    ``out_path``: a store folder (default: :func:`feature_path`; features stored as ``dtype``, ``"float32"`` or
    ``"float16"``; ``None``: the existing store's, else float32) or a ``.joblib`` file (the single-file format,
    float32). ``engine(extractor, paths)`` yields ``(ok_paths, features, rejected)`` per batch of
    ``extractor.batch_size`` paths, like
    :meth:`FeatureExtractor.iter_batches` (the default; :func:`cbir.features.ray.ray_engine` runs on Ray Data).
    ``progress(done, total)`` is called after each batch (the app passes ``st.progress``); the CLI shows tqdm.
    Returns the :class:`FeatureSet` that was written (``meta["computed"]`` = images computed by this call).
    """
    out = (
        Path(out_path) if out_path is not None else feature_path(catalog.root, extractor.backbone, extractor.weights_id)
    )
    store = is_store(out)
    cache, rejected, source = _load_cache(out, extractor.backbone, extractor.weights_id, extractor.dim)
    images = catalog.images
    todo = [
        (path, key)
        for path, key in zip(images["path"], catalog_keys(images), strict=True)
        if key not in cache and key not in rejected
    ]
    key_of = dict(todo)
    computed = since_checkpoint = 0
    pending: list[str] = []  # keys computed since the last checkpoint
    bar = tqdm(total=len(todo), desc=f"{extractor.backbone} features", unit="img", disable=not todo)
    start = time.perf_counter()
    batches = (engine or FeatureExtractor.iter_batches)(extractor, [p for p, _ in todo])
    with contextlib.closing(batches):
        for ok_paths, features, bad in batches:
            for path, reason in bad.items():
                rejected[key_of[path]] = reason
            if features is not None:
                for path, row in zip(ok_paths, features, strict=True):
                    cache[key_of[path]] = row
                    pending.append(key_of[path])
            n_batch = len(ok_paths) + len(bad)
            computed += n_batch
            bar.update(n_batch)
            since_checkpoint += n_batch
            if since_checkpoint >= checkpoint_every and computed < len(todo):
                _checkpoint(out, store, catalog, extractor, cache, rejected, pending, computed)
                pending, since_checkpoint = [], 0
            if progress is not None:
                progress(computed, len(todo))
    bar.close()
    if store:
        if dtype is None:
            dtype = read_manifest(source).get("dtype", "float32") if source is not None and source == out else "float32"
        result = _save_store(out, catalog, extractor, cache, rejected, computed, dtype)
        if source is not None and source.suffix == ".joblib" and source != out:
            source.unlink(missing_ok=True)  # converted: the store replaces the legacy artifact
    else:
        result = _save_joblib(out, catalog, extractor, cache, rejected, computed, complete=True)
    result.meta["seconds"] = time.perf_counter() - start
    return result


def _checkpoint(
    out: Path,
    store: bool,
    catalog: Catalog,
    extractor: FeatureExtractor,
    cache: dict[str, np.ndarray],
    rejected: dict[str, str],
    pending: list[str],
    computed: int,
) -> None:
    """Save progress so that an interrupted run resumes; a store appends only the new rows (one part)."""
    if not store:
        _save_joblib(out, catalog, extractor, cache, rejected, computed, complete=False)
        return
    empty = Catalog(root=catalog.root, images=catalog.images.iloc[:0], report=catalog.report.iloc[:0])
    meta = _meta(catalog, extractor, empty, computed, complete=False)
    rows = _stack(cache, pending, extractor.dim)
    mapped = append_part(out, pending, rows, rejected, meta)
    cache.update(zip(pending, mapped, strict=True))  # rows now live on disk; the in-memory copies can go
