"""Atomic, validated artifact storage with joblib.

An artifact is written to a temporary file in the destination folder and renamed over the target, so a
reader sees either the old complete file or the new complete file, never a half-written one. Each artifact
carries a ``kind`` and a ``version`` so that a file of the wrong type or an older layout is detected and
rebuilt rather than silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import joblib

from cbir.core.errors import CbirError

FORMAT_VERSION = 1


class ArtifactError(CbirError, RuntimeError):
    """An artifact is missing, unreadable, half-written or of another kind/version."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp file name beside ``path``; when the block ends normally it is renamed onto ``path``
    (``os.replace``: readers see the old or the new file, never half of one), otherwise it is deleted.

    ``suffix`` ends the temp name; by default the final name's suffixes, because some writers pick the format by
    the name (Keras wants ``.keras`` or ``.weights.h5``, numpy ``.npy``, Pillow ``.jpg``).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    ending = "".join(final.suffixes) if suffix is None else suffix
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=ending)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    # ".tmp": a half-written file never matches the globs that list artifacts (``*.joblib``, ``*.json``)
    with atomic_output(path, suffix=".tmp") as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def save_artifact(path: str | os.PathLike[str], kind: str, payload: dict[str, Any]) -> Path:
    """Dump ``payload`` (a dict) with joblib under an envelope ``{kind, version, payload}``, atomically."""
    with atomic_output(path, suffix=".tmp") as tmp:
        joblib.dump({"kind": kind, "version": FORMAT_VERSION, "payload": payload}, tmp)
    return Path(path)


def load_artifact(path: str | os.PathLike[str], kind: str, mmap: bool = False) -> dict[str, Any]:
    """Load an artifact written by :func:`save_artifact`; raise :class:`ArtifactError` when it is unusable.

    With ``mmap`` (saved indexes), its numpy arrays are mapped from the file copy-on-write (``mmap_mode="c"``: read
    from the page cache as they are touched, a write changes this process' copy only), not read into new memory: a
    saved FAISS HNSW of 1M × 256 (2.3 GB) loads in 8-9 s instead of 15-16 s (benchmarks/saved_load.py, load average
    7-10). Files are only ever replaced by a rename (:func:`atomic_output`), so a mapping always sees the complete
    file it opened. Not by default: small artifacts (tables, caches) gain nothing and would hold memmaps."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    try:
        envelope = joblib.load(path, mmap_mode="c" if mmap else None)
    except Exception as exc:  # joblib/pickle raise many types on truncated files
        raise ArtifactError(f"artifact {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(envelope, dict) or envelope.get("kind") != kind:
        found = envelope.get("kind") if isinstance(envelope, dict) else type(envelope).__name__
        raise ArtifactError(f"artifact {path} holds {found!r}, expected {kind!r}")
    if envelope.get("version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact {path} has format version {envelope.get('version')}, expected {FORMAT_VERSION}")
    return envelope["payload"]


T = TypeVar("T")
CACHE_KIND = "cbir_cache"


def kept_on_disk(folder: str | os.PathLike[str], key: str, compute: Callable[[], T]) -> T:
    """``compute()``, kept in ``folder`` under a digest of ``key`` (which must name everything the result depends
    on: the data's version, the settings) and read back by any later call, in this process or another, instead of
    computed again. Written atomically (:func:`save_artifact`); an unreadable file is computed again."""
    file = _kept_file(folder, key)
    envelope = _read_kept(file, key)
    if envelope is not None:
        return envelope["value"]  # type: ignore[no-any-return]
    value = compute()
    file.parent.mkdir(parents=True, exist_ok=True)
    save_artifact(file, CACHE_KIND, {"key": key, "value": value})
    return value


def read_kept(folder: str | os.PathLike[str], key: str) -> Any | None:
    """What :func:`kept_on_disk` keeps in ``folder`` under ``key``, or ``None`` when nothing (readable) is kept
    there: nothing is computed (a page can skip what it would load only to compute it)."""
    envelope = _read_kept(_kept_file(folder, key), key)
    return None if envelope is None else envelope["value"]


def _kept_file(folder: str | os.PathLike[str], key: str) -> Path:
    return Path(folder) / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.joblib"


def _read_kept(file: Path, key: str) -> dict[str, Any] | None:
    """The envelope kept in ``file`` for ``key``; ``None``: no file, another key's, or unreadable."""
    if not file.is_file():
        return None
    try:
        envelope = load_artifact(file, CACHE_KIND)
    except ArtifactError:
        return None
    return envelope if envelope.get("key") == key else None
