"""A feature set on disk: ``.npy`` shards opened as memory maps, a parquet catalog and a JSON manifest.

A store is a folder::

    <store>/meta.json                    the manifest: kind, version, meta and the files of the current generation
    <store>/features-<gen>-<i>.npy       (rows, dim) float32 or float16, row j of shard i is a catalog row
    <store>/catalog-<gen>.parquet        one row per feature row (path, relpath, label, split, role, size, mtime_ns)
    <store>/report-<gen>.parquet         rejected files (path, reason)
    <store>/rejected-<gen>.json          cache key → reason of every rejected file
    <store>/part-<gen>-<i>.npy/.keys.json  rows computed by an unfinished extraction (checkpoints) and their keys

A finished store grows and shrinks in place (:func:`append_rows`, :func:`remove_rows`, used by
:mod:`cbir.service.growth`): an append writes one more shard with the new rows only and a new catalog generation; a
removal
lists the catalog rows in the manifest's ``removed`` (tombstones: the rows stay on disk, :func:`cbir.features.extractor.
load_features` leaves them out, the next full extraction drops them). ``base`` names the full write the store comes
from and ``generation`` counts the appends and removals since, so a reader holding the store (the app's shared
search engine) can tell that only rows were added or removed. Writers of one store take its lock (``.lock``,
``flock``), so the app and the command line never lose each other's change.

Every file is written under a temporary name and renamed; ``meta.json`` is replaced last, so it is the commit point:
a reader sees the previous generation or the new one, never a mix. Files no manifest names are removed after a
commit. Opening a store maps the shards (``np.load(mmap_mode="r")``): nothing is read until it is used, so a
1M × 1280 float16 store opens in about a second, and the features exist once, in the page cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.core.storage import ArtifactError, atomic_output, atomic_write_bytes


def cache_key(path: str, size: int, mtime_ns: int) -> str:
    """A row's key: the same file (path, size, mtime) has the same features."""
    return f"{path}|{size}|{mtime_ns}"


def catalog_keys(images: pd.DataFrame) -> list[str]:
    """The cache key of every catalog row, in row order."""
    return [cache_key(p, s, m) for p, s, m in zip(images["path"], images["size"], images["mtime_ns"], strict=True)]


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


def read_table(
    path: str | os.PathLike[str], name: str | None, columns: list[str], only: Sequence[str] | None = None
) -> pd.DataFrame:
    """A parquet table of the store (an empty frame with ``columns`` when ``name`` is ``None``); with ``only``, just
    those of its columns (a tenth of the time for the label and role of a 1M-row catalog)."""
    if name is None:
        return pd.DataFrame(columns=columns if only is None else list(only))
    try:
        return pd.read_parquet(store_dir(path) / name, columns=None if only is None else list(only))
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

    folder = store_dir(path)
    rows: dict[str, np.ndarray] = {}
    if manifest.get("catalog") is not None:
        catalog = read_table(folder, manifest["catalog"], [])
        features = open_features(folder, manifest)
        if len(features) != len(catalog):
            raise ArtifactError(f"feature store {folder}: {len(features)} rows for {len(catalog)} catalog rows")
        gone = set(manifest.get("removed", []))
        rows.update((key, row) for i, (key, row) in enumerate(zip(catalog_keys(catalog), features, strict=True))
                    if i not in gone)  # fmt: skip
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
        "base": gen,
        "generation": 0,
        "removed": [],
    }
    _commit(folder, manifest)
    return folder


@contextlib.contextmanager
def store_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the store's writer lock (an exclusive ``flock`` on ``<store>/.lock``; readers never take it)."""
    folder = store_dir(path)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def removed_rows(manifest: dict[str, Any]) -> np.ndarray:
    """The catalog rows the manifest marks removed, ascending int64."""
    return np.asarray(sorted(manifest.get("removed", [])), dtype=np.int64)


def read_rows(path: str | os.PathLike[str], manifest: dict[str, Any], rows: np.ndarray) -> np.ndarray:
    """Feature rows ``rows`` (catalog row numbers) read from the shards that hold them (only those pages are read)."""
    folder = store_dir(path)
    rows = np.asarray(rows, dtype=np.int64)
    shards = [_load_npy(folder, name) for name in manifest["features"]]
    starts = np.cumsum([0] + [len(shard) for shard in shards])
    out = np.empty((len(rows), int(manifest["meta"]["dim"])), dtype=manifest.get("dtype", "float32"))
    for i, shard in enumerate(shards):
        inside = (rows >= starts[i]) & (rows < starts[i + 1])
        if inside.any():
            out[inside] = shard[rows[inside] - starts[i]]
    return out


