"""Atomic, validated artifact storage with joblib.

An artifact is written to a temporary file in the destination folder and renamed over the target, so a
reader sees either the old complete file or the new complete file, never a half-written one. Each artifact
carries a ``kind`` and a ``version`` so that a file of the wrong type or an older layout is detected and
rebuilt rather than silently used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import joblib

FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, unreadable, half-written or of another kind/version."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_path(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(tmp, final)``: write to ``tmp`` then call ``os.replace(tmp, final)``.

    For writers that need a file name (Keras ``model.save``); the temp name keeps the final suffix.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=final.suffix)
    os.close(fd)
    return Path(tmp), final


def save_artifact(path: str | os.PathLike[str], kind: str, payload: dict[str, Any]) -> Path:
    """Dump ``payload`` (a dict) with joblib under an envelope ``{kind, version, payload}``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        joblib.dump({"kind": kind, "version": FORMAT_VERSION, "payload": payload}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_artifact(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Load an artifact written by :func:`save_artifact`; raise :class:`ArtifactError` when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    try:
        envelope = joblib.load(path)
    except Exception as exc:  # joblib/pickle raise many types on truncated files
        raise ArtifactError(f"artifact {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(envelope, dict) or envelope.get("kind") != kind:
        found = envelope.get("kind") if isinstance(envelope, dict) else type(envelope).__name__
        raise ArtifactError(f"artifact {path} holds {found!r}, expected {kind!r}")
    if envelope.get("version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact {path} has format version {envelope.get('version')}, expected {FORMAT_VERSION}")
    return envelope["payload"]
