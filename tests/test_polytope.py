"""CrossPolytopeIndex: the index contract, FALCONN's parameters, persistence and argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cbir.indexes.buckets
import cbir.indexes.polytope
from cbir.indexes import kernels
from cbir.indexes.pca import PCA, project
from cbir.indexes.polytope import CrossPolytopeIndex, hashes_for_bits, rotation_dim_for
from cbir.indexes.scan import SequentialScan


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((10, 24)).astype(np.float32) * 3
    points = centres[rng.integers(0, 10, 600)] + rng.standard_normal((600, 24)).astype(np.float32)
    queries = centres[rng.integers(0, 10, 40)] + rng.standard_normal((40, 24)).astype(np.float32)
    return np.ascontiguousarray(points), np.ascontiguousarray(queries)


def test_rotation_dim_and_bits_follow_falconn() -> None:
    assert [rotation_dim_for(d) for d in (1, 2, 3, 64, 65, 1280)] == [1, 2, 4, 64, 128, 2048]
    # a hash in 64 dimensions is worth 7 bits
    assert hashes_for_bits(64, 14) == (2, 64)
    assert hashes_for_bits(64, 12) == (2, 16)  # 7 bits + 5 bits from a last hash over 16 coordinates
    assert hashes_for_bits(48, 3) == (1, 4)
    assert hashes_for_bits(48, 14) == (2, 64)  # 48 coordinates are padded to 64


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_probing_every_bucket_equals_the_scan(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    points, queries = data
    # one table of one hash in 32 dimensions has 64 buckets: 63 extra probes reach all of them
    index = CrossPolytopeIndex(1, 1, metric=metric, probes=63).fit(points)
    result = index.search(queries, 7)
    exact = SequentialScan(metric).fit(points).search(queries, 7)
    np.testing.assert_array_equal(result.ids, exact.ids)
    np.testing.assert_allclose(result.distances, exact.distances, rtol=1e-5)
    assert (result.visited == len(points)).all()


@pytest.mark.parametrize("options", [{}, {"reduce_dim": 8, "rerank": 30}, {"min_collisions": 2, "n_rotations": 1}])
def test_candidates_are_the_union_of_the_probed_buckets(data: tuple[np.ndarray, np.ndarray], options: dict) -> None:
    points, queries = data
    index = CrossPolytopeIndex(4, 1, last_dim=8, probes=2, seed=3, **options).fit(points)
    probe, shortlist = index._probe_args(queries)
    _, ref_ids, ref_visited, ref_candidates = kernels.query_reference(probe, 5, kernels.METRIC_EUCLIDEAN, shortlist)
    result = index.search(queries, 5)
    np.testing.assert_array_equal(result.visited, ref_visited)
    if not options.get("rerank"):  # the shortlist's lower-bound stop keeps the answer; the reference is exact
        np.testing.assert_array_equal(result.ids, ref_ids)
    for found, expected in zip(index.candidates(queries), ref_candidates, strict=True):
        np.testing.assert_array_equal(found, expected)
    assert 0 < result.visited.mean() < len(points)


def test_more_probes_find_more_and_recall_more(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    exact = SequentialScan().fit(points).search(queries, 10).ids
    index = CrossPolytopeIndex(4, 2, last_dim=4, seed=2).fit(points)
    visited, recalls = [], []
    for probes in (0, 2, 8):
        index.probes = probes
        result = index.search(queries, 10)
        visited.append(result.visited.mean())
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.ids, exact, strict=True)]))
    assert visited == sorted(visited) and recalls == sorted(recalls) and recalls[-1] > recalls[0]


@pytest.mark.parametrize(
    "index",
    [
        CrossPolytopeIndex(3, 2, last_dim=4, probes=2),
        CrossPolytopeIndex(3, 1, metric="cosine", reduce_dim=6, rerank=20),
    ],
    ids=repr,
)
def test_save_load_gives_identical_answers(data: tuple[np.ndarray, np.ndarray], tmp_path: Path, index) -> None:
    points, queries = data
    index.fit(points)
    loaded = CrossPolytopeIndex.load(index.save(tmp_path / "cp.joblib"))
    assert loaded.params == index.params and loaded.describe() == index.describe()
    for a, b in zip(index.search(queries, 8), loaded.search(queries, 8), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fast_transforms_and_the_dense_matrix_hash_alike(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    dense = CrossPolytopeIndex(4, 1, probes=2).fit(points)
    fast = CrossPolytopeIndex(4, 1, probes=2).fit(points)
    fast._rotation = None  # force the fast transforms
    assert dense._rotation is not None
    hashed = dense._hash_space(queries)
    np.testing.assert_allclose(fast._rotated(hashed), dense._rotated(hashed), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fast.search(queries, 5).ids, dense.search(queries, 5).ids)


@pytest.mark.parametrize("score_dim", [None, 12])
def test_fit_projects_the_rows_once_and_stores_the_direct_projection(
    data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, score_dim: int | None
) -> None:
    """With reduce_dim the indexed rows are projected once at fit for hashing (and once more onto the scoring axes
    with score_dim); the float32 shortlist is that projection, equal to numpy's ``(X - mean) @ components``."""
    points, queries = data
    projected: list[int] = []

    def counting(pca: PCA, X: np.ndarray) -> np.ndarray:
        projected.append(len(X))
        return project(pca, X)

    monkeypatch.setattr(cbir.indexes.buckets, "project", counting)
    monkeypatch.setattr(cbir.indexes.polytope, "project", counting)
    index = CrossPolytopeIndex(4, 1, probes=2, seed=3, reduce_dim=8, rerank=30, score_dim=score_dim).fit(points)
    assert sum(projected) == len(points) * (1 if score_dim is None else 2)
    assert index._pca is not None
    direct = (points.astype(np.float64) - index._pca.mean) @ index._pca.components.astype(np.float64)
    np.testing.assert_allclose(index._hash_space(points), direct, rtol=1e-4, atol=1e-4)
    if score_dim is None:
        assert index._reduced is not None and index._reduced.dtype == np.float32
        np.testing.assert_allclose(index._reduced, direct, rtol=1e-4, atol=1e-4)
    # the buckets are those of the projected rows
    monkeypatch.undo()
    rotated = index._rotated(index._hash_space(points))
    codes = kernels.cross_polytope_codes(rotated, index.n_projections, index._last_dim())
    rebuilt = kernels.build_tables_reference(kernels.fold_keys(codes, index.n_tables, index.n_projections))
    for got, expected in zip(index.tables, rebuilt, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert (index.search(queries, 5).ids >= 0).all()


def test_describe_and_empty_queries(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    index = CrossPolytopeIndex(2, 1).fit(points)
    info = index.describe()
    assert info["rotation_dim"] == 32 and info["n_buckets"] <= 2 * 64
    result = index.search(np.empty((0, 24), dtype=np.float32), 3)
    assert result.ids.shape == (0, 3) and result.visited.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_tables": 0}, "n_tables must be >= 1"),
        ({"last_dim": 0}, "last_dim must be >= 1"),
        ({"probes": -1}, "probes must be >= 0"),
        ({"rerank": 5}, "rerank needs reduce_dim"),
        ({"n_rotations": 0}, "n_rotations must be >= 1"),
        ({"metric": "manhattan"}, "metric must be one of"),
    ],
)
def test_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CrossPolytopeIndex(**kwargs)
