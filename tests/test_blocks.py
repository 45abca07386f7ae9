"""BlockPolytopeIndex and the bucket-ordered code kernel: the numpy reference, the index contract, one query vs a
batch, duplicates re-scored or stamped, growth, persistence, and recall on the real default collection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.core.metrics import recall_at_k
from cbir.features.sources import FeatureSet
from cbir.indexes import kernels
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.polytope import CrossPolytopeIndex, hashes_for_bits
from cbir.indexes.scan import SequentialScan


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((12, 40)).astype(np.float32) * 3
    points = centres[rng.integers(0, 12, 900)] + rng.standard_normal((900, 40)).astype(np.float32)
    queries = centres[rng.integers(0, 12, 30)] + rng.standard_normal((30, 40)).astype(np.float32)
    return np.ascontiguousarray(points), np.ascontiguousarray(queries)


def _kernel_arguments(index: BlockPolytopeIndex, queries: np.ndarray, probes: int = 3) -> dict:
    """What the index passes to :func:`kernels.block_search` for ``queries`` (the probes given: ``probes`` per
    table)."""
    hashed, units = index._spaces(queries)
    probe_tables, probe_keys, _ = kernels.cross_polytope_probes(
        index._rotated(hashed), index.n_tables, index.n_projections, index._last_dim(), index.n_tables * (1 + probes)
    )
    return {
        "queries": queries,
        "data": index._data,
        "units": units,
        "codes": index._blocks,
        "tables": index.tables,
        "probe_tables": probe_tables,
        "probe_keys": probe_keys,
        "k": 7,
        "rerank": 25,
        "metric": kernels.METRIC_EUCLIDEAN,
    }


@pytest.mark.parametrize(("stamp", "patience"), [(False, 0), (True, 0), (False, 3), (True, 2)])
def test_kernel_matches_the_numpy_reference(data: tuple[np.ndarray, np.ndarray], stamp: bool, patience: int) -> None:
    points, queries = data
    index = BlockPolytopeIndex(4, 1, last_dim=8, reduce_dim=10, rerank=25, score_dim=16, seed=1).fit(points)
    arguments = _kernel_arguments(index, queries)
    scores, ids, visited = kernels.block_search(**arguments, stamp=stamp, patience=patience)
    ref_scores, ref_ids, ref_visited = kernels.block_search_reference(**arguments, stamp=stamp, patience=patience)
    if patience:  # the adaptive stop scores fewer members than the whole sequence
        assert (visited <= kernels.block_search(**arguments, stamp=stamp)[2]).all()
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    np.testing.assert_array_equal(visited, ref_visited)
    assert 0 < visited.mean() < 4 * len(points)


def test_blocks_hold_each_members_code_in_bucket_order(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    index = BlockPolytopeIndex(3, 1, last_dim=4, reduce_dim=8, score_dim=12).fit(points)
    assert index._blocks.shape == (3 * len(points), 12) and index._blocks.dtype == np.uint8
    np.testing.assert_array_equal(index._blocks, index._reduced[index.tables.bucket_ids])
    info = index.describe()
    assert info["block_bytes"] == 3 * len(points) * 12
    # ids (8 bytes) and a code (12) per member per table, the codes once more in id order, and the bucket keys
    per_member = 3 * 8 + 3 * 12 + 12
    assert per_member < info["bytes_per_object"] < per_member + 16 * info["n_buckets"] / len(points) + 1


def test_re_scoring_and_stamping_duplicates_give_the_same_answers(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    rescored = BlockPolytopeIndex(8, 1, last_dim=8, probes=3, reduce_dim=10, rerank=20, score_dim=16).fit(points)
    stamped = BlockPolytopeIndex(8, 1, last_dim=8, probes=3, reduce_dim=10, rerank=20, score_dim=16, stamp=True)
    a, b = rescored.search(queries, 10), stamped.fit(points).search(queries, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    # the same members are met: re-scoring counts every meeting, stamping each member once
    assert (a.visited >= b.visited).all() and (a.visited > b.visited).any()
    np.testing.assert_array_equal(b.visited, [len(c) for c in stamped.candidates(queries)])


def test_one_query_at_a_time_equals_the_batch(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Single rows take the serial path of both kernels (no parallel launch): the same answers as the batch."""
    points, queries = data
    index = BlockPolytopeIndex(6, 1, last_dim=8, probes=2, reduce_dim=10, rerank=20, score_dim=16).fit(points)
    batch = index.search(queries, 5)
    for i in range(len(queries)):
        single = index.search(queries[i : i + 1], 5)
        np.testing.assert_array_equal(single.ids[0], batch.ids[i])
        np.testing.assert_array_equal(single.visited[0], batch.visited[i])


