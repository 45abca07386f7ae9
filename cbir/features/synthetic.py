"""Synthetic feature sets for scale tests: no images, features that are hard for approximate search, and a catalog
of made-up paths, labels and roles, written as a regular store (:mod:`cbir.features.store`) that the CLI, the
benchmarks and the app open like an extracted one.

The vectors are the ReLU of a randomly rotated Gaussian whose j-th axis has scale (j + 1)^-0.75 (like pooled CNN
features: non-negative, a decaying spectrum); in a store, each row is pulled towards the centroid of its class
(:data:`CLASS_SHIFT`) so that mAP means something, while most neighbours still come from other classes.

``benchmarks/scale.py`` (the 1M benchmark), ``tests/test_scale.py`` (200k in CI) and
``python -m cbir synthetic`` share these definitions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cbir.data.collection import collection_id
from cbir.features.store import write_store

N_CLASSES = 100
DISTRACTOR_EVERY = 10  # every 10th row is an unlabelled distractor
QUERY_EVERY = 50  # every 50th row (of the others) is a validation query: 2 % of the rows
CLASS_SHIFT = 0.5  # weight of the class centroid in a store's rows
SYNTHETIC_BACKBONE = "synthetic"
CHUNK = 65_536


def _rotation(dim: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))[0].astype(np.float32)


def _scale(dim: int) -> np.ndarray:
    return ((np.arange(dim) + 1.0) ** -0.75).astype(np.float32)


def hard_vector_chunks(n: int, dim: int, seed: int, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """The rows of :func:`hard_vectors`, ``chunk`` at a time (a 1M-row set is never held twice)."""
    rotation, scale = _rotation(dim), _scale(dim)
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        latent = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32) * scale
        yield np.maximum(latent @ rotation, 0)


def hard_vectors(n: int, dim: int, seed: int, chunk: int = CHUNK) -> np.ndarray:
    """(n, dim) float32: the ReLU of a randomly rotated Gaussian with a decaying spectrum (see the module)."""
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for rows in hard_vector_chunks(n, dim, seed, chunk):
        out[start : start + len(rows)] = rows
        start += len(rows)
    return out


def synthetic_classes(n: int) -> np.ndarray:
    """(n,) int: the class of each row, uniform at random over :data:`N_CLASSES` (fixed seed)."""
    return np.random.default_rng(7).integers(0, N_CLASSES, size=n)


def synthetic_catalog(n: int, root: str = "/synthetic") -> pd.DataFrame:
    """``n`` catalog rows with made-up paths under ``root`` (no file exists): every :data:`DISTRACTOR_EVERY`-th row
    an unlabelled distractor, every :data:`QUERY_EVERY`-th of the others a query, the rest indexed; labels
    ``class0`` … ``class99`` (:func:`synthetic_classes`)."""
    ids = np.arange(n)
    distractor = ids % DISTRACTOR_EVERY == 0
    query = ~distractor & (ids % QUERY_EVERY == 1)
    relpaths = [f"{i // 1000:04d}/img{i:07d}.jpg" for i in ids]
    labels = np.array([f"class{c}" for c in range(N_CLASSES)], dtype=object)[synthetic_classes(n)]
    labels[distractor] = None
    return pd.DataFrame(
        {
            "path": [f"{root}/{relpath}" for relpath in relpaths],
            "relpath": relpaths,
            "label": pd.Series(labels, dtype=object),
            "split": np.where(query, "val", "train"),
            "role": np.where(distractor, "distractor", np.where(query, "query", "index")),
            "size": (ids * 7919 % 100_000 + 10_000).astype(np.int64),
            "mtime_ns": (ids + 1_700_000_000_000_000_000).astype(np.int64),
        }
    )


def labelled_chunks(n: int, dim: int, seed: int = 0, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """A store's rows: :func:`hard_vector_chunks` plus :data:`CLASS_SHIFT` × the centroid of the row's class (a
    hard vector too); distractor rows get no shift."""
    centroids = hard_vectors(N_CLASSES, dim, seed=seed + 1_000_003) * np.float32(CLASS_SHIFT)
    classes = synthetic_classes(n)
    start = 0
    for rows in hard_vector_chunks(n, dim, seed, chunk):
        ids = np.arange(start, start + len(rows))
        shift = centroids[classes[start : start + len(rows)]]
        shift[ids % DISTRACTOR_EVERY == 0] = 0
        yield rows + shift
        start += len(rows)


def synthetic_collection(artifacts: str | os.PathLike[str], n: int) -> Path:
    """The (empty) collection folder a synthetic set of ``n`` rows is filed under: ``<artifacts>/synthetic-<n>``
    (``CBIR_COLLECTION`` for the app)."""
    return Path(artifacts) / f"synthetic-{n}"


def write_synthetic_store(
    out: str | os.PathLike[str],
    n: int,
    dim: int = 256,
    dtype: str = "float32",
    seed: int = 0,
    collection: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a synthetic feature set of ``n`` rows × ``dim`` to the store folder ``out`` (streamed in chunks);
    ``collection`` is the collection root recorded in its meta (the app lists the feature sets of its
    collection). ``progress(rows written, n)``. Returns the store folder."""
    root = Path(collection) if collection is not None else Path(out).parent
    meta = {
        "backbone": SYNTHETIC_BACKBONE,
        "weights_id": f"synthetic-{n}x{dim}",
        "dim": dim,
        "complete": True,
        "n_images": n,
        "n_rejected": 0,
        "computed": n,
        "collection_root": str(root.resolve()),
        "collection_id": collection_id(root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    def rows() -> Iterator[np.ndarray]:
        done = 0
        for chunk in labelled_chunks(n, dim, seed):
            yield chunk
            done += len(chunk)
            if progress is not None:
                progress(done, n)

    return write_store(
        out,
        rows(),
        synthetic_catalog(n, root=str(root.resolve())),
        pd.DataFrame(columns=["path", "reason"]),
        {},
        meta,
        dtype=dtype,
    )


def write_synthetic_workspace(
    artifacts: str | os.PathLike[str],
    n: int,
    dim: int = 256,
    dtype: str = "float32",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path]:
    """A synthetic collection the app can open: its (empty) collection folder :func:`synthetic_collection` and
    its feature set under ``<artifacts>/features/<collection id>/synthetic``. Returns ``(collection, store)``;
    open the app on it with ``CBIR_ARTIFACTS=<artifacts> CBIR_COLLECTION=<collection> streamlit run app.py``."""
    collection = synthetic_collection(artifacts, n)
    collection.mkdir(parents=True, exist_ok=True)
    store = Path(artifacts) / "features" / collection_id(collection) / SYNTHETIC_BACKBONE
    return collection, write_synthetic_store(store, n, dim, dtype, seed, collection, progress)
