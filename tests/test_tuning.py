"""cbir.evaluation.tuning on synthetic features (fast, exact expectations): default widths and slider ranges,
evaluation of a
setting, the background sweep with its Pareto frontiers and the recommended setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from builders import save_feature_set, synthetic_feature_set

from cbir.evaluation import sweep as sweep_module
from cbir.evaluation import tuning
from cbir.evaluation.sweep import budgeted_sweep, recommend, sweep_split
from cbir.features import workspace
from cbir.features.sources import FeatureSet
from cbir.indexes import registry, widths


def test_default_width_and_slider_range() -> None:
    feature_set = synthetic_feature_set()
    features = tuning.searchable_features(feature_set)
    width = widths.default_width(features)
    low, high, step = tuning.width_range(width)
    assert low < width < high and 0 < step < high - low
    grid = tuning.default_grid(features)
    assert width in grid["bucket_width"]  # the tuning page's default setting is a sweep point
    assert grid["bucket_width"] == widths.width_grid(width)  # the one width grid, the one rounding rule
    assert widths.width_grid(1234.5678, (0.5, 1.0)) == [617.0, 1230.0]
    cosine = widths.default_width(features, "cosine")
    assert 0 < cosine < 2  # unit-sphere distances


def test_evaluate_config_scan_vs_lsh_and_slider_directions() -> None:
    feature_set = synthetic_feature_set()
    scan = tuning.evaluate_config(feature_set, registry.IndexConfig())
    assert scan.map > 0.9 and scan.visited_fraction == 1.0 and scan.n_queries == 20
    assert scan.recall == 1.0  # the scan is its own reference
    assert scan.n_indexed == 100  # 80 index + 20 distractors
    assert tuning.evaluate_config(feature_set, registry.IndexConfig(), with_distractors=False).n_indexed == 80
    base = tuning.default_lsh_config(tuning.searchable_features(feature_set))

    def visited(**changes: float) -> float:
        return tuning.evaluate_config(feature_set, dataclasses.replace(base, **changes)).mean_visited

    assert visited(n_tables=10) > visited(n_tables=1)
    assert visited(n_projections=1) > visited(n_projections=8)
    assert visited(bucket_width=base.bucket_width * 4) > visited(bucket_width=base.bucket_width / 4)
    assert visited(probes=10) >= visited(probes=0)


@pytest.mark.slow
def test_background_sweep_of_a_feature_set(tmp_path: Path) -> None:
    feature_set = synthetic_feature_set()
    path = save_feature_set(feature_set, tmp_path / "synthetic.joblib")
    version = workspace.file_version(path)
    background = tuning.sweep_for(path, version)
    # the default grid, plus the exact scan, plus the reference indexes at each of their settings
    assert len(background) == 1 + 5 * 4 * 3 + len(tuning.reference_configs()) == tuning.DEFAULT_SWEEP_SIZE
    assert background["index"].value_counts().to_dict() == {
        "lsh": 60,
        "hnsw": len(tuning.REFERENCE_EF),
        "ivf_flat": len(tuning.REFERENCE_N_PROBE),
        "hnswlib": len(tuning.REFERENCE_HNSWLIB_EF),
        "cross_polytope": 1 + len(tuning.REFERENCE_POLYTOPE_PROBES),  # T, R chosen at fit; then the T curve
        "scan": 1,
    }
    # the sliders' default setting is one of the background sweep's points
    assert tuning.lsh_defaults_for(path, version).label in background["label"].tolist()
    # the path-keyed sweep is the in-memory one
    split = tuning.evaluation_split(feature_set)
    in_memory = tuning.sweep_table(split, grid=tuning.default_grid(tuning.searchable_features(feature_set)))
    figures = ["label", "map", "recall", "mean_visited", "pareto"]
    pd.testing.assert_frame_equal(background[figures], in_memory[figures])


def test_the_sweep_is_kept_on_disk_and_made_again_for_a_new_version(tmp_path: Path, monkeypatch) -> None:
    path = save_feature_set(synthetic_feature_set(), tmp_path / "synthetic.joblib")
    version = workspace.file_version(path)
    first = tuning.sweep_for(path, version, "cosine")
    assert tuning.sweep_cache_file(path, version, "cosine", True).is_file()
    assert tuning.sweep_cache_file(path, version, "euclidean", True) != tuning.sweep_cache_file(
        path, version, "cosine", True
    )
    computed = []
    real_sweep_table = tuning.sweep_table
    monkeypatch.setattr(tuning, "sweep_table", lambda *a, **kw: computed.append(1) or real_sweep_table(*a, **kw))
    again = tuning.sweep_for(path, version, "cosine")  # a later process: read back, nothing computed
    assert computed == []
    pd.testing.assert_frame_equal(again, first)
    tuning.sweep_for(path, version + 1, "cosine")  # the feature set changed: computed again
    assert computed == [1]
    tuning.sweep_for(path, version + 2, "cosine", kept_as=version)  # grown in place: the kept sweep is reused
    assert computed == [1]
    # a sweep kept by an older version of the code, before the one-query-at-a-time column: computed again
    file = tuning.sweep_cache_file(path, version, "cosine", True)
    first.drop(columns="single_query_ms").to_parquet(file, index=False)
    upgraded = tuning.sweep_for(path, version, "cosine")
    assert computed == [1, 1] and (upgraded["single_query_ms"] > 0).all()
    assert tuning.sweep_for(path, version, "cosine")["single_query_ms"].equals(upgraded["single_query_ms"])
    assert computed == [1, 1]  # and kept again


def test_sweep_pareto_and_recommendation(tmp_path: Path) -> None:
    feature_set = synthetic_feature_set()
    path = save_feature_set(feature_set, tmp_path / "synthetic.joblib")
    version = workspace.file_version(path)
    width = widths.default_width(tuning.searchable_features(feature_set))
    grid = {"n_tables": [1, 7], "n_projections": [2, 8], "bucket_width": [width, 2 * width]}
    seen = []
    split = tuning.evaluation_split(feature_set)
    table = tuning.sweep_table(split, grid=grid, progress=lambda done, total: seen.append((done, total)))
    # progress counts the reference rows
    assert len(table) == 9 + len(tuning.reference_configs()) == seen[-1][0] == seen[-1][1]
    assert table.iloc[0]["index"] == "scan" and table["pareto"].any() and table["recall_pareto"].any()
    assert {"map", "recall", "mean_visited", "pareto", "recall_pareto", "label", "n_tables"} <= set(table.columns)
    assert table.iloc[0]["recall"] == 1.0 and table["recall"].between(0, 1).all()
    recommended = tuning.recommended_config(table, n_indexed=100)
    assert recommended is not None and recommended.kind == "lsh"
    row = table[table["label"] == recommended.label].iloc[0]
    assert row["mean_visited"] <= tuning.RECOMMEND_BUDGET_FRACTION * 100
    assert tuning.recommended_config(table, n_indexed=100, budget_fraction=-1.0) is None
    # the tuning page's slider evaluation of a sweep point gives the sweep's figures
    for _, row in table.iterrows():
        result = tuning.evaluate_for(path, version, registry.IndexConfig.from_row(row))
        if row["index"] in ("hnsw", "hnswlib"):  # graphs built in parallel threads: the same up to insertion order
            assert abs(result.recall - row["recall"]) <= 0.05
        else:
            assert (result.map, result.recall, result.mean_visited) == (row["map"], row["recall"], row["mean_visited"])


FIGURES = ["n_tables", "n_projections", "bucket_width", "map", "recall", "mean_score", "mean_visited"]


def test_the_budgeted_sweep_recommends_what_the_whole_sweep_does(
    real_features: FeatureSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On real features: the settings above the visit budget are counted, not searched; the others carry the whole
    sweep's figures, so the recommendation (the comparison page's LSH setting) is the sweep's."""
    split = tuning.evaluation_split(real_features)
    width = widths.default_width(tuning.width_sample(real_features))
    grid = {"n_tables": [1, 4, 10], "n_projections": [1, 2], "bucket_width": [width, 2 * width]}
    whole = sweep_split(split, grid)
    budget = tuning.RECOMMEND_BUDGET_FRACTION * split.n_indexed
    seen = []
    budgeted = budgeted_sweep(split, grid, budget, progress=lambda done, total: seen.append((done, total)))
    within = whole[whole["mean_visited"] <= budget].reset_index(drop=True)
    assert 0 < len(budgeted) < len(whole) and seen[-1] == (len(whole), len(whole))  # some were left out
    pd.testing.assert_frame_equal(budgeted[FIGURES], within[FIGURES])
    best = registry.IndexConfig.from_row(recommend(budgeted, budget))
    assert best == tuning.recommended_config(whole, split.n_indexed)
    # settings fitted and searched in two threads at once (the app's recommendation): the same rows in the grid's
    # order, progress in that order too
    seen.clear()
    threaded = budgeted_sweep(split, grid, budget, progress=lambda done, total: seen.append((done, total)), workers=2)
    pd.testing.assert_frame_equal(threaded[FIGURES], within[FIGURES])
    assert seen == [(done, len(whole)) for done in range(1, len(whole) + 1)]
    # a collection too large to rank from one product (RANKED_PAIRS): each setting searched, the same figures
    monkeypatch.setattr(sweep_module, "RANKED_PAIRS", split.n_queries * split.n_indexed - 1)
    searched = budgeted_sweep(split, grid, budget)
    pd.testing.assert_frame_equal(searched[FIGURES], within[FIGURES])
    assert searched["query_ms"].notna().all() and budgeted["query_ms"].isna().all()