def test_same_candidates_and_answers_as_the_gathering_index(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Same hashing, probes and codes as CrossPolytopeIndex with the uint8 shortlist: the same candidate sets, and
    (both re-ranking their best R by code distance) nearly always the same answers."""
    points, queries = data
    options = {"probes": 2, "reduce_dim": 10, "rerank": 20, "score_dim": 16, "seed": 5}
    blocks = BlockPolytopeIndex(6, 1, last_dim=8, **options).fit(points)
    gathering = CrossPolytopeIndex(6, 1, last_dim=8, **options).fit(points)
    for a, b in zip(blocks.candidates(queries), gathering.candidates(queries), strict=True):
        np.testing.assert_array_equal(a, b)
    agree = (blocks.search(queries, 10).ids == gathering.search(queries, 10).ids).mean()
    assert agree > 0.95


def test_probing_every_bucket_with_a_full_shortlist_equals_the_scan(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, queries = data
    # one table of one hash over 8 coordinates has 16 buckets: 15 extra probes reach every object
    index = BlockPolytopeIndex(1, 1, probes=15, reduce_dim=8, rerank=len(points), score_dim=8).fit(points)
    result = index.search(queries, 10)
    exact = SequentialScan().fit(points).search(queries, 10)
    np.testing.assert_array_equal(result.ids, exact.ids)
    np.testing.assert_allclose(result.distances, exact.distances, rtol=1e-5)
    assert (result.visited == len(points)).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_add_remove_save_load(data: tuple[np.ndarray, np.ndarray], tmp_path: Path, metric: str) -> None:
    points, queries = data
    index = BlockPolytopeIndex(4, 1, probes=2, reduce_dim=10, rerank=30, score_dim=16, metric=metric)
    index.fit(points[:600])
    new_ids = index.add(points[600:])
    np.testing.assert_array_equal(new_ids, np.arange(600, len(points)))
    np.testing.assert_array_equal(index._blocks, index._reduced[index.tables.bucket_ids])
    assert len(index.tables.bucket_ids) == 4 * len(points)
    # an added row finds itself first
    own = index.search(points[600:650], 1).ids[:, 0]
    assert (own == np.arange(600, 650)).mean() > 0.9
    index.remove([int(own[0])])
    assert int(own[0]) not in index.search(points[600:601], 5).ids
    loaded = BlockPolytopeIndex.load(index.save(tmp_path / "blocks.joblib"))
    assert loaded.params == index.params and loaded.describe() == index.describe()
    for a, b in zip(index.search(queries, 8), loaded.search(queries, 8), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_queries_and_bad_parameters(data: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = data
    index = BlockPolytopeIndex(2, 1, reduce_dim=8, score_dim=8).fit(points)
    result = index.search(np.empty((0, points.shape[1]), dtype=np.float32), 3)
    assert result.ids.shape == (0, 3) and result.visited.shape == (0,)
    with pytest.raises(ValueError, match="needs reduce_dim"):
        BlockPolytopeIndex(reduce_dim=None)
    with pytest.raises(ValueError, match="needs reduce_dim"):
        BlockPolytopeIndex(rerank=0)
    with pytest.raises(ValueError, match="stamp must be a bool"):
        BlockPolytopeIndex(stamp="yes")
    with pytest.raises(ValueError, match="patience must be >= 0"):
        BlockPolytopeIndex(patience=-1)
    with pytest.raises(ValueError, match="rerank must be >= 1"):
        kernels.block_search(**{**_kernel_arguments(index, points[:2]), "rerank": 0})


@pytest.mark.slow
def test_recall_on_real_features(real_features: FeatureSet) -> None:
    """The app's setting (L=8, log2(n) - 2 bits per table: 10 on the default collection's 4,913 indexed images) on
    real features (the default collection's, else the small real collection's on a fresh clone): recall@10 against
    the exact scan grows with the probes and reaches 0.88."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"], dtype=np.float32)
    exact = SequentialScan().fit(X).search(Q, 10).ids
    hashes, last_dim = hashes_for_bits(48, max(4, int(np.log2(len(X))) - 2))
    index = BlockPolytopeIndex(8, hashes, last_dim=last_dim).fit(X)
    recalls = []
    for probes in (2, 8):
        index.probes = probes
        result = index.search(Q, 10)
        recalls.append(recall_at_k(result.ids, exact, 10).mean())
        if len(X) >= 2000:  # a small set's buckets hold a large share of it whatever the setting
            assert result.visited.mean() < 0.5 * len(X)
    assert recalls[0] <= recalls[1] and recalls[1] >= 0.88


