"""numba kernels against their pure-numpy references and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.indexes import kernels

N_TABLES, N_PROJECTIONS, WIDTH = 3, 4, 2.5


@pytest.fixture(scope="module")
def hashed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((600, 24)).astype(np.float32)
    queries = rng.standard_normal((40, 24)).astype(np.float32)
    directions, offsets = kernels.draw_hash_functions(24, N_TABLES, N_PROJECTIONS, WIDTH, seed=3)
    projected = np.ascontiguousarray(data @ directions)
    codes, _ = kernels.slot_positions(projected, offsets, WIDTH)
    keys = kernels.hash_keys(projected, offsets, WIDTH, N_TABLES, N_PROJECTIONS)
    query_codes, query_fractions = kernels.slot_positions(queries @ directions, offsets, WIDTH)
    return {
        "data": data,
        "queries": queries,
        "codes": codes,
        "keys": keys,
        "query_codes": query_codes,
        "query_fractions": query_fractions,
    }


def _for_metric(metric: int, *vectors: np.ndarray) -> tuple[np.ndarray, ...]:
    """The vectors as the kernels expect them for ``metric``: unit rows for cosine, unchanged otherwise."""
    if metric != kernels.METRIC_COSINE:
        return vectors
    return tuple(np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True)) for v in vectors)


def _search_matches_reference(
    probe: kernels.ProbeArgs | kernels.ListedProbes, metric: int, shortlist: kernels.Shortlist | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Assert that lsh_search finds what the numpy reference finds (visits, ids, scores) and that lsh_candidates
    lists the reference's candidates (before any shortlist); returns lsh_search's ids and visit counts."""
    scores, ids, visited = kernels.lsh_search(probe=probe, k=5, metric=metric, shortlist=shortlist)
    ref_scores, ref_ids, ref_visited, ref_candidates = kernels.query_reference(
        probe=probe, k=5, metric=metric, shortlist=shortlist
    )
    np.testing.assert_array_equal(visited, ref_visited)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    offsets, candidate_ids = kernels.lsh_candidates(probe=probe)
    for i, expected in enumerate(ref_candidates):
        np.testing.assert_array_equal(candidate_ids[offsets[i] : offsets[i + 1]], expected)
    return ids, visited


def test_hash_functions_follow_e2lsh_distributions() -> None:
    directions, offsets = kernels.draw_hash_functions(64, 50, 10, 3.0, seed=1)
    assert directions.shape == (64, 500) and directions.dtype == np.float32
    assert abs(directions.mean()) < 0.02 and abs(directions.std() - 1.0) < 0.02
    assert offsets.shape == (500,) and offsets.min() >= 0.0 and offsets.max() < 3.0
    assert abs(offsets.mean() - 1.5) < 0.15


def test_slot_positions_are_floor_of_shifted_projection() -> None:
    projected = np.array([[-0.1, 0.0, 4.9, 5.0]], dtype=np.float32)
    codes, fractions = kernels.slot_positions(projected, np.array([0.0, 0.0, 0.0, 0.0]), 5.0)
    np.testing.assert_array_equal(codes, [[-1, 0, 0, 1]])
    np.testing.assert_allclose(fractions, [[0.98, 0.0, 0.98, 0.0]], atol=1e-6)


def test_hash_keys_match_numpy_reference_including_negative_codes(hashed: dict[str, np.ndarray]) -> None:
    assert (hashed["codes"] < 0).any(), "the fixture should exercise negative slot numbers"
    reference = kernels.hash_keys_reference(hashed["codes"], N_TABLES, N_PROJECTIONS)
    np.testing.assert_array_equal(hashed["keys"], reference)


def test_keys_identify_code_tuples_exactly(hashed: dict[str, np.ndarray]) -> None:
    codes = hashed["codes"].reshape(-1, N_TABLES, N_PROJECTIONS)
    for table in range(N_TABLES):
        tuples = [tuple(row) for row in codes[:, table]]
        pairs = set(zip(tuples, hashed["keys"][table].tolist(), strict=True))
        # one key per distinct tuple and one tuple per distinct key: no collisions in either direction
        assert len(pairs) == len(set(tuples)) == len(set(hashed["keys"][table].tolist()))


