"""The reference indexes behind the index contract (FAISS HNSW and IVF-Flat, hnswlib), the reference rows of the
tuning sweep, and the fastest-at-a-recall choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import synthetic_feature_set

from cbir.core.errors import CbirError
from cbir.core.metrics import recall_at_k
from cbir.core.names import REFERENCE_KINDS
from cbir.evaluation.evaluate import split_collection
from cbir.evaluation.tuning import (
    REFERENCE_POLYTOPE_PROBES,
    fastest_config,
    reference_configs,
    reference_sweep,
    sweep_table,
)
from cbir.features.sources import FeatureSet
from cbir.indexes.base import BUILD_STAGE, NOT_COUNTED, BaseIndex
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.polytope import CrossPolytopeIndex
from cbir.indexes.reference import HNSWIndex, HnswlibIndex, IVFFlatIndex, PeerUnavailableError, default_lists
from cbir.indexes.registry import DEFAULT_TARGET_RECALL, UINT8_RERANK, UINT8_SCORE_DIM, IndexConfig
from cbir.indexes.scan import SequentialScan

PEERS = {
    "hnsw": lambda metric: HNSWIndex(metric, ef_search=128),
    "ivf_flat": lambda metric: IVFFlatIndex(metric, n_probe=16),
    "hnswlib": lambda metric: HnswlibIndex(metric, ef=128),
}


def _points(n: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("kind", list(PEERS))
def test_peer_answers_like_the_scan_on_real_features(real_features: FeatureSet, kind: str, metric: str) -> None:
    roles = real_features.roles
    data = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    queries = np.ascontiguousarray(real_features.features[roles == "query"][:200], dtype=np.float32)
    exact = SequentialScan(metric).fit(data).search(queries, 10)
    found = PEERS[kind](metric).fit(data).search(queries, 10)
    assert (
        len(queries) >= 50
        and found.ids.shape == (len(queries), 10)
        and found.distances.dtype == np.float32
        and found.ids.dtype == np.int64
    )
    assert recall_at_k(found.ids, exact.ids).mean() > 0.9
    # the scores are the same kind of number as the scan's: where the ids agree, so do the scores
    same = found.ids == exact.ids
    np.testing.assert_allclose(found.distances[same], exact.distances[same], rtol=1e-4, atol=1e-4)
    if kind == "hnswlib":
        assert (found.visited == NOT_COUNTED).all()  # hnswlib does not count its distance computations
    else:
        # a few percent of the default collection (on the small one, ef 128 or 16 lists may reach every object)
        limit = 0.3 * len(data) if len(data) > 2000 else len(data)
        assert (found.visited > 0).all() and found.visited.mean() <= limit


def test_ivf_visited_is_the_probed_lists_and_grows_with_n_probe() -> None:
    data, queries = _points(), _points(50, seed=1)
    exact = SequentialScan().fit(data).search(queries, 10)
    index = IVFFlatIndex(n_probe=1).fit(data)
    assert index.lists == default_lists(len(data)) == round(4 * np.sqrt(len(data)))
    low = index.search(queries, 10)
    index.n_probe = 16
    high = index.search(queries, 10)
    assert recall_at_k(high.ids, exact.ids).mean() > recall_at_k(low.ids, exact.ids).mean()
    assert high.visited.mean() > low.visited.mean()
    # visited = the sizes of the probed lists: what faiss' own counter counts for the same search
    import faiss

    faiss.cvar.indexIVF_stats.reset()
    index._index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=16))
    assert high.visited.sum() == faiss.cvar.indexIVF_stats.ndis
    index.n_probe = index.lists  # every list: the exact answer
    assert recall_at_k(index.search(queries, 10).ids, exact.ids).mean() == 1.0


def test_hnsw_more_ef_more_recall_and_more_visited() -> None:
    data, queries = _points(), _points(50, seed=1)
    exact = SequentialScan().fit(data).search(queries, 10)
    index = HNSWIndex(ef_search=10).fit(data)
    low = index.search(queries, 10)
    index.ef_search = 200
    high = index.search(queries, 10)
    assert recall_at_k(high.ids, exact.ids).mean() >= recall_at_k(low.ids, exact.ids).mean()
    assert high.visited.mean() > low.visited.mean()


@pytest.mark.parametrize("kind", list(PEERS))
def test_peer_add_remove_copy_save_load(kind: str, tmp_path: Path) -> None:
    data, queries = _points(600), _points(5, seed=1)
    index: BaseIndex = PEERS[kind]("euclidean").fit(data[:500])
    twin = index.copy()
    ids = twin.add(data[500:])
    assert ids.tolist() == list(range(500, 600)) and twin.n_objects == 600 and index.n_objects == 500
    # an added row finds itself; the original (copied before) does not hold it
    assert twin.search(data[550:551], 1).ids[0, 0] == 550
    assert index.search(data[550:551], 1).ids[0, 0] != 550
    first = twin.search(queries, 5).ids[:, 0]
    assert twin.remove(first) == len(set(first.tolist()))
    after = twin.search(queries, 5).ids
    assert not np.isin(after, first).any() and (after >= 0).all()
    loaded = type(twin).load(twin.save(tmp_path / f"{kind}.joblib"))
    assert loaded.params == twin.params and loaded.n_removed == twin.n_removed
    np.testing.assert_array_equal(loaded.search(queries, 5).ids, after)


@pytest.mark.parametrize("kind", [*PEERS, "lsh"])
def test_an_index_with_a_reporting_build_fits_with_and_without_progress(kind: str) -> None:
    """The peers and LSHIndex write only ``_fit_reporting``; the base class' ``_fit`` runs it without progress."""
    data = _points(700)
    make = PEERS.get(kind, lambda metric: LSHIndex(4, 2, 4.0, metric=metric))
    index = make("euclidean")
    assert type(index)._fit is BaseIndex._fit  # no copy of the default
    index._fit(data)
    index._data = data
    assert index.search(data[:20], 1).ids[:, 0].tolist() == list(range(20))
    reports: list[tuple[str, int, int]] = []
    make("euclidean").fit(data, progress=lambda *report: reports.append(report))
    assert reports[-1] == (BUILD_STAGE, 700, 700)