@pytest.mark.slow
def test_a_batch_grouped_by_row_equals_one_query_at_a_time_and_the_reference(real_features: FeatureSet) -> None:
    """A batch ranks its shortlisted rows grouped by row (cbir.indexes.kernels.grouped); one query ranks its own:
    on real features the same ids and distances as one query at a time, the per-query layout and the numpy
    reference."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"], dtype=np.float32)
    hashes, last_dim = hashes_for_bits(48, max(4, int(np.log2(len(X))) - 2))
    index = BlockPolytopeIndex(8, hashes, last_dim=last_dim, probes=8).fit(X)
    batch = index.search(Q, 10)
    for i in range(0, len(Q), 7):
        single = index.search(Q[i : i + 1], 10)
        np.testing.assert_array_equal(single.ids[0], batch.ids[i])
        np.testing.assert_array_equal(single.distances[0], batch.distances[i])
        np.testing.assert_array_equal(single.visited[0], batch.visited[i])
    # the kernel on the index's own probes, each layout
    arguments = {**_kernel_arguments(index, Q, probes=index.probes), "k": 10, "rerank": index.rerank}
    grouped = kernels.block_search(**arguments, grouped=True)
    for a, b, c in zip(grouped, kernels.block_search(**arguments, grouped=False), batch, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    few = {**_kernel_arguments(index, Q[:60]), "k": 10, "rerank": 30}
    scores, ids, visited = kernels.block_search(**few, grouped=True)
    ref_scores, ref_ids, ref_visited = kernels.block_search_reference(**few)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    np.testing.assert_array_equal(visited, ref_visited)
    assert (ids >= 0).all()


def test_one_query_projection_matches_the_reference_and_the_batch(real_features: FeatureSet) -> None:
    """One query's projection in one numba call (cbir.indexes.kernels.projection) against the numpy reference and
    the batch's BLAS product, on the real features (the index's searches use them)."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"][:40], dtype=np.float32)
    index = BlockPolytopeIndex(4, 1, reduce_dim=16, score_dim=30).fit(X)  # 30 axes: four at a time, and two more
    axes, mean = index._axes, index._axes_mean
    assert axes[1].shape == (30, X.shape[1]) and axes[1].flags.c_contiguous
    low, step = index._codebook.low, index._codebook.step
    reference = kernels.query_spaces_reference(Q, axes[0], mean, 16, low, step)
    batch = kernels.query_spaces(Q, axes, mean, 16, low, step)
    for i in range(len(Q)):
        single = kernels.query_spaces(Q[i : i + 1], axes, mean, 16, low, step)
        for one, many, ref in zip(single, batch, reference, strict=True):
            assert one.shape == (1, ref.shape[1]) and one.dtype == np.float32 and one.flags.c_contiguous
            scale = np.abs(ref).max()
            np.testing.assert_allclose(one[0], ref[i], rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_allclose(many[i], ref[i], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("reduce_dim", [16, 200])
def test_one_query_in_one_call_equals_the_batch(real_features: FeatureSet, reduce_dim: int) -> None:
    """One query runs in one numba call (cbir.indexes.kernels.single), rotating its hashing coordinates by the dense
    matrix (16 PCA axes) or by the fast transforms (200 axes, one round: no dense matrix): the batch's answers.

    The one query projects in numba, the batch through BLAS: the last bits of a hashing coordinate can differ, and a
    near tie between two probes' scores can then go the other way, so another bucket is probed (seen on a fresh
    clone's features: 1 query in 60 visited 1,783 rows against the batch's 1,831, with the same answer). So the
    answers must be the batch's for every query, the visited counts for all but a few."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"][:60], dtype=np.float32)
    index = BlockPolytopeIndex(4, 1, probes=2, reduce_dim=reduce_dim, score_dim=200, n_rotations=1).fit(X)
    assert (index._rotation is None) == (reduce_dim == 200)
    batch = index.search(Q, 10)
    visited = np.empty(len(Q), dtype=np.int64)
    for i in range(len(Q)):
        single = index.search(Q[i : i + 1], 10)
        np.testing.assert_array_equal(single.ids[0], batch.ids[i])
        np.testing.assert_allclose(single.distances[0], batch.distances[i], rtol=1e-6)
        visited[i] = single.visited[0]
    assert (batch.ids >= 0).all()
    assert (visited == batch.visited).mean() >= 0.95  # all but a near tie or two
    np.testing.assert_allclose(visited, batch.visited, rtol=0.1)


def test_target_recall_is_checked_kept_apart_from_the_explicit_settings_and_saved(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    points, queries = data
    for bad in (0.0, 1.5, "0.9", True):
        with pytest.raises(ValueError, match="target_recall"):
            BlockPolytopeIndex(target_recall=bad)
    index = BlockPolytopeIndex(4, 1, last_dim=8, reduce_dim=10, score_dim=16, probes=1, rerank=12, target_recall=0.8)
    index.fit(points)
    assert (index.probes, index.rerank) == (1, 12)  # the constructor's settings stay; the learned ones are apart
    chosen = (index.probes_, index.rerank_, index.tuned_recall_)
    assert chosen == (index.search_probes, index.search_rerank, index.describe()["tuned_recall"])
    assert index.fitted_params == {"probes": chosen[0], "rerank": chosen[1]}  # what a results row gives
    assert index.describe()["setting"] == f"T{chosen[0]} R{chosen[1]} chosen for recall@10 0.8"
    reached = [row for row in index.tuning_ if row[2] - 2 * row[3] >= 0.8]  # recall less two standard errors
    cost = next(row[5] for row in index.tuning_ if row[:2] == chosen[:2])
    assert reached and cost == min(row[5] for row in reached)  # the cheapest setting that reached the target
    loaded = BlockPolytopeIndex.load(index.save(tmp_path / "tuned.joblib"))
    assert (loaded.probes_, loaded.rerank_, loaded.tuned_recall_) == chosen
    for a, b in zip(index.search(queries, 8), loaded.search(queries, 8), strict=True):
        np.testing.assert_array_equal(a, b)
    explicit = BlockPolytopeIndex(4, 1, last_dim=8, reduce_dim=10, score_dim=16, probes=1, rerank=12).fit(points)
    assert explicit.probes_ is None and (explicit.search_probes, explicit.search_rerank) == (1, 12)
    assert explicit.fitted_params == {} and explicit.setting == "T1 R12"


@pytest.mark.slow
def test_target_recall_reaches_the_target_on_held_out_queries_and_follows_the_data(
    real_features: FeatureSet,
) -> None:
    """Fitted with ``target_recall`` on the real features, the index reaches the target (within 0.02) on the
    collection's queries, which it never saw; a higher target costs more; the hard synthetic set (no clusters, a
    decaying spectrum) gets other settings, and reaches the target on its own held-out queries too."""
    from cbir.features.synthetic import hard_vectors

    roles = np.asarray(real_features.roles)
    hard = hard_vectors(20_500, 256, 0)
    sets = {
        "real": (real_features.features[roles != "query"], real_features.features[roles == "query"]),
        "hard": (hard[:20_000], hard[20_000:]),
    }
    chosen = {}
    for name, (X, Q) in sets.items():
        X, Q = np.ascontiguousarray(X, dtype=np.float32), np.ascontiguousarray(Q, dtype=np.float32)
        exact = SequentialScan().fit(X).search(Q, 10).ids
        hashes, last_dim = hashes_for_bits(48, max(4, int(np.log2(len(X))) - 2))
        for target in (0.85, 0.95) if name == "real" else (0.9,):
            index = BlockPolytopeIndex(8, hashes, last_dim=last_dim, target_recall=target).fit(X)
            held_out = recall_at_k(index.search(Q, 10).ids, exact, 10).mean()
            assert index.tuned_recall_ >= target and held_out >= target - 0.02, (name, target, held_out)
            chosen[name, target] = index
    low, high = chosen["real", 0.85], chosen["real", 0.95]
    assert low.estimated_cost(low.probes_, low.rerank_, 0.0) < high.estimated_cost(high.probes_, high.rerank_, 0.0)
    assert low.probes_ <= high.probes_ and low.rerank_ <= high.rerank_
    hard_index = chosen["hard", 0.9]
    assert (hard_index.probes_, hard_index.rerank_) not in {(i.probes_, i.rerank_) for i in (low, high)}


def test_bits_chosen_at_fit_follow_the_data_and_explicit_bits_are_honoured(
    real_features: FeatureSet, tmp_path: Path
) -> None:
    """With ``choose_bits`` the rule picks the bits per table too: on the real features (4,913 indexed) and on an
    eighth of them, the chosen bits are each size's cheapest candidate reaching the target (the candidates follow
    log2 n, so they differ), and the index reaches the target on the collection's held-out queries; without
    ``choose_bits`` the given bits are kept; the chosen bits are saved."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"], dtype=np.float32)
    with pytest.raises(ValueError, match="choose_bits"):
        BlockPolytopeIndex(8, 2, last_dim=2, choose_bits=True)
    chosen = {}
    for name, rows in {"all": X, "eighth": X[::8]}.items():
        index = BlockPolytopeIndex(8, 2, last_dim=2, target_recall=0.9, choose_bits=True).fit(rows)
        candidates = BlockPolytopeIndex.bit_candidates(len(rows))
        tried = {bits: (cost, reached) for bits, _, _, _, cost, reached in index.bits_tried_}
        assert index.bits in candidates and list(tried) == candidates[: len(tried)]  # most bits first
        assert tried[index.bits] == (min(cost for cost, reached in tried.values() if reached), True)
        assert index.setting.startswith(f"b{index.bits} T{index.probes_} R{index.rerank_} chosen for recall@10 0.9")
        chosen[name] = index
    assert chosen["all"].bits != chosen["eighth"].bits
    exact = SequentialScan().fit(X).search(Q, 10).ids
    held_out = recall_at_k(chosen["all"].search(Q, 10).ids, exact, 10).mean()
    assert chosen["all"].tuned_recall_ >= 0.9 and held_out >= 0.88, held_out
    loaded = BlockPolytopeIndex.load(chosen["all"].save(tmp_path / "bits.joblib"))
    assert (loaded.bits, loaded.setting) == (chosen["all"].bits, chosen["all"].setting)
    np.testing.assert_array_equal(loaded.search(Q[:20], 10).ids, chosen["all"].search(Q[:20], 10).ids)
    hashes, last_dim = hashes_for_bits(48, 11)
    explicit = BlockPolytopeIndex(8, hashes, last_dim=last_dim, target_recall=0.9).fit(X)
    assert explicit.bits == 11 and explicit.bits_tried_ == [] and explicit.setting.startswith("T")