def test_build_tables_matches_reference_and_groups_equal_keys(hashed: dict[str, np.ndarray]) -> None:
    keys = hashed["keys"]
    tables = kernels.build_tables(keys)
    reference = kernels.build_tables_reference(keys)
    for built, expected in zip(tables, reference, strict=True):
        np.testing.assert_array_equal(built, expected)
    n = keys.shape[1]
    for table in range(N_TABLES):
        lo, hi = tables.table_offsets[table], tables.table_offsets[table + 1]
        table_keys = tables.bucket_keys[lo:hi]
        assert np.all(np.diff(table_keys.astype(object)) > 0), "keys sorted and unique within a table"
        for bucket in range(lo, hi):
            members = tables.bucket_ids[tables.bucket_starts[bucket] : tables.bucket_starts[bucket + 1]]
            assert np.all(np.diff(members) > 0)
            expected_members = np.flatnonzero(keys[table] == tables.bucket_keys[bucket])
            np.testing.assert_array_equal(members, expected_members)
    assert tables.bucket_starts[-1] == N_TABLES * n
    steps: list[int] = []
    in_steps = kernels.build_tables_in_steps(keys, steps.append)  # the LSH build with progress
    for built, expected in zip(in_steps, tables, strict=True):
        np.testing.assert_array_equal(built, expected)
        assert built.dtype == expected.dtype
    assert steps[-1] == N_TABLES and steps == sorted(steps)


@pytest.mark.parametrize("n_old", [0, 1, 350, 599])
def test_merge_tables_appends_like_a_build_on_the_concatenation(hashed: dict[str, np.ndarray], n_old: int) -> None:
    keys = hashed["keys"]
    old = kernels.build_tables(keys[:, :n_old])
    merged = kernels.merge_tables(old, keys[:, n_old:], n_old)
    reference = kernels.merge_tables_reference(old, keys[:, n_old:], n_old)
    for got, ref, full in zip(merged, reference, kernels.build_tables(keys), strict=True):
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got, full)


def test_merge_tables_with_colliding_small_keys() -> None:
    """Few distinct keys: most new objects land in existing buckets, after the old ids."""
    keys = np.random.default_rng(1).integers(0, 5, (4, 300)).astype(np.uint64)
    for n_old in (120, 299):
        merged = kernels.merge_tables(kernels.build_tables(keys[:, :n_old]), keys[:, n_old:], n_old)
        for got, full in zip(merged, kernels.build_tables_reference(keys), strict=True):
            np.testing.assert_array_equal(got, full)


@pytest.mark.parametrize("n_projections", [1, 2, 3, 5])
def test_perturbation_sequence_matches_brute_force(n_projections: int) -> None:
    rng = np.random.default_rng(n_projections)
    n_valid = 3**n_projections - 1
    for _ in range(20):
        fractions = rng.random(n_projections)
        for n_probes in (1, 4, min(n_valid, 30), n_valid):
            deltas, costs = kernels.perturbation_sequence(fractions, 1.7, n_probes)
            expected_deltas, expected_costs = kernels.perturbation_sequence_reference(fractions, 1.7, n_probes)
            assert len(deltas) == min(n_probes, n_valid)
            np.testing.assert_allclose(costs, expected_costs, rtol=1e-12)
            np.testing.assert_array_equal(deltas, expected_deltas)


def test_perturbation_sequence_long_prefix_for_many_projections() -> None:
    rng = np.random.default_rng(42)
    for _ in range(5):
        fractions = rng.random(8)
        deltas, costs = kernels.perturbation_sequence(fractions, 3.0, 60)
        expected_deltas, expected_costs = kernels.perturbation_sequence_reference(fractions, 3.0, 60)
        np.testing.assert_allclose(costs, expected_costs, rtol=1e-12)
        np.testing.assert_array_equal(deltas, expected_deltas)


