"""Reading a feature set, whatever holds it: one interface (:class:`FeatureSource`), two backends.

A feature set is either a folder store (:mod:`cbir.features.store`: memory-mapped ``.npy`` shards, a parquet
catalog, a JSON manifest written last, able to grow in place) or a single joblib artifact (the earlier format, read
into memory, read-only). :func:`feature_source` chooses the backend once, from the path; everything else asks the
source: its metadata, its rows (:meth:`FeatureSource.load`), its per-image cache (what extraction reuses) and its
:class:`FeatureSetVersion`, the one notion of "which state" that the app's caches, the search engine and the
saved indexes key on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.core.storage import ArtifactError, load_artifact
from cbir.features.store import (
    MANIFEST,
    cached_rows,
    is_store,
    open_features,
    read_manifest,
    read_rejected,
    read_table,
    removed_rows,
    store_dir,
)

FEATURES_KIND = "features"
# the catalog columns an evaluation reads (FeatureSet.labels and .roles): load_features(path, SPLIT_COLUMNS)
SPLIT_COLUMNS = ("label", "role")


@dataclass
class FeatureSet:
    """Features aligned with a catalog.

    ``features``: (n, dim) float32 (float16 from a float16 store), row i is the image ``catalog.iloc[i]``; loaded
    from a store it is a read-only ``np.memmap`` (do not modify it; ``np.array(x, np.float32)`` for a copy).
    ``catalog``: columns path, relpath, label, split, role, size, mtime_ns. ``report``: rejected files (path,
    reason). ``meta``: backbone, weights_id, collection root/id, n_images, created (ISO date), computed (images
    computed by the last run), dtype (stores).
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


@dataclass(frozen=True)
class FeatureSetVersion:
    """Which state of a feature set: equal versions mean the same rows in the same order (what a saved index was
    built from, :mod:`cbir.features.saved_indexes`). ``base``: the last full write (a store's first shard or
    ``base`` id; a joblib artifact, which is only ever rewritten whole: its mtime); ``generation``: appends and
    removals since (:mod:`cbir.service.growth`); ``n_rows``: live rows (what :meth:`FeatureSource.load` returns).

    Cheaper stamps of the same feature set, for caches that poll: :meth:`FeatureSource.commit_stamp` (one ``stat``:
    changes with every commit) and :meth:`FeatureSource.base_id` (the manifest only: changes with a full write)."""

    base: str
    generation: int
    n_rows: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FeatureSetVersion:
        """The current version of the feature set at ``path``; :class:`ArtifactError` when unreadable."""
        return feature_source(path).version()

    @classmethod
    def from_manifest(cls, path: str | os.PathLike[str], manifest: dict[str, Any]) -> FeatureSetVersion:
        """The version of the store at ``path`` as ``manifest`` (read or about to be committed) describes it (its live
        rows: the meta's ``n_images``, which every commit writes, else counted from the catalog)."""
        n_rows = manifest.get("meta", {}).get("n_images")
        if n_rows is None:
            catalog_rows = (
                len(read_table(path, manifest["catalog"], [], only=["path"])) if manifest.get("catalog") else 0
            )
            n_rows = catalog_rows - len(removed_rows(manifest))
        return cls(_base_of(manifest), int(manifest.get("generation", 0)), int(n_rows))


def _base_of(manifest: dict[str, Any]) -> str:
    # the id of the last full write: growth appends shards after it and never rewrites the first
    return str(manifest.get("base") or (manifest.get("features") or [""])[0])


Cache = tuple[dict[str, np.ndarray], dict[str, str]]  # cache key → feature row, cache key → rejection reason


