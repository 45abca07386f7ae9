"""Extraction on Ray Data (a local Ray with 2 CPUs): the same features, bitwise, as the in-process pipeline, the same
cache keys, rejected-file report and resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cbir.cli import main as cli
from cbir.core.storage import ArtifactError
from cbir.data.cleaning import clean_collection
from cbir.data.collection import scan_collection
from cbir.features.extractor import FeatureExtractor, extract_collection
from cbir.features.sources import load_features
from tests.conftest import write_image

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # Ray starts in seconds, each actor imports TensorFlow and builds a model

BACKBONE = "efficientnet_lite0"  # random weights: the engine is under test, not the ImageNet features


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module (the engine reuses a running Ray and leaves it running)."""
    from cbir.features.ray import _start_ray

    _start_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def _collection(root: Path, per_class: int) -> Path:
    for label in ("a", "b"):
        for i in range(per_class):
            write_image(root / label / f"{i}.png", size=(50 + 3 * i, 40 + i), seed=i + (10 if label == "b" else 0))
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    return root


def test_ray_features_are_identical_to_in_process(tmp_path: Path, local_ray: None) -> None:
    root = _collection(tmp_path / "c", per_class=7)
    # what `extract --keep-all` indexes: every decodable image (the engine is under test here, not hygiene)
    catalog, _ = clean_collection(root, keep_all=True)
    extractor = FeatureExtractor(BACKBONE, weights=None, batch_size=4)
    local = extract_collection(catalog, extractor, out_path=tmp_path / "local")
    args = ["extract", "--collection", str(root), "--backbone", BACKBONE, "--weights", "none", "--batch-size", "4"]
    assert cli.main([*args, "--keep-all", "--engine", "ray", "--out", str(tmp_path / "ray")]) == 0
    on_ray = load_features(tmp_path / "ray")
    assert on_ray.meta["computed"] == local.meta["computed"] == 14 and on_ray.features.shape == (14, 1280)
    assert np.abs(np.asarray(on_ray.features) - np.asarray(local.features)).max() == 0.0  # bitwise
    assert on_ray.catalog["path"].tolist() == local.catalog["path"].tolist()
    assert sorted(on_ray.report["path"]) == sorted(local.report["path"])
    assert on_ray.report.set_index("path")["reason"].to_dict() == local.report.set_index("path")["reason"].to_dict()
    # the same cache keys: the in-process pipeline finds nothing left to compute in the store Ray wrote
    assert extract_collection(catalog, extractor, out_path=tmp_path / "ray").meta["computed"] == 0


def test_interrupted_ray_run_resumes(tmp_path: Path, local_ray: None) -> None:
    from cbir.features.ray import ray_engine

    catalog = scan_collection(_collection(tmp_path / "c", per_class=6))
    extractor = FeatureExtractor(BACKBONE, weights=None, batch_size=4)
    out = tmp_path / "store"

    def interrupt(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_collection(
            catalog, extractor, out_path=out, progress=interrupt, checkpoint_every=4, engine=ray_engine()
        )
    with pytest.raises(ArtifactError, match="interrupted"):
        load_features(out)
    resumed = extract_collection(catalog, extractor, out_path=out, engine=ray_engine())
    assert resumed.meta["computed"] == 14 - 8 and len(resumed.features) == 12
    reference = extract_collection(catalog, extractor, out_path=tmp_path / "ref.joblib")
    assert np.array_equal(resumed.features, reference.features)


def test_decoding_in_tasks_gives_the_same_features(tmp_path: Path, local_ray: None) -> None:
    """``decode="tasks"`` (Ray Data decodes, the actor only embeds: the layout for GPU actors) against the
    in-process pipeline, chunk by chunk, a short last chunk and undecodable files included."""
    from cbir.features.ray import ray_batches

    root = _collection(tmp_path / "c", per_class=5)
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    extractor = FeatureExtractor(BACKBONE, weights=None, batch_size=4)
    local = {tuple(ok): (features, bad) for ok, features, bad in extractor.iter_batches(paths)}
    on_ray = list(ray_batches(extractor, paths, decode="tasks"))
    assert len(on_ray) == len(local) == 3  # 12 files in chunks of 4
    for ok, features, bad in on_ray:
        expected, expected_bad = local[tuple(ok)]
        assert bad == expected_bad and np.array_equal(features, expected)


def test_more_actors_than_the_cpus_allow_is_refused_not_a_hang(tmp_path: Path, local_ray: None) -> None:
    """Two model actors of one CPU hold both CPUs of this Ray and leave none for the decoding tasks, or three
    actors need more CPUs than there are: a clear error, not a run that waits forever for a CPU."""
    from cbir.features.ray import RayExtractError, ray_batches

    root = _collection(tmp_path / "images", per_class=1)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    extractor = FeatureExtractor(BACKBONE, None, batch_size=4)
    with pytest.raises(RayExtractError, match="--actors 1"):
        list(ray_batches(extractor, paths, actors=2, decode="tasks"))
    with pytest.raises(RayExtractError, match="--actors 2"):
        list(ray_batches(extractor, paths, actors=3, cpus_per_actor=1))