def test_perturbation_sequence_prefers_the_nearest_boundary() -> None:
    # coordinate 0 sits just right of its left boundary, coordinate 1 in the middle of its slot
    deltas, costs = kernels.perturbation_sequence(np.array([0.05, 0.5]), 2.0, 3)
    np.testing.assert_array_equal(deltas[0], [-1, 0])
    assert costs[0] == pytest.approx((0.05 * 2.0) ** 2)
    assert np.all(np.diff(costs) >= 0)
    assert not np.any(np.all(deltas == 0, axis=1))


@pytest.mark.parametrize("metric", [kernels.METRIC_EUCLIDEAN, kernels.METRIC_COSINE])
@pytest.mark.parametrize("n_probes", [0, 3])
def test_lsh_search_matches_numpy_reference(hashed: dict[str, np.ndarray], metric: int, n_probes: int) -> None:
    data, queries = hashed["data"], hashed["queries"]
    data, queries = _for_metric(metric, data, queries)
    tables = kernels.build_tables(hashed["keys"])
    probe = kernels.ProbeArgs(
        queries=np.ascontiguousarray(queries, dtype=np.float32),
        data=np.ascontiguousarray(data, dtype=np.float32),
        codes=hashed["query_codes"],
        fractions=hashed["query_fractions"],
        n_tables=N_TABLES,
        n_projections=N_PROJECTIONS,
        bucket_width=WIDTH,
        n_probes=n_probes,
        tables=tables,
    )
    ids, visited = _search_matches_reference(probe, metric)
    assert visited.sum() > 0 and (ids == -1).any(), "fixture should produce both hits and short answers"


def test_rerank_breaks_ties_by_id_and_pads() -> None:
    data = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    candidates = np.array([3, 2, 0], dtype=np.int64)  # unsorted on purpose; id 1 is not a candidate
    offsets = np.array([0, 3])
    scores, ids = kernels.rerank_candidates(query, data, offsets, candidates, 5, kernels.METRIC_EUCLIDEAN)
    np.testing.assert_array_equal(ids, [[0, 2, 3, -1, -1]])
    np.testing.assert_array_equal(scores, [[0.0, 0.0, 2.0, np.inf, np.inf]])
    sims, ids = kernels.rerank_candidates(query, data, offsets, candidates, 2, kernels.METRIC_COSINE)
    np.testing.assert_array_equal(ids, [[3, 0]])  # larger dot product first
    np.testing.assert_array_equal(sims, [[3.0, 1.0]])


def test_rerank_with_early_exit_matches_brute_force_over_many_blocks() -> None:
    # 1000-d rows span several distance blocks, so most candidates are dropped part-way through their row
    rng = np.random.default_rng(11)
    data = rng.standard_normal((400, 1000)).astype(np.float32)
    queries = rng.standard_normal((6, 1000)).astype(np.float32)
    candidates = np.concatenate([rng.permutation(400)[:300] for _ in range(len(queries))]).astype(np.int64)
    offsets = np.arange(0, 301 * len(queries), 300, dtype=np.int64)[: len(queries) + 1]
    scores, ids = kernels.rerank_candidates(queries, data, offsets, candidates, 7, kernels.METRIC_EUCLIDEAN)
    for i, query in enumerate(queries):
        own = candidates[offsets[i] : offsets[i + 1]]
        distances = np.sqrt(((data[own].astype(np.float64) - query) ** 2).sum(axis=1))
        order = np.argsort(distances)[:7]
        np.testing.assert_array_equal(ids[i], own[order])
        np.testing.assert_allclose(scores[i], distances[order], rtol=1e-5)