class FeatureSource:
    """A feature set on disk. Subclasses: :class:`StoreSource`, :class:`JoblibSource`."""

    can_grow = False  # whether images can be added and removed in place

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read_meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, catalog_columns: Sequence[str] | None = None) -> FeatureSet:
        raise NotImplementedError

    def version(self) -> FeatureSetVersion:
        """The feature set's :class:`FeatureSetVersion`; :class:`ArtifactError` when unreadable."""
        raise NotImplementedError

    def base_id(self) -> str:
        """The id of the last full write (``FeatureSetVersion.base``), cheaply; "" when unreadable."""
        raise NotImplementedError

    def commit_stamp(self) -> int:
        """Changes with every committed change (ns: the mtime of the commit point, one ``stat``); 0 when missing."""
        raise NotImplementedError

    def written(self) -> int:
        """When the feature set was last written in full (ns); growing it in place does not count; 0 when missing."""
        raise NotImplementedError

    def read_cache(self, backbone: str, weights_id: str, dim: int) -> Cache:
        """The per-image cache, when it was made by this model; :class:`ArtifactError` otherwise."""
        raise NotImplementedError

    def _interrupted(self) -> ArtifactError:
        return ArtifactError(f"{self.path}: extraction was interrupted; rerun `python -m cbir extract` to finish it")

    def _check_rows(self, features: np.ndarray, catalog: pd.DataFrame) -> None:
        if features.ndim != 2 or len(features) != len(catalog):
            raise ArtifactError(f"{self.path}: {len(features)} feature rows for {len(catalog)} catalog rows")

    @staticmethod
    def _check_model(meta: dict[str, Any], backbone: str, weights_id: str) -> None:
        if meta.get("backbone") != backbone or meta.get("weights_id") != weights_id:
            raise ArtifactError(f"made by {meta.get('backbone')}/{meta.get('weights_id')}")


class StoreSource(FeatureSource):
    """A folder store: the features memory-mapped read-only, rows removed in place left out."""

    can_grow = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(store_dir(path))

    def read_meta(self) -> dict[str, Any]:
        return dict(read_manifest(self.path)["meta"])  # the manifest only: cheap at any size

    def load(self, catalog_columns: Sequence[str] | None = None) -> FeatureSet:
        manifest = read_manifest(self.path)
        meta = dict(manifest["meta"])
        if not meta.get("complete", False) or manifest.get("catalog") is None:
            raise self._interrupted()
        catalog = read_table(self.path, manifest["catalog"], [], only=catalog_columns)
        report = read_table(self.path, manifest["report"], ["path", "reason"])
        features = open_features(self.path, manifest)
        self._check_rows(features, catalog)
        removed = removed_rows(manifest)
        if len(removed):  # rows removed since the last full write (cbir.service.growth): left out, the rest in order
            keep = np.setdiff1d(np.arange(len(catalog)), removed)
            features, catalog = features[keep], catalog.iloc[keep].reset_index(drop=True)
        return FeatureSet(features=features, catalog=catalog, report=report, meta=meta)

    def version(self) -> FeatureSetVersion:
        return FeatureSetVersion.from_manifest(self.path, read_manifest(self.path))

    def base_id(self) -> str:
        try:
            return _base_of(read_manifest(self.path))
        except ArtifactError:
            return ""

    def commit_stamp(self) -> int:
        try:
            return (self.path / MANIFEST).stat().st_mtime_ns
        except OSError:
            return 0

    def written(self) -> int:
        try:
            shards = read_manifest(self.path).get("features") or [MANIFEST]
            return (self.path / shards[0]).stat().st_mtime_ns
        except (OSError, ArtifactError):
            return 0

    def read_cache(self, backbone: str, weights_id: str, dim: int) -> Cache:
        manifest = read_manifest(self.path)
        self._check_model(manifest["meta"], backbone, weights_id)
        if manifest["meta"].get("dim") != dim:
            raise ArtifactError(f"features of dimension {manifest['meta'].get('dim')}, not {dim}")
        return cached_rows(self.path, manifest), read_rejected(self.path, manifest)


# The live rows of each joblib artifact read in this process: path → (the file's stamp when read, its rows). An
# artifact is only ever replaced whole (cbir.core.storage: a new file renamed over the old one), so an unchanged
# stamp (mtime, size, inode) means the same rows, and FeatureSetVersion need not load the file again to count them.
_JOBLIB_ROWS: dict[Path, tuple[tuple[int, int, int], int]] = {}