def test_bits_chosen_on_a_sample_carry_to_the_full_rows_as_an_offset(
    real_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ``_BIT_SAMPLE`` rows the bits are chosen on a sample and carried to n as the same offset from log2: on
    the real features (4,913 indexed) with samples of 1,024 and 2,048 rows the carried bits are within one bit of the
    choice made on all the rows (the candidates tried are the sample's), the full rows are hashed at them, and the
    index still reaches the target on the held-out queries; explicit bits are kept whatever the size."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"], dtype=np.float32)
    full = BlockPolytopeIndex(8, 2, last_dim=2, target_recall=0.9, choose_bits=True).fit(X)
    assert full.bits_sample_ is None
    exact = SequentialScan().fit(X).search(Q, 10).ids
    for size in (1024, 2048):
        monkeypatch.setattr(BlockPolytopeIndex, "_BIT_SAMPLE", size)
        index = BlockPolytopeIndex(8, 2, last_dim=2, target_recall=0.9, choose_bits=True).fit(X)
        assert index.bits_sample_ is not None and index.bits_sample_[0] == size
        sample_bits = index.bits_sample_[1]
        assert sample_bits in BlockPolytopeIndex.bit_candidates(size)
        assert [row[0] for row in index.bits_tried_] == BlockPolytopeIndex.bit_candidates(size)
        assert index.bits == round(np.log2(len(X))) - (round(np.log2(size)) - sample_bits)
        assert abs(index.bits - full.bits) <= 1, (size, index.bits, full.bits)
        assert index._signs.shape[0] == 8 * index.n_projections and index.tuning_  # hashed at the carried bits
        held_out = recall_at_k(index.search(Q, 10).ids, exact, 10).mean()
        assert index.tuned_recall_ >= 0.9 and held_out >= 0.88, (size, held_out)
    hashes, last_dim = hashes_for_bits(48, 11)  # above the sample's size, explicit bits are still kept
    explicit = BlockPolytopeIndex(8, hashes, last_dim=last_dim, target_recall=0.9).fit(X)
    assert explicit.bits == 11 and explicit.bits_sample_ is None and explicit.bits_tried_ == []