def test_squared_distance_stops_only_above_the_bound() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 1000)).astype(np.float32)
    full = kernels._squared_l2(a, b, np.float32(np.inf))
    assert full == pytest.approx(float(((a.astype(np.float64) - b) ** 2).sum()), rel=1e-5)
    assert kernels._squared_l2(a, b, full) == full, "a bound the sum does not exceed changes nothing"
    partial = kernels._squared_l2(a, b, np.float32(1.0))
    assert 1.0 < partial < full, "stops after the first block that exceeds the bound"


@pytest.mark.parametrize("lower_bound", [False, True])
@pytest.mark.parametrize("metric", [kernels.METRIC_EUCLIDEAN, kernels.METRIC_COSINE])
def test_lsh_search_with_a_shortlist_matches_numpy_reference(
    hashed: dict[str, np.ndarray], metric: int, lower_bound: bool
) -> None:
    data, queries = hashed["data"], hashed["queries"]
    data, queries = _for_metric(metric, data, queries)
    # an orthogonal projection (the lower-bound stop needs one) or any linear map
    embedding = np.random.default_rng(9).standard_normal((24, 6))
    embedding = (np.linalg.qr(embedding)[0] if lower_bound else embedding).astype(np.float32)
    probe = kernels.ProbeArgs(
        queries=queries,
        data=data,
        codes=hashed["query_codes"],
        fractions=hashed["query_fractions"],
        n_tables=N_TABLES,
        n_projections=N_PROJECTIONS,
        bucket_width=WIDTH,
        n_probes=4,
        tables=kernels.build_tables(hashed["keys"]),
    )
    shortlist = kernels.Shortlist(
        queries=np.ascontiguousarray(queries @ embedding),
        data=np.ascontiguousarray(data @ embedding),
        size=7,
        lower_bound=lower_bound,
    )
    ids, visited = _search_matches_reference(probe, metric, shortlist)
    assert (visited > 7).any(), "the fixture should have queries with more candidates than the shortlist"
    plain, _, _ = kernels.lsh_search(probe=probe, k=5, metric=metric)[1], None, None
    assert not np.array_equal(plain, ids), "the shortlist should change some answers on random data"


def test_probe_workspace_is_named() -> None:
    workspace = kernels._probe_workspace(n_probes=5, n_projections=3)
    assert isinstance(workspace, kernels.ProbeWorkspace)
    assert workspace.out_deltas.shape == (5, 3) and workspace.single_cost.shape == (6,)
    assert workspace.heap_score.shape == (kernels.max_heap_nodes(5, 3),)


@pytest.mark.parametrize("count", [0, 1, 5, 40, 300, 2000])
def test_sorted_candidates_reads_sets_back_in_order_and_clears_the_bitmap(count: int) -> None:
    # 5000 objects = 79 bitmap words: small sets take the sort path, large ones the bitmap pass
    rng = np.random.default_rng(count)
    ids = rng.choice(5000, count, replace=False).astype(np.int64)
    seen = np.zeros((5000 + 63) // 64, dtype=np.uint64)
    for obj in ids:
        seen[obj >> 6] |= np.uint64(1) << np.uint64(obj & 63)
    buffer = np.empty(5000, dtype=np.int64)
    buffer[:count] = ids
    result = kernels._sorted_candidates(seen=seen, buffer=buffer, count=count)
    np.testing.assert_array_equal(result, np.sort(ids))
    assert not seen.any()


# ---- cross-polytope LSH ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def polytope() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    signs = kernels.draw_rotation_signs(16, 3 * 2, 3, seed=5)  # 3 tables x 2 hashes, D = 16 (12-d padded)
    return {
        "data": rng.standard_normal((400, 12)).astype(np.float32),
        "queries": rng.standard_normal((20, 12)).astype(np.float32),
        "signs": signs,
    }


def test_rotation_signs_are_balanced_plus_minus_one() -> None:
    signs = kernels.draw_rotation_signs(64, 20, 3, seed=0)
    assert signs.shape == (20, 3, 64) and signs.dtype == np.float32
    assert set(np.unique(signs)) == {-1.0, 1.0} and abs(signs.mean()) < 0.05


def _rotated(vectors: np.ndarray, signs: np.ndarray) -> np.ndarray:
    matrix = kernels.rotation_matrix(signs, vectors.shape[1])
    return (vectors @ matrix).reshape(len(vectors), signs.shape[0], signs.shape[2])


@pytest.mark.parametrize("last_dim", [16, 4])
def test_cross_polytope_codes_match_dense_hadamard_reference(polytope: dict[str, np.ndarray], last_dim: int) -> None:
    rotated = _rotated(polytope["data"], polytope["signs"])
    reference = kernels.rotations_reference(polytope["data"], polytope["signs"])
    np.testing.assert_allclose(rotated, reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kernels.rotate(polytope["data"], polytope["signs"]), reference, rtol=1e-4, atol=1e-5)
    # the rotation is orthogonal: it keeps norms
    norms = np.linalg.norm(polytope["data"], axis=1)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=2), np.repeat(norms[:, None], 6, axis=1), rtol=1e-5)
    codes = kernels.cross_polytope_codes(rotated, 2, last_dim)
    np.testing.assert_array_equal(codes, kernels.cross_polytope_codes_reference(rotated, 2, last_dim))
    # the last hash of a table uses 2 * last_dim codes
    assert codes[:, 1::2].max() < 2 * last_dim and codes[:, 0::2].max() < 32