def test_an_index_that_writes_neither_build_says_so() -> None:
    class Unbuilt(BaseIndex):
        metric = "euclidean"

    with pytest.raises(NotImplementedError, match="neither _fit nor _fit_reporting"):
        Unbuilt().fit(_points(10))


def test_peers_with_fewer_objects_than_k_pad_the_answer() -> None:
    data = _points(6)
    for make in PEERS.values():
        result = make("euclidean").fit(data).search(data[:2], 10)
        assert (result.ids[:, :6] >= 0).all() and (result.ids[:, 6:] == -1).all()
        assert np.isinf(result.distances[:, 6:]).all()


def test_peer_errors_are_cbir_errors() -> None:
    assert issubclass(PeerUnavailableError, CbirError)
    with pytest.raises(ValueError, match="metric"):
        IVFFlatIndex("manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_probe"):
        IVFFlatIndex(n_probe=0)


def test_reference_rows_and_fastest_choice() -> None:
    fs = synthetic_feature_set(n_index=60, n_query=10)
    split = split_collection(fs.features, fs.labels, fs.roles)
    reference = reference_sweep(split, [IndexConfig("hnsw", ef_search=8), IndexConfig("hnsw", ef_search=64)])
    assert reference["index"].tolist() == ["hnsw", "hnsw"] and reference["ef_search"].tolist() == [8, 64]
    assert reference["fit_seconds"].nunique() == 1  # one graph, searched at both settings
    assert reference["recall"].between(0, 1).all()
    table = sweep_table(split, grid={"n_tables": [2], "n_projections": [2]})
    # the tuning sweep holds every reference family, each at all its settings, labelled
    assert set(table["index"]) == {"scan", "lsh", *REFERENCE_KINDS}
    references = table[table["index"].isin(REFERENCE_KINDS)]
    polytope = table[table["index"] == "cross_polytope"]
    chosen_bits = int(polytope.loc[polytope["target_recall"] > 0, "bits"].iloc[0])
    # each reference row labelled with its setting; the rule's row with the bits it chose
    expected = [config.label.replace("b, T, R", f"b={chosen_bits} T, R") for config in reference_configs()]
    assert references["label"].tolist() == expected
    assert (table.loc[table["index"] == "ivf_flat", "n_probe"] > 0).all()
    assert table.loc[table["index"] == "hnswlib", "mean_visited"].isna().all()  # not counted, not zero
    curve = polytope[polytope["target_recall"] == 0]  # the explicit T curve, after the point chosen by the rule
    assert (curve["bits"] == 10).all() and curve["probes"].tolist() == list(REFERENCE_POLYTOPE_PROBES)
    chosen = polytope[polytope["target_recall"] > 0]  # its bits chosen at fit too (log2(n) - 2, - 3 or - 4)
    assert len(chosen) == 1 and 4 <= chosen_bits <= 12
    assert len(chosen) == 1 and chosen["recall"].iloc[0] > 0 and chosen["probes"].iloc[0] >= 0  # the T it chose
    assert not references["pareto"].any()  # reference points, not part of LSH's frontier
    exact_only = fastest_config(table, 1.0)
    assert exact_only["recall"] == 1.0
    loose = fastest_config(table, 0.0)
    assert loose["single_query_ms"] == table["single_query_ms"].min()  # one query at a time, as the Search page
    assert fastest_config(table.drop(columns="single_query_ms"), 0.0)["query_ms"] == table["query_ms"].min()
    assert IndexConfig.from_row(fastest_config(table, 0.5)).kind in {"scan", "lsh", *REFERENCE_KINDS}
    # every row rebuilds the setting it was measured with
    for _, row in references.iterrows():
        assert IndexConfig.from_row(row).label == row["label"]
    with pytest.raises(ValueError, match="target recall"):
        fastest_config(table, 1.5)