def test_the_recommendation_is_the_sweep_s_whether_or_not_the_sweep_is_on_disk(tmp_path: Path, monkeypatch) -> None:
    path = save_feature_set(synthetic_feature_set(), tmp_path / "synthetic.joblib")
    version = workspace.file_version(path)
    n_indexed = tuning.split_for(path, version).n_indexed
    without_sweep = tuning.recommended_for(path, version)  # found by the budgeted search, then kept
    assert not tuning.sweep_cache_file(path, version, "euclidean", True).is_file()
    sweep = tuning.sweep_for(path, version)
    assert without_sweep is not None and without_sweep == tuning.recommended_config(sweep, n_indexed)
    # with the sweep on disk (the tuning page's, kept under the base version) it is read from it, nothing searched
    monkeypatch.setattr(tuning, "budgeted_sweep", lambda *a, **kw: pytest.fail("searched again"))
    assert tuning.recommended_for(path, version + 1, kept_as=version) == without_sweep
    kept = sweep.assign(map=sweep["map"].where(sweep["label"] != without_sweep.label, 0.0))  # another best
    kept.to_parquet(tuning.sweep_cache_file(path, version, "euclidean", True))
    assert tuning.recommended_for(path, version) == tuning.recommended_config(kept, n_indexed) != without_sweep


