"""What is built: the collection, its feature sets under ``artifacts/features``, the saved indexes, and how to pick
and load a feature set.

The CLI, the benchmarks and the app all find feature sets through here, so "which features does the default
collection have" has one answer. The home page shows :func:`collection_status` and runs :func:`build_default`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.core import config
from cbir.core.errors import CbirError
from cbir.core.storage import ArtifactError
from cbir.data.collection import Catalog, CollectionError, collection_id, scan_collection
from cbir.features.extractor import FeatureExtractor, extract_collection
from cbir.features.sources import FeatureSet, feature_source, load_features, read_meta
from cbir.features.store import MANIFEST

DEFAULT_BACKBONE = "efficientnet_lite0"


class WorkspaceError(CbirError, RuntimeError):
    """The workspace cannot be built as asked (Open Clip Art or model weights missing); ``str(err)`` says the fix."""


class FeatureSetNotFoundError(CbirError, FileNotFoundError):
    """No feature set matches what was asked for; ``str(err)`` gives the command that extracts one."""


def feature_files(collection: str | os.PathLike[str] | None = None) -> list[Path]:
    """Feature sets, newest first: store folders (those holding a ``meta.json``) and joblib artifacts; only those of
    ``collection`` when given."""
    root = config.artifacts_dir() / "features"
    if collection is not None:
        root = root / collection_id(collection)
    if not root.is_dir():
        return []
    files = [*root.rglob("*.joblib"), *(manifest.parent for manifest in root.rglob(MANIFEST))]
    return sorted(files, key=written, reverse=True)


def written(path: str | os.PathLike[str]) -> int:
    """When a feature set was last written in full (ns; :meth:`FeatureSource.written`): images added or removed
    in place do not count, so growing a feature set does not make it the newest; 0 when missing."""
    return feature_source(path).written()


def list_feature_sets(collection: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per feature artifact: backbone, weights, collection, images, rejected, dim, created, path, status."""
    rows = []
    for path in feature_files(collection):
        try:
            meta = read_meta(path)
            status = "complete" if meta.get("complete") else "interrupted"
        except (ArtifactError, KeyError) as exc:
            meta, status = {}, f"unusable: {exc}"
        rows.append(
            {
                "backbone": meta.get("backbone"),
                "weights": meta.get("weights_id"),
                "collection": meta.get("collection_id"),
                "images": meta.get("n_images"),
                "rejected": meta.get("n_rejected"),
                "dim": meta.get("dim"),
                "created": meta.get("created"),
                "status": status,
                "path": str(path),
            }
        )
    return pd.DataFrame(
        rows, columns=["backbone", "weights", "collection", "images", "rejected", "dim", "created", "status", "path"]
    )


def resolve_feature_set(
    features: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    collection: str | os.PathLike[str] | None = None,
    weights: str | None = None,
) -> FeatureSet:
    """Load ``features`` if given, else the newest complete feature set of ``backbone`` (any when ``None``) whose
    weights id contains ``weights`` (e.g. ``"imagenet"``, ``"model1-dense256"``; any when ``None``) for
    ``collection`` (default collection when ``None``). Raises :class:`FeatureSetNotFoundError` with the command to
    run."""
    return load_features(resolve_feature_path(features, backbone, collection, weights))


def resolve_feature_path(
    features: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    collection: str | os.PathLike[str] | None = None,
    weights: str | None = None,
) -> Path:
    """The path :func:`resolve_feature_set` loads (same arguments, same errors)."""
    if features is not None:
        return Path(features)
    collection = collection if collection is not None else config.default_collection()
    table = list_feature_sets(collection)
    table = table[table["status"] == "complete"]
    if backbone is not None:
        table = table[table["backbone"] == backbone]
    if weights is not None:
        table = table[table["weights"].str.contains(weights, regex=False)]
    if table.empty:
        wanted = " ".join(part for part in (backbone, weights and f"weights~{weights}") if part)
        raise FeatureSetNotFoundError(
            f"no feature set{' for ' + wanted if wanted else ''} of collection {collection}; run: "
            f"python -m cbir extract --collection {collection} --backbone {backbone or 'efficientnet_lite0'}"
        )
    return Path(table.iloc[0]["path"])


