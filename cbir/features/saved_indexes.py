"""Fitted indexes kept on disk, one folder per feature set and setting, each with what it was built from.

Layout::

    <artifacts>/indexes/<feature set>/<setting>/index-<id>.joblib   the fitted index (BaseIndex.save)
    <artifacts>/indexes/<feature set>/<setting>/info.json           what it was built from; the commit point

``<feature set>`` is the feature set's path under ``<artifacts>/features`` (``openclipart-…/efficientnet_lite0-…``),
``<setting>`` the :class:`IndexConfig` without its search-time knob (:attr:`IndexConfig.fit_key`: one fitted HNSW
answers every ``ef``), e.g. ``hnsw-euclidean`` or ``lsh-euclidean-g7-h2-w3.52-seed0``. The index file is written
first under a new name, then ``info.json`` naming it (atomically), then older index files are removed: a reader sees
the previous index or the new one, never half of one.

``info.json`` records the feature set's path, its version (:class:`FeatureSetVersion`: the store's ``base`` — its
last full write — and ``generation`` — appends and removals since — and the rows it had), the build seconds, the
setting and, once growth could not follow a change, ``stale`` (the reason). A saved index is served only when its
version is the feature set's current one (:func:`load_fresh`); growth keeps it in step (:func:`follow_append`: the
new rows are added in place and the index saved again) or marks it stale (:func:`mark_stale`: a removal shifts the
row numbers an index answers with).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.core import config
from cbir.core.errors import CbirError
from cbir.core.storage import ArtifactError, atomic_write_bytes
from cbir.features.sources import FeatureSetVersion, load_features
from cbir.features.store import is_store, read_rows, read_table, store_dir
from cbir.indexes.base import BaseIndex
from cbir.indexes.registry import IndexConfig

INFO = "info.json"
INFO_KIND = "saved_index"
_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


class SavedIndexError(CbirError, ValueError):
    """A saved index cannot be built or used as asked (no such feature set, a stale index asked for by name)."""


def indexes_root() -> Path:
    return config.artifacts_dir() / "indexes"


def feature_set_name(path: str | os.PathLike[str]) -> str:
    """The feature set's folder name under ``indexes/``: its path under ``<artifacts>/features``, or (a feature set
    elsewhere) ``external-`` and a hash of its absolute path."""
    resolved = store_dir(path).resolve() if is_store(path) else Path(path).resolve()
    features_root = (config.artifacts_dir() / "features").resolve()
    if resolved.is_relative_to(features_root):
        relative = resolved.relative_to(features_root)
        return (relative.with_suffix("") if relative.suffix == ".joblib" else relative).as_posix()
    return f"external-{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"


def setting_name(config_: IndexConfig) -> str:
    """The folder name of a setting: kind, metric and the build fields of its kind (the search-time knob left out)."""
    key = config_.fit_key
    fields = [name for name in key.spec.row_fields if name != key.spec.knob]
    if key.spec.seeded:
        fields.append("seed")
    short = {"n_tables": "g", "n_projections": "h", "bucket_width": "w", "bits": "b", "n_probe": "nprobe"}
    parts = [key.kind, key.metric, *(f"{short.get(name, name)}{getattr(key, name):g}" for name in fields)]
    return _SAFE.sub("_", "-".join(parts))


def index_dir(feature_path: str | os.PathLike[str], config_: IndexConfig) -> Path:
    return indexes_root() / feature_set_name(feature_path) / setting_name(config_)


def read_info(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``info.json`` of a saved index folder; ``None`` when there is none or it is unreadable."""
    try:
        info = json.loads((Path(folder) / INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("kind") == INFO_KIND else None


def _write_info(folder: Path, info: dict[str, Any]) -> None:
    atomic_write_bytes(folder / INFO, json.dumps(info, indent=1).encode())


def _config_of(info: dict[str, Any]) -> IndexConfig:
    return IndexConfig(**info["config"])


def save_index(
    index: BaseIndex,
    feature_path: str | os.PathLike[str],
    config_: IndexConfig,
    version: FeatureSetVersion,
    build_seconds: float,
) -> Path:
    """Write ``index`` (fitted on the feature set at ``feature_path`` in ``version``) as the saved index of
    ``config_``; returns its folder."""
    folder = index_dir(feature_path, config_)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"index-{uuid.uuid4().hex[:8]}.joblib"
    index.save(folder / name)
    _write_info(
        folder,
        {
            "kind": INFO_KIND,
            "file": name,
            "feature_set": str(Path(feature_path).resolve()),
            "version": dataclasses.asdict(version),
            "config": dataclasses.asdict(config_.fit_key),
            "label": config_.fit_key.label,
            "n_objects": index.n_objects,
            "build_seconds": round(float(build_seconds), 3),
            "saved": time.time(),
            "stale": None,
        },
    )
    for old in folder.glob("index-*.joblib"):  # after the commit point: the files no info.json names
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder


def staleness(info: dict[str, Any], current: FeatureSetVersion | None) -> str | None:
    """Why the saved index of ``info`` must not answer for the feature set in version ``current`` (``None``: it is
    fresh)."""
    if info.get("stale"):
        return str(info["stale"])
    if current is None:
        return "its feature set is gone or unreadable"
    built = FeatureSetVersion(**info["version"])
    if built.base != current.base:
        return "the feature set was extracted anew since it was built"
    if built.generation != current.generation or built.n_rows != current.n_rows:
        return (
            f"built from generation {built.generation} ({built.n_rows:,} images); the feature set is at generation "
            f"{current.generation} ({current.n_rows:,} images)"
        )
    return None


def load_fresh(
    feature_path: str | os.PathLike[str], config_: IndexConfig, current: FeatureSetVersion
) -> tuple[BaseIndex | None, str | None]:
    """The saved index of ``config_`` if it matches the feature set's ``current`` version (set to ``config_``'s
    search-time knob), else ``None``; and why not (``None`` when there is no saved index, or it was loaded)."""
    folder = index_dir(feature_path, config_)
    info = read_info(folder)
    if info is None:
        return None, None
    reason = staleness(info, current)
    if reason is not None:
        return None, f"the saved index {folder.name} is stale ({reason})"
    try:
        index = type(config_.build()).load(folder / info["file"])
    except ArtifactError as exc:
        return None, f"the saved index {folder.name} is unreadable ({exc})"
    config_.tune(index)
    return index, None


def build_saved(
    feature_path: str | os.PathLike[str],
    config_: IndexConfig,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Fit ``config_``'s index on every row of the feature set at ``feature_path`` and save it (replacing the saved
    one); returns its ``info``."""
    try:
        version = FeatureSetVersion.of(feature_path)
        feature_set = load_features(feature_path)
    except (ArtifactError, OSError) as exc:
        raise SavedIndexError(f"cannot build an index of {feature_path}: {exc}") from exc
    if FeatureSetVersion.of(feature_path) != version:
        raise SavedIndexError(f"{feature_path} changed while it was read; try again")
    started = time.perf_counter()
    index = config_.fit_key.build().fit(feature_set.features, progress=progress)
    folder = save_index(index, feature_path, config_, version, time.perf_counter() - started)
    info = read_info(folder)
    assert info is not None
    return info


def saved_infos(feature_path: str | os.PathLike[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, info) of every saved index (of the feature set at ``feature_path`` only, when given)."""
    root = indexes_root() if feature_path is None else indexes_root() / feature_set_name(feature_path)
    if not root.is_dir():
        return []
    found = [(info_path.parent, read_info(info_path.parent)) for info_path in sorted(root.rglob(INFO))]
    return [(folder, info) for folder, info in found if info is not None]


def mark_stale(feature_path: str | os.PathLike[str], before: FeatureSetVersion, reason: str) -> list[Path]:
    """Mark the saved indexes of the feature set that were fresh at ``before`` stale with ``reason``; returns their
    folders."""
    marked = []
    for folder, info in saved_infos(feature_path):
        if staleness(info, before) is None:
            _write_info(folder, {**info, "stale": reason})
            marked.append(folder)
    return marked


def follow_append(
    store: str | os.PathLike[str], before: FeatureSetVersion, after: dict[str, Any]
) -> tuple[list[Path], list[Path]]:
    """Keep the saved indexes of ``store`` in step with an append of rows (``before``: the store's version before it,
    ``after``: its manifest after it): each one fresh at ``before`` gets the new rows added in place (they come last
    in the loaded feature set, as in the index) and is saved again; one that cannot be is marked stale. Returns
    (updated folders, marked folders)."""
    new = FeatureSetVersion.from_manifest(store, after)
    targets = [(folder, info) for folder, info in saved_infos(store) if staleness(info, before) is None]
    if not targets:
        return [], []
    catalog_rows = len(read_table(store, after["catalog"], [], only=["path"]))
    rows = read_rows(store, after, np.arange(catalog_rows - (new.n_rows - before.n_rows), catalog_rows))
    updated, marked = [], []
    for folder, info in targets:
        config_ = _config_of(info)
        try:
            index = type(config_.build()).load(folder / info["file"])
            started = time.perf_counter()
            index.add(rows)
            seconds = float(info.get("build_seconds", 0.0)) + time.perf_counter() - started
            save_index(index, store, config_, new, seconds)
            updated.append(folder)
        except (ArtifactError, OSError, NotImplementedError) as exc:
            _write_info(folder, {**info, "stale": f"could not add {len(rows)} images in place ({exc})"})
            marked.append(folder)
    return updated, marked


TABLE_COLUMNS = ["index", "setting", "images", "size_mb", "build_s", "modified", "fresh", "freshness"]


def saved_index_table() -> pd.DataFrame:
    """One row per saved index (:data:`TABLE_COLUMNS`): its folder under ``indexes/``, the setting, its rows, size
    (MB), build seconds, when it was saved, and whether it is fresh (else why not)."""
    rows = []
    versions: dict[str, FeatureSetVersion | None] = {}
    for folder, info in saved_infos():
        path = info["feature_set"]
        if path not in versions:
            try:
                versions[path] = FeatureSetVersion.of(path)
            except (ArtifactError, OSError, KeyError, ValueError):
                versions[path] = None
        reason = staleness(info, versions[path])
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        rows.append(
            {
                "index": folder.relative_to(indexes_root()).as_posix(),
                "setting": info.get("label", ""),
                "images": int(info.get("n_objects", 0)),
                "size_mb": size / 1e6,
                "build_s": float(info.get("build_seconds", 0.0)),
                "modified": pd.Timestamp(info.get("saved", 0), unit="s").floor("s"),
                "fresh": reason is None,
                "freshness": "fresh" if reason is None else f"stale: {reason}",
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