def test_fold_keys_match_the_e2lsh_key_fold(polytope: dict[str, np.ndarray]) -> None:
    codes = kernels.cross_polytope_codes(_rotated(polytope["data"], polytope["signs"]), 2, 16)
    np.testing.assert_array_equal(kernels.fold_keys(codes, 3, 2), kernels.hash_keys_reference(codes, 3, 2))


@pytest.mark.parametrize("n_probes", [3, 4, 12, 40])
def test_cross_polytope_probes_match_brute_force(polytope: dict[str, np.ndarray], n_probes: int) -> None:
    rotated = _rotated(polytope["queries"], polytope["signs"])
    tables, keys, costs = kernels.cross_polytope_probes(rotated, 3, 2, 8, n_probes)
    reference = kernels.cross_polytope_probes_reference(rotated, 3, 2, 8, n_probes)
    own = kernels.fold_keys(kernels.cross_polytope_codes(rotated, 2, 8), 3, 2)
    for i, expected in enumerate(reference):
        np.testing.assert_allclose(costs[i], [cost for cost, _, _ in expected], atol=1e-6)
        assert set(zip(tables[i].tolist(), keys[i].tolist(), strict=True)) == {(t, key) for _, t, key in expected}
        # the query's own buckets come first, table by table, at cost 0
        first = min(n_probes, 3)
        np.testing.assert_array_equal(tables[i, :first], np.arange(first))
        np.testing.assert_array_equal(keys[i, :first], own[np.arange(first), i])
        assert np.all(np.diff(costs[i]) >= 0)


@pytest.mark.parametrize("metric", [kernels.METRIC_EUCLIDEAN, kernels.METRIC_COSINE])
@pytest.mark.parametrize("min_collisions", [1, 2])
def test_listed_probes_search_matches_numpy_reference(
    polytope: dict[str, np.ndarray], metric: int, min_collisions: int
) -> None:
    data, queries, signs = polytope["data"], polytope["queries"], polytope["signs"]
    data, queries = _for_metric(metric, data, queries)
    tables = kernels.build_tables(kernels.fold_keys(kernels.cross_polytope_codes(_rotated(data, signs), 2, 16), 3, 2))
    probe_tables, probe_keys, _ = kernels.cross_polytope_probes(_rotated(queries, signs), 3, 2, 16, 9)
    probe_tables[0, 4:] = -1  # a shorter sequence ends with -1
    probe = kernels.ListedProbes(queries, data, probe_tables, probe_keys, tables, min_collisions)
    _, visited = _search_matches_reference(probe, metric)
    assert visited.sum() > 0 and (min_collisions > 1 or visited.min() > 0)
