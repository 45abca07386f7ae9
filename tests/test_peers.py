"""The FAISS HNSW reference index behind the index contract, and the fastest-at-a-recall choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import synthetic_feature_set

from cbir.evaluation import recall_at_k, split_collection
from cbir.index import SequentialScan
from cbir.peers import HNSWIndex
from cbir.search import IndexConfig
from cbir.tuning import fastest_config, reference_sweep, sweep_table


def _points(n: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_hnsw_answers_like_the_scan_with_far_fewer_distances(metric: str) -> None:
    data, queries = _points(), _points(50, seed=1)
    exact = SequentialScan(metric).fit(data).search(queries, 10)
    found = HNSWIndex(metric, ef_search=128).fit(data).search(queries, 10)
    assert found.ids.shape == (50, 10) and found.distances.dtype == np.float32
    assert recall_at_k(found.ids, exact.ids).mean() > 0.9
    # the scores are the same kind of number as the scan's: where the ids agree, so do the scores
    same = found.ids == exact.ids
    np.testing.assert_allclose(found.distances[same], exact.distances[same], rtol=1e-4, atol=1e-4)
    assert (found.visited > 0).all() and (found.visited < len(data)).all()


def test_hnsw_more_ef_more_recall_and_more_visited() -> None:
    data, queries = _points(), _points(50, seed=1)
    exact = SequentialScan().fit(data).search(queries, 10)
    index = HNSWIndex(ef_search=10).fit(data)
    low = index.search(queries, 10)
    index.ef_search = 200
    high = index.search(queries, 10)
    assert recall_at_k(high.ids, exact.ids).mean() >= recall_at_k(low.ids, exact.ids).mean()
    assert high.visited.mean() > low.visited.mean()


def test_hnsw_save_load_round_trip(tmp_path: Path) -> None:
    data, queries = _points(500), _points(5, seed=1)
    index = HNSWIndex(ef_search=32).fit(data)
    loaded = HNSWIndex.load(index.save(tmp_path / "hnsw.joblib"))
    assert loaded.params == index.params
    np.testing.assert_array_equal(loaded.search(queries, 5).ids, index.search(queries, 5).ids)


def test_reference_rows_and_fastest_choice() -> None:
    fs = synthetic_feature_set(n_index=60, n_query=10)
    split = split_collection(fs.features, fs.labels, fs.roles)
    reference = reference_sweep(split, ef_values=(8, 64))
    assert reference["index"].tolist() == ["hnsw", "hnsw"] and reference["ef_search"].tolist() == [8, 64]
    assert reference["recall"].between(0, 1).all()
    table = sweep_table(split, grid={"n_tables": [2], "n_projections": [2]})
    assert set(table["index"]) == {"scan", "lsh", "hnsw"}
    assert not table.loc[table["index"] == "hnsw", "pareto"].any()  # a reference, not part of LSH's frontier
    exact_only = fastest_config(table, 1.0)
    assert exact_only["recall"] == 1.0
    loose = fastest_config(table, 0.0)
    assert loose["query_ms"] == table["query_ms"].min()
    assert IndexConfig.from_row(fastest_config(table, 0.5)).kind in {"scan", "lsh", "hnsw"}
    with pytest.raises(ValueError, match="target recall"):
        fastest_config(table, 1.5)
