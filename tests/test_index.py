"""SequentialScan and LSHIndex: the search contract, LSH semantics, persistence and argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.core.storage import ArtifactError, save_artifact
from cbir.indexes import kernels
from cbir.indexes.base import BaseIndex, SearchResult, l2_normalize
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.pca import code_units, encode, fit_codebook, fit_pca, project
from cbir.indexes.polytope import CrossPolytopeIndex
from cbir.indexes.scan import CandidateRanking, SequentialScan
from cbir.indexes.widths import default_width


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((500, 32)).astype(np.float32), rng.standard_normal((30, 32)).astype(np.float32)


def brute_force(points: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "euclidean":
        dist = np.sqrt(((queries[:, None, :].astype(np.float64) - points[None]) ** 2).sum(-1))
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), order
    sims = l2_normalize(queries).astype(np.float64) @ l2_normalize(points).astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_scan_is_exact(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    points, queries = data
    scores, ids, visited = SequentialScan(metric).fit(points).search(queries, 7)
    expected_scores, expected_ids = brute_force(points, queries, 7, metric)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and visited.dtype == np.int64
    np.testing.assert_array_equal(visited, np.full(len(queries), len(points)))
    direction = 1 if metric == "euclidean" else -1
    assert np.all(np.diff(scores, axis=1) * direction >= 0)


def test_scan_pads_when_k_exceeds_the_collection(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    for metric, fill in (("euclidean", np.inf), ("cosine", -np.inf)):
        scores, ids, _ = SequentialScan(metric).fit(points[:4]).search(queries[:2], 6)
        assert np.all(ids[:, 4:] == -1) and np.all(scores[:, 4:] == fill)
        assert sorted(ids[0, :4]) == [0, 1, 2, 3]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_lsh_with_infinite_bucket_width_equals_the_scan(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    points, queries = data
    exact = SequentialScan(metric).fit(points).search(queries, 10)
    lsh = LSHIndex(n_tables=3, n_projections=4, bucket_width=1e9, metric=metric).fit(points).search(queries, 10)
    np.testing.assert_array_equal(lsh[1], exact[1])
    np.testing.assert_array_equal(lsh[0], exact[0])  # same exact kernel: bit-identical scores
    np.testing.assert_array_equal(lsh[2], np.full(len(queries), len(points)))


@pytest.mark.parametrize("probes", [0, 2])
def test_candidates_are_the_union_of_the_query_buckets(data: tuple[np.ndarray, np.ndarray], probes: int) -> None:
    points, queries = data
    index = LSHIndex(n_tables=4, n_projections=3, bucket_width=3.0, seed=5, probes=probes).fit(points)
    point_codes = index.hash_codes(points)  # (n, g, h)
    query_codes = index.hash_codes(queries)
    candidates = index.candidates(queries)
    _, _, visited = index.search(queries, 5)
    for i in range(len(queries)):
        if probes == 0:
            expected = {
                obj
                for table in range(index.n_tables)
                for obj in range(len(points))
                if tuple(point_codes[obj, table]) == tuple(query_codes[i, table])
            }
            assert set(candidates[i].tolist()) == expected
        assert len(candidates[i]) == len(set(candidates[i].tolist())) == visited[i]
    if probes:
        plain = LSHIndex(n_tables=4, n_projections=3, bucket_width=3.0, seed=5).fit(points).candidates(queries)
        assert all(set(p.tolist()) <= set(c.tolist()) for p, c in zip(plain, candidates, strict=True))
        assert sum(map(len, candidates)) > sum(map(len, plain))


def test_lsh_results_are_the_exact_top_k_of_the_candidates(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    index = LSHIndex(n_tables=6, n_projections=2, bucket_width=4.0, seed=1).fit(points)
    scores, ids, _ = index.search(queries, 5)
    for i, candidates in enumerate(index.candidates(queries)):
        dist = np.linalg.norm(points[candidates] - queries[i], axis=1)
        best = candidates[np.argsort(dist, kind="stable")[:5]]
        np.testing.assert_array_equal(ids[i, : len(best)], best)
        np.testing.assert_allclose(scores[i, : len(best)], np.sort(dist)[:5], rtol=1e-5)


def test_fewer_candidates_than_k_is_padded_not_an_error(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    for metric, fill in (("euclidean", np.inf), ("cosine", -np.inf)):
        width = 0.5 if metric == "euclidean" else 0.02
        index = LSHIndex(n_tables=2, n_projections=8, bucket_width=width, metric=metric).fit(points)
        scores, ids, visited = index.search(queries, 10)
        assert np.all(visited < 10)
        for i in range(len(queries)):
            assert np.all(ids[i, visited[i] :] == -1) and np.all(scores[i, visited[i] :] == fill)
            assert np.all(ids[i, : visited[i]] >= 0)
    # a query equal to an indexed point always finds itself first
    _, ids, _ = LSHIndex(n_tables=2, n_projections=8, bucket_width=0.5).fit(points).search(points[:5], 3)
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))


def test_same_seed_same_index_different_seed_different_buckets(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    first = LSHIndex(4, 3, 3.0, seed=11).fit(points)
    again = LSHIndex(4, 3, 3.0, seed=11).fit(points)
    other = LSHIndex(4, 3, 3.0, seed=12).fit(points)
    for a, b in zip(first.search(queries, 5), again.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.tables.bucket_keys, other.tables.bucket_keys)


def test_refit_replaces_content(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    index = LSHIndex(2, 2, 1e9).fit(points)
    index.fit(points[:50])
    assert index.n_objects == 50
    _, ids, visited = index.search(queries, 3)
    assert ids.max() < 50 and np.all(visited == 50)


def test_empty_query_batch(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    for index in (SequentialScan().fit(points), LSHIndex().fit(points)):
        scores, ids, visited = index.search(np.empty((0, 32), dtype=np.float32), 4)
        assert scores.shape == (0, 4) and ids.shape == (0, 4) and visited.shape == (0,)


@pytest.mark.parametrize(
    "index",
    [
        SequentialScan("cosine"),
        LSHIndex(5, 3, 2.0, metric="euclidean", seed=4, probes=2),
        LSHIndex(5, 3, 2.0, metric="cosine", seed=4, reduce_dim=6, rerank=15, target_recall=0.5),
        LSHIndex(5, 3, 2.0, seed=4, reduce_dim=6, rerank=10, score_dim=12),
    ],
    ids=repr,
)
def test_save_load_gives_identical_answers(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path, index: BaseIndex
) -> None:
    points, queries = data
    index.fit(points)
    path = index.save(tmp_path / "index.joblib")
    loaded = type(index).load(path)
    assert loaded.params == index.params and loaded.n_objects == len(points)
    for a, b in zip(index.search(queries, 8), loaded.search(queries, 8), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.describe() == index.describe()


def test_load_rejects_other_kinds_and_bad_payloads(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    points, _ = data
    path = SequentialScan().fit(points).save(tmp_path / "scan.joblib")
    with pytest.raises(ArtifactError, match="expected 'lsh_index'"):
        LSHIndex.load(path)
    save_artifact(tmp_path / "broken.joblib", "lsh_index", {"params": {"n_tables": 0}, "state": {}})
    with pytest.raises(ArtifactError, match="not a valid LSHIndex"):
        LSHIndex.load(tmp_path / "broken.joblib")


def test_describe_reports_bucket_statistics(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    info = LSHIndex(3, 2, 2.0).fit(points).describe()
    assert info["n_objects"] == 500 and info["dim"] == 32 and info["n_tables"] == 3
    assert info["n_buckets"] >= 3 and info["mean_bucket_size"] == pytest.approx(3 * 500 / info["n_buckets"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_tables": 0}, "n_tables must be >= 1"),
        ({"n_projections": 2.5}, "n_projections must be an integer"),
        ({"bucket_width": 0}, "bucket_width must be > 0"),
        ({"bucket_width": float("nan")}, "finite"),
        ({"metric": "manhattan"}, "metric must be one of"),
        ({"probes": -1}, "probes must be >= 0"),
        ({"seed": True}, "seed must be an integer"),
        ({"reduce_dim": 0}, "reduce_dim must be >= 1"),
        ({"rerank": 5}, "rerank needs reduce_dim"),
        ({"reduce_dim": 4, "rerank": -1}, "rerank must be >= 0"),
        ({"target_recall": 1.5}, "target_recall must be in"),
        ({"target_recall": "high"}, "target_recall must be a number"),
        ({"min_collisions": 0}, "min_collisions must be >= 1"),
        ({"reduce_dim": 4, "score_dim": 8}, "score_dim needs rerank"),
        ({"reduce_dim": 4, "rerank": 5, "score_dim": 0}, "score_dim must be >= 1"),
    ],
)
def test_lsh_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LSHIndex(**kwargs)


@pytest.mark.parametrize("index_class", [SequentialScan, LSHIndex])
def test_boundary_validation(data: tuple[np.ndarray, np.ndarray], index_class: type) -> None:
    points, queries = data
    index = index_class()
    with pytest.raises(ValueError, match="not fitted"):
        index.search(queries, 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.fit(np.where(np.eye(500, 32, dtype=bool), np.nan, points))
    with pytest.raises(ValueError, match="must be 2-D"):
        index.fit(points[0])
    with pytest.raises(ValueError, match="non-empty"):
        index.fit(np.empty((0, 32)))
    with pytest.raises(ValueError, match="numeric"):
        index.fit(np.array([["a", "b"]]))
    index.fit(points)
    with pytest.raises(ValueError, match="dimension 31, but the index was fitted on dimension 32"):
        index.search(queries[:, :31], 3)
    with pytest.raises(ValueError, match=r"reshape\(1, -1\)"):
        index.search(queries[0], 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.search(np.full((1, 32), np.inf), 3)
    for bad_k in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            index.search(queries, bad_k)


def test_search_returns_a_named_result(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    for index in (SequentialScan().fit(points), LSHIndex(3, 2, 4.0, reduce_dim=8, rerank=20).fit(points)):
        result = index.search(queries, 4)
        assert isinstance(result, SearchResult)
        distances, ids, visited = result
        assert distances is result.distances and ids is result.ids and visited is result.visited
        assert result.distances.shape == result.ids.shape == (len(queries), 4)


def test_pca_axes_are_orthonormal_and_distances_a_lower_bound(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    scaled = points * np.linspace(3.0, 0.1, points.shape[1], dtype=np.float32)  # a decaying spectrum
    pca = fit_pca(scaled, 6)
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(6), atol=1e-5)
    assert np.all(np.diff(pca.explained) <= 1e-12) and 0 < pca.explained.sum() <= 1
    # the leading axes follow the coordinates of largest variance
    assert set(np.abs(pca.components).argmax(axis=0)) <= set(range(10))
    low_points, low_queries = project(pca, scaled), project(pca, queries)
    full = np.linalg.norm(scaled[None, :50] - queries[:, None], axis=2)
    low = np.linalg.norm(low_points[None, :50] - low_queries[:, None], axis=2)
    assert np.all(low <= full * (1 + 1e-5) + 1e-4)
    again = fit_pca(scaled, 6)
    np.testing.assert_array_equal(again.components, pca.components)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_reduced_lsh_matches_a_numpy_reference(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    points, queries = data
    width = 3.0 if metric == "euclidean" else 0.6
    index = LSHIndex(5, 3, width, metric=metric, seed=2, probes=3, reduce_dim=8, rerank=12).fit(points)
    result = index.search(queries, 6)
    # reference: hash the PCA coordinates with the index's own functions, then numpy candidates and ranking
    vectors = l2_normalize(points) if metric == "cosine" else points
    query_vectors = l2_normalize(queries) if metric == "cosine" else queries
    pca = fit_pca(vectors, 8, seed=2)
    low_points, low_queries = project(pca, vectors), project(pca, query_vectors)
    codes, fractions = kernels.slot_positions(low_queries @ index._directions, index._offsets, width)
    probe = kernels.ProbeArgs(query_vectors, vectors, codes, fractions, 5, 3, width, 3, index.tables)
    shortlist = kernels.Shortlist(low_queries, low_points, 12)
    ref_scores, ref_ids, ref_visited, ref_candidates = kernels.query_reference(
        probe, 6, kernels.METRIC_CODES[metric], shortlist
    )
    np.testing.assert_array_equal(result.visited, ref_visited)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_allclose(result.distances, ref_scores, rtol=1e-5, atol=1e-6)
    for mine, expected in zip(index.candidates(queries), ref_candidates, strict=True):
        np.testing.assert_array_equal(mine, expected)
    # the tables hash the reduced coordinates
    key_codes, _ = kernels.slot_positions(low_points @ index._directions, index._offsets, width)
    np.testing.assert_array_equal(index.hash_codes(points), key_codes.reshape(len(points), 5, 3))


def test_codebook_codes_rank_like_the_reduced_coordinates(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    pca = fit_pca(points, 12, seed=0)
    reduced, low_queries = project(pca, points), project(pca, queries)
    book = fit_codebook(reduced)
    codes = encode(book, reduced)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    # decoding is within half a step of the coordinates, on every axis
    assert np.abs(codes * np.float32(book.step) + book.low - reduced).max() <= book.step / 2 * (1 + 1e-4)
    # squared code-unit distances are the reduced squared distances / step², up to the rounding
    units = code_units(book, low_queries)
    code_distance = np.sqrt(((units[:, None, :] - codes[None, :, :].astype(np.float64)) ** 2).sum(-1))
    true_distance = np.sqrt(((low_queries[:, None, :] - reduced[None, :, :].astype(np.float64)) ** 2).sum(-1))
    rounding = book.step / 2 * np.sqrt(reduced.shape[1])
    assert np.abs(code_distance * book.step - true_distance).max() <= rounding * (1 + 1e-4)
    # a row added outside the indexed range is clipped, not wrapped
    assert encode(book, reduced[:1] + 1e6).max() == 255 and encode(book, reduced[:1] - 1e6).min() == 0


@pytest.mark.parametrize("index_class", [LSHIndex, CrossPolytopeIndex])
def test_uint8_scoring_matches_a_numpy_reference(data: tuple[np.ndarray, np.ndarray], index_class: type) -> None:
    """score_dim: the shortlist is scored on uint8 codes of more principal axes than hashing uses; the kernel's
    answer equals the numpy reference fed with the same codes, and the hashing space is the leading axes."""
    points, queries = data
    shape = {"n_tables": 5, "n_projections": 3, "bucket_width": 3.0} if index_class is LSHIndex else {"n_tables": 6}
    index = index_class(**shape, seed=2, probes=3, reduce_dim=6, rerank=9, score_dim=14).fit(points)
    result = index.search(queries, 6)
    pca = fit_pca(points, 14, seed=2)
    reduced = project(pca, points)
    book = fit_codebook(reduced)
    np.testing.assert_array_equal(index._reduced, encode(book, reduced))
    np.testing.assert_allclose(index._hash_space(points), reduced[:, :6], rtol=1e-5, atol=1e-5)
    probe, _ = index._probe_args(queries)
    shortlist = kernels.Shortlist(code_units(book, project(pca, queries)), encode(book, reduced), 9)
    ref_scores, ref_ids, ref_visited, _ = kernels.query_reference(probe, 6, kernels.METRIC_EUCLIDEAN, shortlist)
    np.testing.assert_array_equal(result.visited, ref_visited)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_allclose(result.distances, ref_scores, rtol=1e-5, atol=1e-6)
    # added rows get codes from the fitted codebook
    grown = index_class(**shape, seed=2, reduce_dim=6, rerank=9, score_dim=14).fit(points[:400])
    if index_class is LSHIndex:
        grown.add(points[400:])
        expected = encode(grown._codebook, project(grown._score_pca, points))
        np.testing.assert_array_equal(grown._reduced, expected)


def test_rerank_keeps_the_exact_answer_when_the_shortlist_holds_every_candidate(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    points, queries = data
    plain = LSHIndex(4, 3, 3.0, seed=1, reduce_dim=10).fit(points).search(queries, 5)
    shortlisted = LSHIndex(4, 3, 3.0, seed=1, reduce_dim=10, rerank=len(points)).fit(points).search(queries, 5)
    for a, b in zip(plain, shortlisted, strict=True):
        np.testing.assert_array_equal(a, b)


def test_target_recall_chooses_the_fewest_probes_that_reach_it(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    index = LSHIndex(4, 4, 10.0, seed=3, target_recall=0.85, max_probes=32).fit(points)
    assert index.tuned_recall_ is not None and index.tuned_recall_ >= 0.85
    # the constructor's probes stay; recall 0.33, 0.51, 0.64, 0.77 with 0, 1, 2, 4 probes on this data
    assert index.probes_ == 8 and index.probes == 0
    if index.probes_ > 1:  # the next smaller candidate falls short
        smaller = LSHIndex(4, 4, 10.0, seed=3, probes=index.probes_ // 2).fit(points)
        sample = np.sort(np.random.default_rng(3).choice(len(points), 200, replace=False))
        exact = SequentialScan().fit(points).search(points[sample], 11).ids[:, 1:]
        found = smaller.search(points[sample], 11).ids
        hits = [len(set(e) & (set(f) - {s})) / 10 for e, f, s in zip(exact, found, sample, strict=True)]
        assert np.mean(hits) < 0.85
    unreachable = LSHIndex(1, 8, 0.5, seed=3, target_recall=1.0, max_probes=4).fit(points)
    assert unreachable.probes_ == 4 and unreachable.tuned_recall_ < 1.0
    assert LSHIndex(**index.params).fit(points).probes == index.probes


@pytest.mark.parametrize("min_collisions", [2, 3])
def test_min_collisions_keeps_the_objects_found_in_that_many_buckets(
    data: tuple[np.ndarray, np.ndarray], min_collisions: int
) -> None:
    points, queries = data
    params = {"n_tables": 6, "n_projections": 2, "bucket_width": 4.0, "seed": 1, "probes": 2}
    union = LSHIndex(**params).fit(points)
    counted = LSHIndex(**params, min_collisions=min_collisions).fit(points)
    probe, _ = counted._probe_args(queries)
    _, ref_ids, ref_visited, ref_candidates = kernels.query_reference(probe, 5, kernels.METRIC_EUCLIDEAN)
    result = counted.search(queries, 5)
    np.testing.assert_array_equal(result.ids, ref_ids)
    np.testing.assert_array_equal(result.visited, ref_visited)
    for few, many, expected in zip(counted.candidates(queries), union.candidates(queries), ref_candidates, strict=True):
        np.testing.assert_array_equal(few, expected)
        assert set(few.tolist()) <= set(many.tolist())
    assert result.visited.sum() < union.search(queries, 5).visited.sum()
    assert counted.params["min_collisions"] == min_collisions


def test_for_data_scales_the_width_by_the_median_distance_of_the_hashed_space(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    points, _ = data
    full = LSHIndex.for_data(points, 0.5, n_tables=2)
    double = LSHIndex.for_data(points, 1.0, n_tables=2)
    assert double.bucket_width == pytest.approx(2 * full.bucket_width)
    assert full.n_tables == 2 and full.reduce_dim is None
    reduced = LSHIndex.for_data(points, 0.5, reduce_dim=4, rerank=10)
    assert reduced.bucket_width < full.bucket_width  # distances shrink under projection
    assert reduced.fit(points).search(points[:3], 2).ids[:, 0].tolist() == [0, 1, 2]


# ---- growing and shrinking in place --------------------------------------------------------------------


def _index(kind: str, metric: str) -> BaseIndex:
    if kind == "scan":
        return SequentialScan(metric)
    if kind == "hnsw":
        from cbir.indexes.reference import HNSWIndex

        return HNSWIndex(metric, ef_search=256)
    if kind == "lsh-pca":
        return LSHIndex(4, 3, 2.0, metric=metric, seed=1, probes=2, reduce_dim=8, rerank=50)
    return LSHIndex(4, 3, 2.0 if metric == "euclidean" else 0.5, metric=metric, seed=1, probes=2)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("kind", ["scan", "lsh"])
def test_add_after_fit_equals_fit_on_the_concatenation(
    data: tuple[np.ndarray, np.ndarray], kind: str, metric: str
) -> None:
    points, queries = data
    grown = _index(kind, metric).fit(points[:300])
    np.testing.assert_array_equal(grown.add(points[300:450]), np.arange(300, 450))
    np.testing.assert_array_equal(grown.add(points[450:]), np.arange(450, 500))
    whole = _index(kind, metric).fit(points)
    assert grown.n_objects == whole.n_objects == 500
    if kind == "lsh":  # same hash functions, so the merged buckets are exactly the buckets of a fit on all rows
        for got, expected in zip(grown.tables, whole.tables, strict=True):
            np.testing.assert_array_equal(got, expected)
    for got, expected in zip(grown.search(queries, 7), whole.search(queries, 7), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_pca_lsh_adds_in_the_fitted_space(data: tuple[np.ndarray, np.ndarray]) -> None:
    """With reduce_dim the PCA is not refitted: the new rows are projected on the fitted axes, and the index equals
    a numpy rebuild of the buckets from the projected keys of every row."""
    points, queries = data
    grown = _index("lsh-pca", "euclidean").fit(points[:400])
    grown.add(points[400:])
    keys = grown._keys(grown._hash_space(points))
    for got, expected in zip(grown.tables, kernels.build_tables_reference(keys), strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(grown._reduced, grown._hash_space(points), rtol=1e-5, atol=1e-5)
    scores, ids, _ = grown.search(queries, 5)
    assert (ids >= 0).all()
    # every answer is the exact distance of that row
    np.testing.assert_allclose(scores[:, 0], np.linalg.norm(queries - points[ids[:, 0]], axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["scan", "lsh", "hnsw"])
def test_removed_rows_are_never_returned_and_other_ids_stay(data: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    points, queries = data
    index = _index(kind, "euclidean").fit(points)
    first = index.search(queries, 5).ids
    gone = np.unique(first[:, 0])
    assert index.remove(gone) == len(gone) and index.remove(gone[:1]) == 0
    scores, ids, visited = index.search(queries, 5)
    assert not np.isin(ids, gone).any()
    keep = np.setdiff1d(np.arange(len(points)), gone)
    # visited counts live objects only: never more than remain (the scan: exactly those)
    assert (visited <= len(keep)).all()
    if kind == "scan":
        assert (visited == len(keep)).all()
    if kind == "scan":  # exact: the answer is the scan of the remaining rows, in the original ids
        expected = SequentialScan().fit(points[keep]).search(queries, 5).ids
        np.testing.assert_array_equal(ids, keep[expected])
    assert all(np.all(np.diff(row[np.isfinite(row)]) >= 0) for row in scores)
    with pytest.raises(ValueError, match="ids must be in"):
        index.remove([len(points)])


def test_hnsw_add_finds_the_new_rows(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    index = _index("hnsw", "cosine").fit(points[:450])
    new_ids = index.add(points[450:])
    _, ids, _ = index.search(points[450:], 1)
    np.testing.assert_array_equal(ids[:, 0], new_ids)


@pytest.mark.parametrize("kind", ["scan", "lsh"])
def test_grown_and_shrunk_index_survives_save_and_load(
    data: tuple[np.ndarray, np.ndarray], kind: str, tmp_path: Path
) -> None:
    points, queries = data
    index = _index(kind, "euclidean").fit(points[:450])
    index.add(points[450:])
    index.remove([3, 460])
    loaded = type(index).load(index.save(tmp_path / "index.joblib"))
    assert loaded.n_removed == 2 and loaded.n_objects == 500
    for got, expected in zip(loaded.search(queries, 6), index.search(queries, 6), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_warm_up_reports_each_group_of_kernels_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbir.indexes import warmup as index

    monkeypatch.setattr(index, "_WARM", False)
    calls: list[tuple[str, int, int]] = []
    index.warm_up(lambda stage, done, total: calls.append((stage, done, total)))
    total = calls[0][2]
    assert total >= 4 and calls == [(index.WARM_UP_STAGE, done, total) for done in range(total + 1)]
    index.warm_up(lambda *args: calls.append(args))  # warm: nothing to load, nothing reported
    assert len(calls) == total + 1


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_candidate_ranking_answers_as_the_lsh_search_on_real_features(real_features, metric: str) -> None:
    """The budgeted sweep's shared ranking (one product, then each setting's candidates shortlisted and re-ranked):
    bit for bit the LSH search's scores and ids on the default collection's real features, for settings from a
    few candidates (fewer than k for some queries: padded alike) to thousands."""
    rows = real_features.roles != "query"
    data, queries = real_features.features[rows], real_features.features[~rows][:200]
    ranking = CandidateRanking(SequentialScan(metric).fit(data), queries)
    width = default_width(data, metric)
    for n_tables, n_projections, factor in ((1, 4, 2.0), (4, 2, 1.0), (10, 1, 1.0)):
        index = LSHIndex(n_tables, n_projections, width * factor, metric=metric, seed=0).fit(data)
        candidates = index.candidates(queries)
        scores, ids = ranking.top_k(candidates, 10)
        expected = index.search(queries, 10)
        np.testing.assert_array_equal(ids, expected.ids)
        np.testing.assert_array_equal(scores, expected.distances)
        assert (np.fromiter(map(len, candidates), dtype=np.int64) == expected.visited).all()
        if n_tables == 1:  # the padded case was met
            assert min(map(len, candidates)) < 10 < max(map(len, candidates))
