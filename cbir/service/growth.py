"""Grow and shrink a collection in place: add images (with a class, or unlabelled) and remove them, without
re-extracting the rest.

:func:`add_images` checks every file first (it decodes, it is not blank, it is not an exact or near copy of an
indexed image or of another file of the batch: the rules of :mod:`cbir.data.hygiene`), computes its features once with
the feature set's own model, then copies it into the collection and appends its row to the feature store
(:func:`cbir.features.store.append_rows`: one new shard, a new catalog, the manifest last). A labelled image goes to
its class folder of the training split (``training_set/<class>/`` in the paper's layout, ``<class>/`` otherwise) and
is an indexed object; an unlabelled one goes to ``distractors/added/`` and is indexed but never relevant, like a
distractor. Anything wrong and nothing changes: the files stay staged in a hidden folder until the store has
committed, so a crash before the commit leaves the previous generation, and the collection as it was.

:func:`remove_images` tombstones the images in every feature store of the collection
(:func:`cbir.features.store.remove_rows`), then moves the files to ``<collection>/.removed/`` (a hidden folder a scan
skips); :func:`restore_images` undoes it (the files move back, the rows leave the tombstones).

Readers see a change on their next action: :class:`cbir.service.search.SearchEngine` notices the new manifest and
appends the
new rows to (or tombstones the removed ones in) the indexes it has fitted, without refitting them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cbir.core.errors import CbirError
from cbir.core.storage import ArtifactError
from cbir.data import hygiene
from cbir.data.collection import (
    CATALOG_COLUMNS,
    DISTRACTOR_NAMES,
    TRAIN_NAMES,
    VALIDATION_NAMES,
    find_split_root,
)
from cbir.data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_or_reason, load_image
from cbir.data.query import MAX_UPLOAD_BYTES
from cbir.features.saved_indexes import follow_append, mark_stale
from cbir.features.sources import FeatureSet, FeatureSetVersion, feature_source, load_features
from cbir.features.store import (
    append_rows,
    catalog_keys,
    read_manifest,
    remove_rows,
    restore_rows,
    store_dir,
    store_lock,
)

if TYPE_CHECKING:
    from cbir.features.extractor import FeatureExtractor

# a file to add: a path, or (file name, bytes) as the app's uploader gives it
Source = str | os.PathLike | tuple[str, bytes]
ADDED_DISTRACTORS = "added"  # unlabelled images go to <distractor folder>/added/
REMOVED_FOLDER = ".removed"
STAGING_PREFIX = ".adding-"
# the indexed images whose files are compared with a new one: its nearest neighbours in feature space (an exact or
# near copy, by the pixel and perceptual hashes, is among them)
DUPLICATE_NEIGHBOURS = 5
_LABEL = re.compile(r"^[\w][\w .+&()-]*$")


class GrowthError(CbirError, ValueError):
    """Images cannot be added or removed (a bad file, a copy of an indexed image, an unknown path, a legacy feature
    set); nothing was changed."""


@dataclass
class GrowthReport:
    """What :func:`add_images` / :func:`remove_images` did. ``images``: relpath, label, role, path of each image;
    ``n_images``: the live images of the feature store afterwards; ``seconds``: the whole call, ``embed_seconds``:
    decoding and the model (adds only); ``stores``: the feature stores changed; ``notes``: what else to know."""

    action: str
    images: pd.DataFrame
    n_images: int
    seconds: float
    embed_seconds: float = 0.0
    stores: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.action} {len(self.images)} image{'s' * (len(self.images) != 1)} in {self.seconds:.2f} s"
            + (f" (features {self.embed_seconds:.2f} s)" if self.embed_seconds else "")
            + f"; the feature set now holds {self.n_images:,} images"
        ]
        for row in self.images.itertuples():
            label = row.label if isinstance(row.label, str) else "(unlabelled: indexed like a distractor)"
            lines.append(f"  {row.relpath}  {label}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _store_of(path: str | os.PathLike[str]) -> Path:
    if not feature_source(path).can_grow:
        raise GrowthError(
            f"{path} is a single-file (.joblib) feature set, which cannot grow in place; convert it to a feature store "
            "with `python -m cbir extract --collection DIR` (the default output is a store; its cache reuses the "
            "joblib's features) and add to that"
        )
    folder = store_dir(path)
    manifest = read_manifest(folder)
    if not manifest["meta"].get("complete", False) or manifest.get("catalog") is None:
        raise GrowthError(f"{folder}: its extraction was interrupted; finish it with `python -m cbir extract` first")
    return folder


def cannot_grow(path: str | os.PathLike[str]) -> str | None:
    """Why images cannot be added to the feature set at ``path`` (a sentence for the user), or ``None``."""
    try:
        _store_of(path)
    except CbirError as exc:
        return str(exc)
    return None


def check_label(label: str | None, classes: Sequence[str] = ()) -> str | None:
    """``None`` (unlabelled) or a usable class name: an existing class, or a new name that is a plain folder name."""
    if label is None or label in classes:
        return label
    label = label.strip()
    if not label or not _LABEL.match(label) or label.lower() in TRAIN_NAMES | VALIDATION_NAMES | DISTRACTOR_NAMES:
        raise GrowthError(
            f"{label!r} cannot be a class name: use letters, digits, spaces and _ . + & ( ) -, not starting with a "
            "dot, and not a split or distractor folder name"
        )
    return label


def destination(root: Path, label: str | None) -> tuple[Path, str | None, str]:
    """Where an added image goes in the collection at ``root``, and its split and role."""
    if label is None:
        existing = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in DISTRACTOR_NAMES]
        return (existing[0] if existing else root / "distractors") / ADDED_DISTRACTORS, None, "distractor"
    split_root = find_split_root(root)
    if split_root is None:
        return root / label, "train", "index"
    train = next(p for p in sorted(split_root.iterdir()) if p.is_dir() and p.name.lower() in TRAIN_NAMES)
    return train / label, "train", "index"


def _read_source(source: Source) -> tuple[str, bytes]:
    if isinstance(source, tuple):
        name, data = source
        return Path(name).name or "image", bytes(data)
    path = Path(source).expanduser()
    if not path.is_file():
        raise GrowthError(f"{source}: no such file")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        return path.name, b""  # reported as too big below, without reading it
    return path.name, path.read_bytes()


def _file_name(name: str, data: bytes) -> str:
    """A safe file name with an image extension (a camera photo has none: it is named by its bytes' format)."""
    stem, suffix = os.path.splitext(Path(name).name)
    stem = re.sub(r"[^\w.+-]+", "_", stem).lstrip(".") or "image"  # no hidden file: a scan would skip it
    if suffix.lower() not in IMAGE_EXTENSIONS:
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
    return f"{stem}{suffix.lower()}"


def _free_name(folder: Path, name: str, taken: set[str]) -> Path:
    stem, suffix = os.path.splitext(name)
    candidate, i = name, 1
    while (folder / candidate).exists() or candidate in taken:
        candidate, i = f"{stem}-{i}{suffix}", i + 1
    taken.add(candidate)
    return folder / candidate


def _duplicate_reason(new: hygiene.ImageFingerprint, other: hygiene.ImageFingerprint) -> str | None:
    if new.pixel_hash == other.pixel_hash:
        return hygiene.EXACT_DUPLICATE
    distance = bin(new.phash ^ other.phash).count("1")
    if distance <= hygiene.NEAR_DUPLICATE_RADIUS:
        return f"{hygiene.NEAR_DUPLICATE} (perceptual hashes {distance} bits apart)"
    return None


def _indexed_copies(
    features: np.ndarray, fingerprints: list[hygiene.ImageFingerprint], indexed: np.ndarray, catalog: pd.DataFrame
) -> list[str | None]:
    """For each new image: ``"<reason> of <relpath>"`` when one of its nearest indexed images (in feature space) is
    an exact or near copy of it, else ``None``."""
    if len(indexed) == 0:
        return [None] * len(features)
    from cbir.indexes.scan import SequentialScan

    _, ids, _ = SequentialScan().fit(indexed).search(features, min(DUPLICATE_NEIGHBOURS, len(indexed)))
    reasons: list[str | None] = []
    for fp, row in zip(fingerprints, ids, strict=True):
        reason = None
        for i in row[row >= 0]:
            try:
                other = hygiene.fingerprint_file(catalog["path"].iloc[i])
            except (ImageDecodeError, OSError):
                continue
            found = _duplicate_reason(fp, other)
            if found is not None:
                reason = f"{found} of {catalog['relpath'].iloc[i]}, already in the collection"
                break
        reasons.append(reason)
    return reasons


def add_images(
    store_path: str | os.PathLike[str],
    files: Sequence[Source],
    label: str | None = None,
    extractor: FeatureExtractor | None = None,
    allow_duplicates: bool = False,
) -> GrowthReport:
    """Add ``files`` (paths, or ``(name, bytes)`` uploads) to the collection of the feature store ``store_path``
    with class ``label`` (``None``: unlabelled) and append their features to the store.

    ``extractor`` must be the store's model (default: rebuilt from its meta, as the Search page does). Every file is
    checked before anything is written; any unusable file, blank image or copy (exact or near, of an indexed image or
    within the batch; ``allow_duplicates`` lets copies through) raises :class:`GrowthError` naming each file and
    why, and nothing changes. Returns a :class:`GrowthReport`.
    """
    started = time.perf_counter()
    folder = _store_of(store_path)
    # the whole check and commit under the store's writer lock: two sessions adding the same image at once get one
    # copy in, the other a duplicate refusal
    with store_lock(folder):
        return _add_locked(folder, files, label, extractor, allow_duplicates, started)


def _add_locked(
    folder: Path,
    files: Sequence[Source],
    label: str | None,
    extractor: FeatureExtractor | None,
    allow_duplicates: bool,
    started: float,
) -> GrowthReport:
    feature_set = load_features(folder)
    root = Path(feature_set.meta.get("collection_root", ""))
    if not root.is_dir():
        raise GrowthError(f"the collection of {folder} is not at {root} any more")
    if not files:
        raise GrowthError("no files to add")
    label = check_label(label, sorted(feature_set.catalog["label"].dropna().unique()))
    extractor = _store_model(folder, feature_set.meta, extractor)
    sources = [_read_source(source) for source in files]
    with tempfile.TemporaryDirectory(dir=root, prefix=STAGING_PREFIX) as staging:
        staged = []
        for i, (name, data) in enumerate(sources):
            staged.append(Path(staging) / f"{i}-{_file_name(name, data)}")
            staged[-1].write_bytes(data)
        embed_started = time.perf_counter()
        features, fingerprints = _embed_checked(sources, staged, extractor)
        embed_seconds = time.perf_counter() - embed_started
        if not allow_duplicates:
            _refuse_copies(sources, features, fingerprints, feature_set)
        rows, manifest, notes = _commit_files(folder, root, label, sources, staged, features, feature_set.catalog)
    n_images = int(manifest["meta"]["n_images"])
    others = [p for p in _collection_stores(root, folder) if p != folder]
    if others:
        notes.append(
            f"{len(others)} other feature set(s) of this collection get the image(s) on their next "
            "`python -m cbir extract` (only the new images are computed)"
        )
    return GrowthReport(
        "added", rows[["relpath", "label", "role", "path"]], n_images, time.perf_counter() - started, embed_seconds,
        [str(folder)], notes,
    )  # fmt: skip


def _store_model(folder: Path, meta: dict[str, Any], extractor: FeatureExtractor | None) -> FeatureExtractor:
    """The model that computed the store (``extractor`` checked against its meta, or rebuilt from it)."""
    if extractor is None:
        from cbir.features.query_model import extractor_spec, make_extractor

        extractor = make_extractor(extractor_spec(meta), warm_up=False)
    if extractor.backbone != meta.get("backbone") or extractor.weights_id != meta.get("weights_id"):
        raise GrowthError(
            f"the model {extractor.backbone}/{extractor.weights_id} did not compute {folder} "
            f"({meta.get('backbone')}/{meta.get('weights_id')}): its features would not be comparable"
        )
    return extractor


def _embed_checked(
    sources: Sequence[tuple[str, bytes]], staged: Sequence[Path], extractor: FeatureExtractor
) -> tuple[np.ndarray, list[hygiene.ImageFingerprint]]:
    """Features (n, dim) float32 and fingerprints of the staged files; :class:`GrowthError` naming every file that
    is empty, too big, undecodable or blank (nothing is added then)."""
    problems: dict[str, str] = {}
    arrays: list[np.ndarray] = []
    fingerprints: list[hygiene.ImageFingerprint] = []
    for (name, data), path in zip(sources, staged, strict=True):
        if len(data) > MAX_UPLOAD_BYTES or not data:
            problems[name] = "empty file" if not data else f"over {MAX_UPLOAD_BYTES // 2**20} MB"
            continue
        decoded = decode_or_reason(path, extractor.prepare)
        if isinstance(decoded, str):
            problems[name] = decoded
            continue
        fp = hygiene.fingerprint(load_image(path))
        blank = fp.blank_reason()
        if blank is not None:
            problems[name] = f"{blank} image (it would answer every unlike query)"
            continue
        arrays.append(decoded)
        fingerprints.append(fp)
    if problems:
        raise GrowthError("nothing was added: " + "; ".join(f"{n}: {r}" for n, r in problems.items()))
    return extractor.predict_arrays(np.stack(arrays)), fingerprints


def _refuse_copies(
    sources: Sequence[tuple[str, bytes]],
    features: np.ndarray,
    fingerprints: Sequence[hygiene.ImageFingerprint],
    feature_set: FeatureSet,
) -> None:
    """:class:`GrowthError` when a file copies another of the batch or one of its nearest indexed images."""
    problems: dict[str, str] = {}
    for i in range(len(fingerprints)):
        for j in range(i):
            reason = _duplicate_reason(fingerprints[i], fingerprints[j])
            if reason is not None:
                problems[sources[i][0]] = f"{reason} of {sources[j][0]} (added together)"
                break
    copies = _indexed_copies(features, list(fingerprints), np.asarray(feature_set.features), feature_set.catalog)
    for (name, _), reason in zip(sources, copies, strict=True):
        if reason is not None and name not in problems:
            problems[name] = reason
    if problems:
        raise GrowthError(
            "nothing was added: "
            + "; ".join(f"{n}: {r}" for n, r in problems.items())
            + " (the collection keeps one image of each group of copies)"
        )


def _commit_files(
    folder: Path,
    root: Path,
    label: str | None,
    sources: Sequence[tuple[str, bytes]],
    staged: Sequence[Path],
    features: np.ndarray,
    catalog: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    """The files into the collection, then their rows into the store (its manifest last), then the saved indexes of
    this generation; the files are taken back out if the store fails. Returns the new catalog rows, the manifest
    and notes on the saved indexes."""
    target, split, role = destination(root, label)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    finals = [_free_name(target, _file_name(name, data), taken) for name, data in sources]
    try:
        for path, final in zip(staged, finals, strict=True):
            os.replace(path, final)
        rows = pd.DataFrame(
            [
                {
                    "path": str(final.resolve()),
                    "relpath": final.relative_to(root).as_posix(),
                    "label": label,
                    "split": split,
                    "role": role,
                    "size": int(final.stat().st_size),
                    "mtime_ns": int(final.stat().st_mtime_ns),
                }
                for final in finals
            ],
            columns=CATALOG_COLUMNS,
        )
        assert not set(catalog_keys(catalog)) & set(catalog_keys(rows)), "a new file has the key of an indexed one"
        before = FeatureSetVersion.of(folder)
        manifest = append_rows(folder, features, rows, {"computed": len(rows)}, lock=False)
    except BaseException:
        for final in finals:
            final.unlink(missing_ok=True)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    # still under the store's lock: the saved indexes of this generation get the new rows (or are marked stale)
    return rows, manifest, _saved_index_notes(*follow_append(folder, before, manifest))


def _saved_index_notes(updated: Sequence[Path], marked: Sequence[Path]) -> list[str]:
    notes = []
    if updated:
        notes.append(f"{len(updated)} saved index(es) updated in place: {', '.join(p.name for p in updated)}")
    if marked:
        notes.append(
            f"{len(marked)} saved index(es) marked stale (rebuild with `python -m cbir index build`): "
            + ", ".join(p.name for p in marked)
        )
    return notes


def _collection_stores(root: Path, beside: Path | None = None) -> list[Path]:
    """The finished feature stores of the collection at ``root``: those under the artifacts folder, and those in
    the folder of the store ``beside`` (a store made with ``extract --out``), that were extracted from ``root``."""
    from cbir.features.workspace import feature_files

    candidates = [*feature_files(root)]
    if beside is not None:
        candidates += [p for p in sorted(beside.parent.iterdir()) if (p / "meta.json").is_file()]
    stores: list[Path] = []
    for path in candidates:
        try:
            if not feature_source(path).can_grow or store_dir(path) in stores:
                continue
            meta = read_manifest(path)["meta"]
            if meta.get("complete") and Path(meta.get("collection_root", "")).resolve() == root.resolve():
                stores.append(store_dir(path))
        except (ArtifactError, OSError):
            continue
    return stores


def _resolve(root: Path, path: str | os.PathLike[str]) -> str:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and not candidate.exists():
        candidate = root / candidate
    return str(candidate.resolve())


def remove_images(store_path: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]]) -> GrowthReport:
    """Remove images (absolute paths, or paths relative to the collection) from the collection of the feature store
    ``store_path``: tombstoned in every finished feature store of the collection, then moved to
    ``<collection>/.removed/``. An image no store holds raises :class:`GrowthError` and nothing changes."""

    started = time.perf_counter()
    folder = _store_of(store_path)
    feature_set = load_features(folder)
    root = Path(feature_set.meta.get("collection_root", ""))
    if not paths:
        raise GrowthError("no images to remove")
    wanted = {_resolve(root, p): str(p) for p in paths}
    catalog = feature_set.catalog
    missing = [given for resolved, given in wanted.items() if resolved not in set(catalog["path"])]
    if missing:
        raise GrowthError(
            f"nothing was removed: not in the feature set {folder.name}: {', '.join(missing)} "
            f"(give paths inside {root}, absolute or relative to it)"
        )
    removed = catalog[catalog["path"].isin(wanted)]
    changed = []
    marked: list[Path] = []
    stores = [folder, *(p for p in _collection_stores(root, folder) if p != folder)]
    for store in stores:
        manifest = read_manifest(store)
        table = pd.read_parquet(store / manifest["catalog"], columns=["path"])
        gone = set(manifest.get("removed", []))
        rows = [i for i, p in enumerate(table["path"]) if p in wanted and i not in gone]
        if rows:
            before = FeatureSetVersion.from_manifest(store, manifest)
            manifest = remove_rows(store, rows)
            changed.append(str(store))
            # a removal shifts the row numbers an index answers with: its saved indexes cannot follow in place
            stale = mark_stale(store, before, f"{len(rows)} image(s) removed from the feature set")
            marked.extend(stale)
            if store == folder:
                n_images = int(manifest["meta"]["n_images"])
    notes = _saved_index_notes([], marked)
    for path, relpath in zip(removed["path"], removed["relpath"], strict=True):
        source = Path(path)
        if source.is_file():
            target = root / REMOVED_FOLDER / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    if len(removed):
        notes.append(
            f"the files were moved to {root / REMOVED_FOLDER}; undo with `python -m cbir restore "
            + " ".join(removed["relpath"])
            + "`"
        )
    return GrowthReport(
        "removed", removed[["relpath", "label", "role", "path"]].reset_index(drop=True), n_images,
        time.perf_counter() - started, stores=changed, notes=notes,
    )  # fmt: skip