class JoblibSource(FeatureSource):
    """A single joblib artifact (the earlier format): read into memory; it cannot grow in place."""

    def _payload(self) -> dict[str, Any]:
        return load_artifact(self.path, FEATURES_KIND)

    def _stamp(self) -> tuple[int, int, int]:
        """(mtime ns, size, inode) of the file: changes whenever it is rewritten; ``OSError`` when missing."""
        stat = self.path.stat()
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def read_meta(self) -> dict[str, Any]:
        return dict(self._payload()["meta"])

    def load(self, catalog_columns: Sequence[str] | None = None) -> FeatureSet:
        try:  # before reading: a rewrite during the read gets a stamp of its own
            stamp: tuple[int, int, int] | None = self._stamp()
        except OSError:
            stamp = None  # _payload says what is wrong
        payload = self._payload()
        try:
            features = np.asarray(payload["features"], dtype=np.float32)
            catalog = payload["catalog"]
            if not payload["meta"].get("complete", False):
                raise self._interrupted()
            self._check_rows(features, catalog)
            feature_set = FeatureSet(features=features, catalog=catalog, report=payload["report"], meta=payload["meta"])
        except KeyError as exc:
            raise ArtifactError(f"{self.path}: missing field {exc}") from exc
        if stamp is not None:
            _JOBLIB_ROWS[self.path.absolute()] = stamp, len(features)
        return feature_set

    def version(self) -> FeatureSetVersion:
        """Its mtime as ``base`` and its rows, counted once per state of the file: an untouched file is not read
        again (one ``stat``); a rewritten one is loaded."""
        stamp = self._stamp()
        known = _JOBLIB_ROWS.get(self.path.absolute())
        if known is None or known[0] != stamp:
            self.load()  # remembers the rows of the state it read
            known = _JOBLIB_ROWS[self.path.absolute()]
        (mtime_ns, _, _), n_rows = known
        return FeatureSetVersion(str(mtime_ns), 0, n_rows)

    def base_id(self) -> str:
        return str(self.commit_stamp())  # rewritten whole on every change

    def commit_stamp(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return 0

    def written(self) -> int:
        return self.commit_stamp()

    def read_cache(self, backbone: str, weights_id: str, dim: int) -> Cache:
        payload = self._payload()
        self._check_model(payload["meta"], backbone, weights_id)
        try:
            cached = np.asarray(payload["cache_features"], dtype=np.float32)
            keys = list(payload["cache_keys"])
            if cached.ndim != 2 or cached.shape != (len(keys), dim):
                raise ArtifactError(f"cache shape {cached.shape} does not match {len(keys)} keys × {dim}")
            return dict(zip(keys, cached, strict=True)), dict(payload["cache_rejected"])
        except KeyError as exc:
            raise ArtifactError(f"{self.path}: missing field {exc}") from exc


def feature_source(path: str | os.PathLike[str]) -> FeatureSource:
    """The backend of the feature set at ``path``: a store folder (or its ``meta.json``), else a joblib artifact."""
    return StoreSource(path) if is_store(path) else JoblibSource(path)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a feature set (a store's manifest only, cheap at any size; a joblib artifact is loaded)."""
    return feature_source(path).read_meta()


def load_features(path: str | os.PathLike[str], catalog_columns: Sequence[str] | None = None) -> FeatureSet:
    """Load a feature set written by :func:`cbir.features.extractor.extract_collection`: a store folder (its
    features memory-mapped, read-only) or a joblib artifact (read into memory). Raises ``ArtifactError`` when
    unusable.

    ``catalog_columns``: a store's catalog is read with only these columns (e.g. :data:`SPLIT_COLUMNS`, what an
    evaluation needs: a 1M-row catalog then loads in a tenth of the time); a joblib artifact keeps its whole catalog.
    """
    return feature_source(path).load(catalog_columns)