def test_sign_sketches_kernel_matches_the_reference_and_ranks_coarser_than_uint8(
    real_features: FeatureSet, tmp_path: Path
) -> None:
    """code="sign" (cbir.indexes.kernels.sketch): on the real features the sketches are the signs of the centred
    PCA coordinates packed as the bit-by-bit reference packs them, the popcount block kernel returns the numpy
    reference's answers, one query in one call the batch's; at the same probes a shortlist of 30 sketches finds
    less than 30 uint8 codes (1 bit against 8 per axis), and a longer one recovers it; saved and loaded as such."""
    roles = np.asarray(real_features.roles)
    X = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    Q = np.ascontiguousarray(real_features.features[roles == "query"], dtype=np.float32)
    hashes, last_dim = hashes_for_bits(48, max(4, int(np.log2(len(X))) - 2))
    index = BlockPolytopeIndex(8, hashes, last_dim=last_dim, probes=8, code="sign").fit(X)
    assert index._blocks.dtype == np.uint64 and index._blocks.shape == (8 * len(X), 2)  # 128 axes: 16 bytes
    centred = (X - index._pca.mean) @ index._score_pca.components
    signs = kernels.sign_sketches_reference(index._reduced, index._zero())
    np.testing.assert_array_equal(index._blocks, signs[index.tables.bucket_ids])
    np.testing.assert_array_equal(kernels.sign_sketches(index._reduced, index._zero()), signs)
    exact_signs = kernels.sign_sketches_reference(centred, np.zeros(128, np.float32))
    agree = np.unpackbits(exact_signs.view(np.uint8)) == np.unpackbits(signs.view(np.uint8))
    assert agree.mean() > 0.97  # the uint8 codes' rounding flips a coordinate near the centre
    arguments = _kernel_arguments(index, Q[:60], probes=8)
    arguments.update(units=kernels.sign_sketches(arguments["units"], index._zero()), k=10, rerank=30)
    scores, ids, visited = kernels.block_search(**arguments)
    ref_scores, ref_ids, ref_visited = kernels.block_search_reference(**arguments)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    np.testing.assert_array_equal(visited, ref_visited)
    batch = index.search(Q, 10)
    for i in range(0, len(Q), 9):
        np.testing.assert_array_equal(index.search(Q[i : i + 1], 10).ids[0], batch.ids[i])
    exact = SequentialScan().fit(X).search(Q, 10).ids
    uint8 = BlockPolytopeIndex(8, hashes, last_dim=last_dim, probes=8).fit(X)
    recall = {name: recall_at_k(ix.search(Q, 10).ids, exact, 10).mean() for name, ix in (("u", uint8), ("s", index))}
    index.rerank = 300
    longer = recall_at_k(index.search(Q, 10).ids, exact, 10).mean()
    assert recall["s"] < recall["u"] - 0.05 and longer > recall["s"] + 0.05
    loaded = BlockPolytopeIndex.load(index.save(tmp_path / "sign.joblib"))
    assert loaded.params["code"] == "sign" and loaded._blocks.dtype == np.uint64
    np.testing.assert_array_equal(loaded.search(Q[:20], 10).ids, index.search(Q[:20], 10).ids)
    with pytest.raises(ValueError, match="code must be one of"):
        BlockPolytopeIndex(code="pq4")