def test_nearest_grid_point() -> None:
    assert tuning.nearest([1, 2, 4, 7, 10], 8) == 7


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_width_sample_gives_the_default_width_of_all_searchable_rows(metric: str) -> None:
    from cbir.features.sources import FeatureSet
    from cbir.features.synthetic import hard_vectors, synthetic_catalog

    for n in (300, 3000):  # fewer and more searchable rows than the sample
        feature_set = FeatureSet(hard_vectors(n, 16, seed=n), synthetic_catalog(n), pd.DataFrame())
        sample = tuning.width_sample(feature_set)
        assert len(sample) == min(tuning.WIDTH_SAMPLE_SIZE, int((feature_set.roles != "query").sum()))
        expected = widths.default_width(tuning.searchable_features(feature_set), metric)
        assert widths.default_width(sample, metric) == expected


def test_the_found_recommendation_is_kept_under_the_base_version(tmp_path: Path, monkeypatch) -> None:
    """An image added or removed in place (a new file version, the same base version: the app's ``kept_as``) reads
    the recommendation the budgeted search found for the base version back, as it reads the sweep; a version of its
    own (a new extraction) is searched again."""
    path = save_feature_set(synthetic_feature_set(), tmp_path / "synthetic.joblib")
    version = workspace.file_version(path)
    found = tuning.recommended_for(path, version, kept_as=version)
    real, calls = tuning.budgeted_sweep, []
    monkeypatch.setattr(tuning, "budgeted_sweep", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert tuning.recommended_for(path, version + 1, kept_as=version) == found and calls == []
    assert tuning.recommended_for(path, version + 1) == found and calls == [1]
