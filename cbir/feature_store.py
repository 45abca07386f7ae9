"""A feature set on disk: ``.npy`` shards opened as memory maps, a parquet catalog and a JSON manifest.

A store is a folder::

    <store>/meta.json                    the manifest: kind, version, meta and the files of the current generation
    <store>/features-<gen>-<i>.npy       (rows, dim) float32 or float16, row j of shard i is a catalog row
    <store>/catalog-<gen>.parquet        one row per feature row (path, relpath, label, split, role, size, mtime_ns)
    <store>/report-<gen>.parquet         rejected files (path, reason)
    <store>/rejected-<gen>.json          cache key → reason of every rejected file
    <store>/part-<gen>-<i>.npy/.keys.json  rows computed by an unfinished extraction (checkpoints) and their keys

Every file is written under a temporary name and renamed; ``meta.json`` is replaced last, so it is the commit point:
a reader sees the previous generation or the new one, never a mix. Files no manifest names are removed after a
commit. Opening a store maps the shards (``np.load(mmap_mode="r")``): nothing is read until it is used, so a
1M × 1280 float16 store opens in about a second, and the features exist once, in the page cache.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.storage import ArtifactError, atomic_output, atomic_write_bytes

STORE_KIND = "feature_store"
STORE_VERSION = 1
MANIFEST = "meta.json"
DTYPES = ("float32", "float16")
# the names of a store's files (of any generation); :func:`_commit` removes those the manifest no longer names
STORE_FILES = (
    "features-*.npy",
    "catalog-*.parquet",
    "report-*.parquet",
    "rejected-*.json",
    "part-*.npy",
    "part-*.json",
)


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a store folder (or its ``meta.json``) rather than a joblib artifact."""
    path = Path(path)
    return path.name == MANIFEST or path.is_dir() or path.suffix != ".joblib"