@dataclass
class CollectionStatus:
    """The home page's answer to "what is loaded": ``catalog`` is ``None`` when the collection is unusable."""

    root: Path
    catalog: Catalog | None
    error: str | None
    feature_sets: pd.DataFrame
    indexes: pd.DataFrame
    openclipart_installed: bool

    @property
    def ready(self) -> bool:
        """A collection and at least one complete feature set of it exist."""
        return self.catalog is not None and bool((self.feature_sets["status"] == "complete").any())

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and role (columns: index, query, distractor) plus a total column."""
        if self.catalog is None:
            return pd.DataFrame()
        counts = self.catalog.counts()
        return counts.assign(total=counts.sum(axis=1))

    def counts_long(self) -> pd.DataFrame:
        """The same counts in long form (class, role, images), for a grouped bar chart."""
        counts = self.counts().drop(columns="total", errors="ignore")
        if counts.empty:
            return pd.DataFrame(columns=["class", "role", "images"])
        return (
            counts.rename_axis(index="class", columns="role")
            .stack()
            .rename("images")
            .reset_index()
            .astype({"images": int})
        )


def list_indexes() -> pd.DataFrame:
    """Indexes saved under ``<artifacts>/indexes``: those of ``python -m cbir index build`` and the home page
    (:mod:`cbir.features.saved_indexes`: setting, images, build seconds, freshness against their feature set), and
    loose index files a benchmark saved (no build record: freshness unknown). Columns:
    :data:`cbir.features.saved_indexes.TABLE_COLUMNS`."""
    from cbir.features.saved_indexes import INFO, TABLE_COLUMNS, saved_index_table

    root = config.artifacts_dir() / "indexes"
    saved = saved_index_table()
    files = sorted(path for path in root.rglob("*.joblib") if path.is_file()) if root.is_dir() else []
    loose = [path for path in files if not (path.parent / INFO).is_file()]
    rows = [
        {
            "index": str(path.relative_to(root)),
            "setting": "",
            "images": None,
            "size_mb": path.stat().st_size / 1e6,
            "build_s": None,
            "modified": pd.Timestamp(path.stat().st_mtime, unit="s").floor("s"),
            "fresh": False,
            "freshness": "unknown (no build record)",
        }
        for path in loose
    ]
    if not rows:
        return saved
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table if saved.empty else pd.concat([saved, table], ignore_index=True)


def collection_status(root: str | os.PathLike[str] | None = None, version: int = 0) -> CollectionStatus:
    """Scan the collection (default: ``CBIR_COLLECTION`` or the Open Clip Art build) and list what is built
    (``version``: :func:`workspace_version`, only a cache key)."""

    del version
    root = Path(root) if root is not None else config.default_collection()
    catalog: Catalog | None = None
    error: str | None = None
    try:
        catalog = scan_collection(root)
    except CollectionError as exc:
        error = str(exc)
    feature_sets = list_feature_sets(root)
    if catalog is not None and not feature_sets.empty:
        # the extraction report lists the images that could not be decoded: the corrupt-image report
        catalog = Catalog(root=catalog.root, images=catalog.images, report=_extraction_report(feature_sets))
    return CollectionStatus(
        root=root,
        catalog=catalog,
        error=error,
        feature_sets=feature_sets,
        indexes=list_indexes(),
        openclipart_installed=config.openclipart_dir().is_dir(),
    )


def _extraction_report(feature_sets: pd.DataFrame) -> pd.DataFrame:
    reports = []
    for path in feature_sets.loc[feature_sets["status"] == "complete", "path"]:
        try:
            reports.append(load_features(path).report)
        except (ArtifactError, KeyError, OSError):  # already flagged in the feature-set table
            continue
    if not reports:
        return pd.DataFrame(columns=["path", "reason"])
    return pd.concat(reports, ignore_index=True).drop_duplicates("path").reset_index(drop=True)


def build_default(
    root: str | os.PathLike[str] | None = None,
    backbone: str = DEFAULT_BACKBONE,
    progress: Callable[[str, int, int], None] | None = None,
) -> FeatureSet:
    """Make the dashboard usable from nothing: build the Open Clip Art collection at ``root`` when it has no
        images yet, then extract ``backbone`` features (cached and resumable), then those of every other backbone whose
        ImageNet weights are on this machine (the ResNets once ``CBIR_WEIGHTS_DIR`` holds their files).
        ``progress(stage, done, total)`` with stage ``"collection"``, ``"hygiene"`` (duplicates and blanks are left out,
    see :func:`cbir.data.cleaning.clean_collection`) or ``"features"``. Returns the ``backbone`` feature
        set. Raises :class:`WorkspaceError` with the fix when something is missing."""
    from cbir.data.cleaning import clean_collection
    from cbir.data.openclipart import INSTALL_HINT, build_collection

    root = Path(root) if root is not None else config.default_collection()
    try:
        scan_collection(root)
    except CollectionError:
        source = config.openclipart_dir()
        if not source.is_dir():
            raise WorkspaceError(
                f"No collection at {root} and Open Clip Art is not installed ({source} is "
                f"missing). Install it with: {INSTALL_HINT}"
            ) from None
        build_collection(root, progress=None if progress is None else lambda d, t: progress("collection", d, t))
    # the Open Clip Art build is clean already (its fingerprints are cached); a user's own collection is not
    catalog, _ = clean_collection(root, progress=None if progress is None else lambda d, t: progress("hygiene", d, t))
    extractor = FeatureExtractor(backbone, "imagenet")
    try:
        extractor.weights_id  # noqa: B018 - builds the model now so that a missing weights file is reported here
    except FileNotFoundError as exc:
        raise WorkspaceError(str(exc)) from exc
    on_progress = None if progress is None else lambda d, t: progress("features", d, t)
    result = extract_collection(catalog, extractor, progress=on_progress)
    from cbir.features.backbones import available_backbones

    for name, local in available_backbones().items():
        if local and name != backbone:
            extract_collection(catalog, FeatureExtractor(name, "imagenet"), progress=on_progress)
    return result


def feature_set_label(row: Mapping[str, Any]) -> str:
    """A short name for a feature set row of :func:`list_feature_sets` (or a meta dict):
    ``"resnet50v2 · ImageNet"``, ``"resnet50v2 · fine-tuned model2-pool"``."""
    weights = str(row.get("weights") or row.get("weights_id") or "?")
    kind = weights_kind(weights)
    if kind == "fine-tuned":
        kind = f"fine-tuned {weights.rsplit('-', 1)[0]}"
    elif kind in ("random", "synthetic"):
        kind = weights
    return f"{row.get('backbone')} · {kind}"


def weights_kind(weights_id: str) -> str:
    """``"ImageNet"``, ``"random"``, ``"synthetic"`` or ``"fine-tuned"`` from a weights id: ``<file stem>-<digest>``
    (see :func:`cbir.features.backbones.weights_identity`); ImageNet ids carry the stem of a backbone's ImageNet weights
    file."""
    from cbir.features.backbones import BACKBONES

    if weights_id.startswith("random-"):
        return "random"
    if weights_id.startswith("synthetic-"):  # cbir.features.synthetic: made-up features, no model
        return "synthetic"
    imagenet_stems = {
        Path(spec.imagenet_file).stem.replace(".weights", "") for spec in BACKBONES.values() if spec.imagenet_file
    }
    if weights_id == "imagenet-download" or weights_id.rsplit("-", 1)[0] in imagenet_stems:
        return "ImageNet"
    return "fine-tuned"


def workspace_version(root: str | os.PathLike[str] | None = None) -> int:
    """Changes whenever a feature artifact of the collection is written or removed (a cache key part)."""
    files = feature_files(root if root is not None else config.default_collection())
    return hash(tuple((str(f), file_version(f)) for f in files)) & 0x7FFFFFFFFFFFFFFF


def pick_feature_set(choices: Mapping[str, str], preferred: str | None) -> tuple[str, str] | None:
    """``(label, path)`` of ``preferred`` when it is among ``choices``, else of the first (newest); ``None``
    when there is none. The pages share the selection through the session state."""
    if not choices:
        return None
    label = preferred if preferred in choices else next(iter(choices))
    return label, choices[label]


def complete_feature_sets(root: str | os.PathLike[str] | None = None, version: int = 0) -> dict[str, str]:
    """``{label: artifact path}`` of the complete feature sets of the collection, newest first (``version``:
    :func:`workspace_version`, only a cache key)."""
    del version
    table = list_feature_sets(root if root is not None else config.default_collection())
    table = table[table["status"] == "complete"]
    labels = [feature_set_label(row) for _, row in table.iterrows()]
    # the short label is enough unless two feature sets share it (e.g. extracted with two weights files)
    labels = [
        label if labels.count(label) == 1 else f"{label} [{weights}]"
        for label, weights in zip(labels, table["weights"], strict=True)
    ]
    return dict(zip(labels, table["path"].astype(str), strict=True))


def load_feature_set(
    path: str | os.PathLike[str], version: int | None = None, catalog_columns: tuple[str, ...] | None = None
) -> FeatureSet:
    """Load a feature artifact (memoised per ``(path, version, catalog_columns)``; ``version`` defaults to the file's
    mtime, so a re-extraction is picked up). The returned object is shared: do not modify it. ``catalog_columns``:
    see :func:`cbir.features.sources.load_features` (:data:`cbir.features.sources.SPLIT_COLUMNS` for an
    evaluation)."""
    return _load_feature_set(str(path), file_version(path) if version is None else version, catalog_columns)


@functools.lru_cache(maxsize=6)
def _load_feature_set(path: str, version: int, catalog_columns: tuple[str, ...] | None) -> FeatureSet:
    del version  # only part of the memo key
    return load_features(path, catalog_columns)


def base_version(path: str | os.PathLike[str]) -> int:
    """A cache key part that changes when a feature set is written anew (a full extraction) but not when images are
    added or removed in place (:mod:`cbir.service.growth`): the shared search engine follows those itself
    (a hash of :meth:`FeatureSource.base_id`)."""
    base = feature_source(path).base_id()
    return int.from_bytes(hashlib.sha1(base.encode()).digest()[:7], "big") if base else 0


def file_version(path: str | os.PathLike[str]) -> int:
    """A cache key part that changes with every committed change of the feature set at ``path``
    (:meth:`FeatureSource.commit_stamp`: the mtime of a store's manifest, its commit point), 0 when missing."""
    return feature_source(path).commit_stamp()


def with_versions(choices: Mapping[str, str], labels: Sequence[str] | None = None) -> tuple[tuple[str, str, int], ...]:
    """``(label, path, file version)`` of the feature sets ``choices`` (``{label: path}``) named by ``labels``
    (default: every one, in order): hashable, so a cache key (the comparison page's, and what the setup computes
    ahead for it)."""
    chosen = list(choices) if labels is None else labels  # an empty selection names none, not every one
    return tuple((label, choices[label], file_version(choices[label])) for label in chosen)