def _finished_manifest(folder: Path) -> dict[str, Any]:
    manifest = read_manifest(folder)
    if not manifest["meta"].get("complete", False) or manifest.get("catalog") is None:
        raise ArtifactError(f"{folder}: extraction was interrupted; rerun `python -m cbir extract` to finish it")
    return manifest


def append_rows(
    path: str | os.PathLike[str],
    features: np.ndarray,
    rows: pd.DataFrame,
    meta: dict[str, Any] | None = None,
    lock: bool = True,
) -> dict[str, Any]:
    """Append ``features`` (m, dim) and their catalog ``rows`` to a finished store: one new shard with those rows
    only, the catalog with the rows appended, then the manifest (the commit point; ``meta`` entries are merged
    into its meta). Until the manifest is replaced readers see the previous generation. Returns the new manifest.
    ``lock=False``: the caller holds :func:`store_lock` already (it checked the rows against the store under it)."""
    folder = store_dir(path)
    with store_lock(folder) if lock else contextlib.nullcontext():
        manifest = _finished_manifest(folder)
        dim = int(manifest["meta"]["dim"])
        features = np.asarray(features, dtype=manifest.get("dtype", "float32"))
        if features.ndim != 2 or features.shape[1] != dim or len(features) != len(rows):
            raise ArtifactError(f"{folder}: cannot append {features.shape} features for {len(rows)} rows to dim {dim}")
        catalog = read_table(folder, manifest["catalog"], [])
        gen = uuid.uuid4().hex[:8]
        shard = f"features-{gen}-{len(manifest['features'])}.npy"
        _write_npy(folder / shard, features)
        name = f"catalog-{gen}.parquet"
        _write_parquet(folder / name, pd.concat([catalog, rows.reindex(columns=catalog.columns)], ignore_index=True))
        n_live = len(catalog) + len(rows) - len(manifest.get("removed", []))
        manifest = {
            **manifest,
            "meta": {**manifest["meta"], **(meta or {}), "n_images": n_live},
            "features": [*manifest["features"], shard],
            "catalog": name,
            "generation": int(manifest.get("generation", 0)) + 1,
        }
        _commit(folder, manifest)
        return manifest


def remove_rows(path: str | os.PathLike[str], rows: Iterable[int], meta: dict[str, Any] | None = None) -> dict:
    """Mark catalog rows removed (tombstones in the manifest, the commit point); the shards are not rewritten.
    Returns the new manifest."""
    folder = store_dir(path)
    with store_lock(folder):
        manifest = _finished_manifest(folder)
        catalog_rows = len(read_table(folder, manifest["catalog"], []))
        removed = sorted({*manifest.get("removed", []), *(int(r) for r in rows)})
        if removed and (removed[0] < 0 or removed[-1] >= catalog_rows):
            raise ArtifactError(f"{folder}: rows to remove must be in [0, {catalog_rows})")
        manifest = {
            **manifest,
            "meta": {**manifest["meta"], **(meta or {}), "n_images": catalog_rows - len(removed)},
            "removed": removed,
            "generation": int(manifest.get("generation", 0)) + 1,
        }
        _commit(folder, manifest)
        return manifest


def restore_rows(path: str | os.PathLike[str], rows: Iterable[int]) -> dict:
    """Take catalog rows out of the manifest's tombstones (undo :func:`remove_rows`): their features are still in
    the shards. Returns the new manifest; a row that is not removed raises :class:`ArtifactError`."""
    folder = store_dir(path)
    with store_lock(folder):
        manifest = _finished_manifest(folder)
        catalog_rows = len(read_table(folder, manifest["catalog"], []))
        wanted = {int(r) for r in rows}
        removed = set(manifest.get("removed", []))
        if not wanted <= removed:
            raise ArtifactError(f"{folder}: rows {sorted(wanted - removed)} are not removed")
        left = sorted(removed - wanted)
        manifest = {
            **manifest,
            "meta": {**manifest["meta"], "n_images": catalog_rows - len(left)},
            "removed": left,
            "generation": int(manifest.get("generation", 0)) + 1,
        }
        _commit(folder, manifest)
        return manifest


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