def store_dir(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.parent if path.name == MANIFEST else path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the store at ``path``; :class:`ArtifactError` when absent, unreadable or foreign."""
    manifest_path = store_dir(path) / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"feature store not found: {store_dir(path)} (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"feature store {store_dir(path)}: unreadable {MANIFEST} ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != STORE_KIND:
        raise ArtifactError(f"{manifest_path} is not a feature store manifest")
    if manifest.get("version") != STORE_VERSION:
        raise ArtifactError(f"{manifest_path} has format version {manifest.get('version')}, expected {STORE_VERSION}")
    return manifest


def _load_npy(folder: Path, name: str, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(folder / name, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"feature store {folder}: shard {name} is unreadable ({exc})") from exc


def open_features(path: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> np.ndarray:
    """The feature rows of the store: (n, dim) float32/float16, a read-only ``np.memmap`` when there is one shard
    (the usual case: a finished extraction writes one), else the concatenation of the shards (a copy)."""
    folder = store_dir(path)
    manifest = manifest if manifest is not None else read_manifest(folder)
    shards = [_load_npy(folder, name) for name in manifest["features"]]
    dim = int(manifest["meta"].get("dim", 0))
    if not shards:
        return np.zeros((0, dim), dtype=manifest.get("dtype", "float32"))
    return shards[0] if len(shards) == 1 else np.concatenate(shards)


def read_table(path: str | os.PathLike[str], name: str | None, columns: list[str]) -> pd.DataFrame:
    """A parquet table of the store (an empty frame with ``columns`` when ``name`` is ``None``)."""
    if name is None:
        return pd.DataFrame(columns=columns)
    try:
        return pd.read_parquet(store_dir(path) / name)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"feature store {store_dir(path)}: table {name} is unreadable ({exc})") from exc


def read_rejected(path: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, str]:
    name = manifest.get("rejected")
    if name is None:
        return {}
    try:
        return dict(json.loads((store_dir(path) / name).read_text()))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"feature store {store_dir(path)}: {name} is unreadable ({exc})") from exc


def cached_rows(path: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """Cache key → feature row (a view into a memory-mapped shard) of every row the store holds: the finished
    feature rows (keys from the catalog) and the checkpoint parts of an unfinished run."""
    from cbir.features import catalog_keys

    folder = store_dir(path)
    rows: dict[str, np.ndarray] = {}
    if manifest.get("catalog") is not None:
        catalog = read_table(folder, manifest["catalog"], [])
        features = open_features(folder, manifest)
        if len(features) != len(catalog):
            raise ArtifactError(f"feature store {folder}: {len(features)} rows for {len(catalog)} catalog rows")
        rows.update(zip(catalog_keys(catalog), features, strict=True))
    for part in manifest.get("parts", []):
        keys = json.loads((folder / part["keys"]).read_text())
        features = _load_npy(folder, part["features"])
        if len(keys) != len(features):
            raise ArtifactError(f"feature store {folder}: part {part['features']} has {len(features)} rows")
        rows.update(zip(keys, features, strict=True))
    return rows


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def _write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=1, default=str).encode())


def _write_parquet(path: Path, table: pd.DataFrame) -> None:
    with atomic_output(path, suffix=".tmp.parquet") as tmp:
        table.reset_index(drop=True).to_parquet(tmp, index=False)


def _commit(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest (the commit point), then delete the files it no longer names."""
    _write_json(folder / MANIFEST, manifest)
    keep = {MANIFEST, *manifest["features"], *(p for p in (manifest.get("catalog"), manifest.get("report")) if p)}
    keep |= {manifest["rejected"]} if manifest.get("rejected") else set()
    keep |= {name for part in manifest.get("parts", []) for name in part.values()}
    for file in folder.iterdir():  # only the store's own file names: a folder given by the user keeps its files
        if file.is_file() and file.name not in keep and any(file.match(pattern) for pattern in STORE_FILES):
            file.unlink(missing_ok=True)


def write_store(
    path: str | os.PathLike[str],
    rows: Iterable[np.ndarray],
    catalog: pd.DataFrame,
    report: pd.DataFrame,
    rejected: dict[str, str],
    meta: dict[str, Any],
    dtype: str = "float32",
) -> Path:
    """Write a finished feature set: ``rows`` yields (k, dim) chunks in catalog order (their total is
    ``len(catalog)``; chunks may be memory-mapped views, they are streamed into one shard, never all held at once).
    Returns the store folder."""
    if dtype not in DTYPES:
        raise ArtifactError(f"feature store dtype must be one of {DTYPES}, got {dtype!r}")
    folder = store_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    gen = uuid.uuid4().hex[:8]
    name = f"features-{gen}-0.npy"
    dim = int(meta["dim"])
    with atomic_output(folder / name, suffix=".tmp.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(catalog), dim))
        start = 0
        for chunk in rows:
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        if start != len(catalog):
            raise ValueError(f"{start} feature rows for {len(catalog)} catalog rows")
        out.flush()
        del out
    files = {
        "catalog": f"catalog-{gen}.parquet",
        "report": f"report-{gen}.parquet",
        "rejected": f"rejected-{gen}.json",
    }
    _write_parquet(folder / files["catalog"], catalog)
    _write_parquet(folder / files["report"], report)
    _write_json(folder / files["rejected"], rejected)
    manifest = {
        "kind": STORE_KIND,
        "version": STORE_VERSION,
        "dtype": dtype,
        "meta": {**meta, "dtype": dtype},
        "features": [name],
        **files,
        "parts": [],
    }
    _commit(folder, manifest)
    return folder


def append_part(
    path: str | os.PathLike[str],
    keys: list[str],
    features: np.ndarray,
    rejected: dict[str, str],
    meta: dict[str, Any],
) -> np.ndarray:
    """Checkpoint an unfinished extraction: add ``features`` (len(keys), dim) under ``keys`` as a new part and
    mark the store unfinished (the rows of the previous finished run stay, as cache). Returns the part memory-mapped,
    so the caller can drop its in-memory copy."""
    folder = store_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        manifest = read_manifest(folder)
    except ArtifactError:
        manifest = {"kind": STORE_KIND, "version": STORE_VERSION, "features": [], "catalog": None, "report": None}
    dtype = manifest.get("dtype", meta.get("dtype", "float32"))
    gen = uuid.uuid4().hex[:8]
    part = {"features": f"part-{gen}.npy", "keys": f"part-{gen}.keys.json"}
    _write_npy(folder / part["features"], np.asarray(features, dtype=dtype))
    _write_json(folder / part["keys"], keys)
    manifest["rejected"] = f"rejected-{gen}.json"
    _write_json(folder / manifest["rejected"], rejected)
    manifest.update(dtype=dtype, meta={**meta, "complete": False, "dtype": dtype})
    manifest["parts"] = [*manifest.get("parts", []), part]
    _commit(folder, manifest)
    return _load_npy(folder, part["features"])