def test_the_cross_polytope_reference_points_use_the_uint8_shortlist() -> None:
    """The tuning page's cross-polytope line: PCA-48 hashing, the shortlist on uint8 codes of benchmarks/ann.py's
    axes (UINT8_SCORE_DIM, capped at the dimension) with its UINT8_RERANK, and a label that says so."""
    configs = [config for config in reference_configs() if config.kind == "cross_polytope"]
    assert configs
    for config in configs:
        index = config.build()
        assert isinstance(index, CrossPolytopeIndex)
        assert (index.reduce_dim, index.rerank, index.score_dim) == (48, UINT8_RERANK, UINT8_SCORE_DIM)
        assert f"of uint8 PCA-{UINT8_SCORE_DIM}" in config.label
        if config.target_recall:  # the app's: T and R chosen at fit
            assert index.target_recall == config.target_recall == DEFAULT_TARGET_RECALL
            assert "T, R chosen at fit for recall@10 0.9" in config.label
        else:
            assert index.target_recall is None and f"T={config.probes} R={UINT8_RERANK}" in config.label
    features = _points(300, dim=64)
    index = configs[0].build().fit(features)
    assert index._reduced is not None and index._reduced.dtype == np.uint8
    assert index._reduced.shape == (300, 64)  # min(UINT8_SCORE_DIM, d) axes, as the benchmark's grids
    assert index.search(features[:5], 1).ids[:, 0].tolist() == list(range(5))


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
def test_the_search_engine_answers_with_every_reference_index(kind: str) -> None:
    """What the Search page does when "Fastest at a recall" picks a reference index."""
    from cbir.service.search import SearchEngine

    feature_set = synthetic_feature_set()
    engine = SearchEngine(feature_set)
    row = int(np.flatnonzero(feature_set.roles == "index")[3])
    answer = engine.query_vector(feature_set.features[row], IndexConfig(kind))  # type: ignore[arg-type]
    assert answer.results["id"].iloc[0] == row and len(answer.results) == 10
    assert answer.index_label == IndexConfig(kind).label  # type: ignore[arg-type]
    if kind == "hnswlib":
        assert answer.visited == NOT_COUNTED and np.isnan(answer.visited_fraction)
    elif kind == "cross_polytope":  # codes scored: a member met in several of the L tables counts each time
        n_tables = IndexConfig(kind).n_tables
        assert 0 < answer.visited <= n_tables * answer.n_objects and 0 < answer.visited_fraction <= n_tables
    else:
        assert 0 < answer.visited <= answer.n_objects and 0 < answer.visited_fraction <= 1


def test_ivf_s_short_k_means_keeps_the_recall_of_faiss_default(
    real_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IVF-Flat's coarse quantiser trained with TRAIN_ITERATIONS k-means iterations (the comparison page builds it
    cold) answers the real features' queries within 0.01 recall@10 of faiss' default 25 iterations, above 0.9."""
    from cbir.indexes import reference

    roles = real_features.roles
    data = np.ascontiguousarray(real_features.features[roles != "query"], dtype=np.float32)
    queries = np.ascontiguousarray(real_features.features[roles == "query"], dtype=np.float32)
    exact = SequentialScan().fit(data).search(queries, 10).ids
    short = recall_at_k(IVFFlatIndex(n_probe=16).fit(data).search(queries, 10).ids, exact).mean()
    monkeypatch.setattr(reference, "TRAIN_ITERATIONS", 25)
    default = recall_at_k(IVFFlatIndex(n_probe=16).fit(data).search(queries, 10).ids, exact).mean()
    assert short > 0.9 and abs(short - default) < 0.01, (short, default)
