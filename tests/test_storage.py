"""Atomic writes: the final name holds the old or the new content, never half of it, and no temp file stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir.core.storage import ArtifactError, atomic_output, atomic_write_bytes, load_artifact, save_artifact


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.weights.h5"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        assert tmp.name.endswith(".weights.h5") and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.weights.h5"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_artifact_kind_is_checked(tmp_path: Path) -> None:
    path = save_artifact(tmp_path / "a.joblib", "features", {"x": 1})
    assert load_artifact(path, "features") == {"x": 1}
    with pytest.raises(ArtifactError, match="expected 'lsh_index'"):
        load_artifact(path, "lsh_index")