def removed_images(store_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The removed images of the feature store ``store_path`` whose file is still in ``<collection>/.removed/`` (so
    they can be restored): relpath, label, role, path (where the file was), most recently removed last."""
    from cbir.features.store import read_table, removed_rows

    folder = _store_of(store_path)
    manifest = read_manifest(folder)
    root = Path(manifest["meta"].get("collection_root", ""))
    catalog = read_table(folder, manifest["catalog"], [])
    rows = catalog.iloc[removed_rows(manifest)]
    kept = [(root / REMOVED_FOLDER / relpath).is_file() for relpath in rows["relpath"]]
    return rows.loc[kept, ["relpath", "label", "role", "path"]].reset_index(drop=True)


def restore_images(store_path: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]]) -> GrowthReport:
    """Undo :func:`remove_images`: move the files of ``paths`` (relative to the collection, or the absolute paths
    they had) back from ``<collection>/.removed/`` and take their rows out of the tombstones of every feature store
    of the collection (their features were kept: nothing is computed). An image that was not removed, whose file is
    gone from ``.removed/`` or whose place is taken by another file raises :class:`GrowthError`; nothing changes."""
    from cbir.features.store import read_table, removed_rows

    started = time.perf_counter()
    folder = _store_of(store_path)
    manifest = read_manifest(folder)
    root = Path(manifest["meta"].get("collection_root", ""))
    if not paths:
        raise GrowthError("no images to restore")
    catalog = read_table(folder, manifest["catalog"], [])
    gone = catalog.iloc[removed_rows(manifest)]
    by_relpath = {relpath: i for i, relpath in enumerate(gone["relpath"])}
    by_path = {path: i for i, path in enumerate(gone["path"])}
    chosen: list[int] = []
    problems: list[str] = []
    for given in paths:
        i = by_relpath.get(Path(given).as_posix(), by_path.get(str(given)))
        if i is None:
            problems.append(f"{given}: not removed from the feature set {folder.name}")
            continue
        relpath, original = gone["relpath"].iloc[i], Path(gone["path"].iloc[i])
        if not (root / REMOVED_FOLDER / relpath).is_file():
            problems.append(f"{relpath}: its file is not in {root / REMOVED_FOLDER} any more")
        elif original.exists():
            problems.append(f"{relpath}: another file is at {original} now")
        else:
            chosen.append(i)
    if problems:
        raise GrowthError("nothing was restored: " + "; ".join(problems))
    restored = gone.iloc[chosen]
    wanted = set(restored["path"])
    moved: list[tuple[Path, Path]] = []
    try:
        for path, relpath in zip(restored["path"], restored["relpath"], strict=True):
            source, target = root / REMOVED_FOLDER / relpath, Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)  # keeps size and mtime: the rows' cache keys match the file again
            moved.append((target, source))
        changed = []
        n_images = len(catalog) - len(gone)
        for store in [folder, *(p for p in _collection_stores(root, folder) if p != folder)]:
            store_manifest = read_manifest(store)
            table = read_table(store, store_manifest["catalog"], [])
            tombs = set(store_manifest.get("removed", []))
            rows = [i for i, p in enumerate(table["path"]) if p in wanted and i in tombs]
            if rows:
                store_manifest = restore_rows(store, rows)
                changed.append(str(store))
                if store == folder:
                    n_images = int(store_manifest["meta"]["n_images"])
    except BaseException:
        for target, source in moved:
            if target.is_file() and not source.exists():
                os.replace(target, source)
        raise
    return GrowthReport(
        "restored", restored[["relpath", "label", "role", "path"]].reset_index(drop=True), n_images,
        time.perf_counter() - started, stores=changed,
    )  # fmt: skip
