"""cbir.evaluation.comparison on synthetic feature sets: the comparison table through the one loop (compare), the
recommended
LSH setting, and the distance analysis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from builders import save_feature_set, synthetic_feature_set

from cbir.app import plots
from cbir.core.names import INDEX_LABELS, REFERENCE_KINDS
from cbir.evaluation import comparison, tuning
from cbir.evaluation.evaluate import EvaluationResult
from cbir.features import workspace
from cbir.indexes import registry, widths

REFERENCES = {INDEX_LABELS[kind] for kind in REFERENCE_KINDS}


def _two_feature_sets(tmp_path: Path) -> list[tuple[str, str, int]]:
    with_distractors = save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")
    without = save_feature_set(synthetic_feature_set(n_distractors=0, seed=1), tmp_path / "b.joblib")
    return [(label, path, workspace.file_version(path)) for label, path in (("A", with_distractors), ("B", without))]


def test_comparison_table_shape(tmp_path: Path) -> None:
    seen = []
    result = comparison.compare(
        _two_feature_sets(tmp_path), recommended=False, progress=lambda what, done, total: seen.append((what, total))
    )
    table = result.table
    # A: 6 indexes (scan, LSH, the 4 references) × (with, without); B has no distractors: 6 indexes × (with) only
    assert len(table) == 18 and seen[-1] == ("Comparison", 18)
    assert list(table.columns) == comparison.COMPARISON_COLUMNS
    assert set(table["index"]) == {"exact scan", "LSH", *REFERENCES}
    # the graph indexes find the true neighbours (on 100 objects they compare them all: see test_peers for fewer)
    assert (table.loc[table["index"].isin(["HNSW (faiss)", "HNSW (hnswlib)"]), "recall"] > 0.9).all()
    assert table.loc[table["index"] == "HNSW (hnswlib)", "mean_visited"].isna().all()  # hnswlib does not count
    assert (table.loc[table["index"] == "exact scan", "visited_fraction"] == 1.0).all()
    assert (table.loc[table["index"] == "LSH", "visited_fraction"] < 1.0).all()
    assert (table.loc[table["index"] == "exact scan", "recall"] == 1.0).all()
    assert table["recall"].between(0, 1).all()
    assert table["map"].between(0, 1).all() and (table["score_name"] == "distance").all()
    # both timing modes for every row, the exact scan's too (measured like every other index's)
    assert (table[["single_query_ms", "query_ms"]] > 0).all().all()
    assert table["config"].str.contains("g=7 h=2").sum() == 3  # the default LSH setting
    assert len(result.per_class) == 18 * 4  # one row per job and class
    assert list(result.per_class.columns) == ["feature_set", "index", "distractors", "class", "n_queries", "map"]
    for name, value in (("map", "mAP@10"), ("recall", None), ("mean_visited", None), ("mean_score", None)):
        figure = plots.fig_comparison(table, name, value)
        assert {trace.name for trace in figure.data} == {"exact scan", "LSH", *REFERENCES}
    assert len(plots.fig_comparison_per_class(result.per_class).data) == 12  # A, B × scan, LSH, 4 references
    tradeoff = plots.fig_comparison_tradeoff(table)
    # one trace per index × feature set (colour × symbol), in both distractor facets
    assert {trace.name.split(",")[0] for trace in tradeoff.data} == {"exact scan", "LSH", *REFERENCES}
    assert sum(len(trace.x) for trace in tradeoff.data) == len(table)
    # one query at a time by default, the batch on request
    assert sorted(x for trace in tradeoff.data for x in trace.x) == sorted(table["single_query_ms"])
    batch = plots.fig_comparison_tradeoff(table, x="query_ms")
    assert sorted(x for trace in batch.data for x in trace.x) == sorted(table["query_ms"])
    # the log time axis written in full at 1-2-5 steps covering every point (not Plotly's bare "2 3 … 9 1")
    ticks = np.array(tradeoff.layout.xaxis.tickvals)
    assert ticks.min() <= table["single_query_ms"].min() and ticks.max() >= table["single_query_ms"].max()
    assert all(float(text) == value for text, value in zip(tradeoff.layout.xaxis.ticktext, ticks, strict=True))


def test_compare_uses_the_sweep_and_evaluation_it_is_given(tmp_path: Path) -> None:
    feature_sets = _two_feature_sets(tmp_path)
    sweeps, evaluations = [], []
    width = widths.default_width(tuning.searchable_features(synthetic_feature_set()))
    grid = {"n_tables": [2, 7], "n_projections": [1, 2], "bucket_width": [width]}

    def sweep(path: str, version: int, metric: str) -> pd.DataFrame:  # the app passes its cached sweep
        sweeps.append(path)
        return tuning.sweep_table(tuning.split_for(path, version), metric, grid)

    def evaluate(path: str, version: int, config: registry.IndexConfig, with_distractors: bool) -> EvaluationResult:
        evaluations.append(config)
        return tuning.evaluate_for(path, version, config, with_distractors)

    pairs = []

    def evaluate_pair(path: str, version: int, config: registry.IndexConfig) -> tuple[EvaluationResult, ...]:
        pairs.append((path, config.kind))
        return tuning.evaluate_pair_for(path, version, config)

    result = comparison.compare(feature_sets, sweep=sweep, evaluate=evaluate, evaluate_pair=evaluate_pair)
    assert sweeps == [path for _, path, _ in feature_sets] and len(result.table) == 18
    # A's reference indexes built once for both distractor settings; B has no distractors: one setting each
    assert pairs == [(feature_sets[0][1], kind) for kind in REFERENCE_KINDS]
    assert len(evaluations) == 18 - 2 * len(pairs) == 4 + 6
    _, path, version = feature_sets[0]
    recommended = tuning.recommended_config(sweep(path, version, "euclidean"), 100)
    assert recommended is not None and recommended.label in result.table["config"].tolist()


def test_a_kept_comparison_is_read_back_and_made_again_for_a_new_version(tmp_path: Path) -> None:
    feature_sets = _two_feature_sets(tmp_path)[:1]
    calls = []

    def evaluate(path: str, version: int, config: registry.IndexConfig, with_distractors: bool) -> EvaluationResult:
        calls.append(config)
        return tuning.evaluate_for(path, version, config, with_distractors)

    assert comparison.kept_comparison(feature_sets, recommended=False, references=False) is None
    first = comparison.compare(feature_sets, recommended=False, evaluate=evaluate, references=False, keep=True)
    n_jobs = len(calls)
    kept = comparison.kept_comparison(feature_sets, recommended=False, references=False)  # read, nothing computed
    assert kept is not None and len(calls) == n_jobs
    pd.testing.assert_frame_equal(kept.table, first.table)
    assert comparison.kept_comparison(feature_sets, recommended=False, references=True) is None
    again = comparison.compare(feature_sets, recommended=False, evaluate=evaluate, references=False, keep=True)
    assert len(calls) == n_jobs  # read back: nothing evaluated
    pd.testing.assert_frame_equal(again.table, first.table)
    ((label, path, version),) = feature_sets
    comparison.compare(((label, path, version + 1),), recommended=False, evaluate=evaluate, references=False, keep=True)
    assert len(calls) == 2 * n_jobs  # a changed feature set: evaluated again
    analysis = comparison.distance_analysis_for(path, version, keep=True)
    pd.testing.assert_frame_equal(comparison.distance_analysis_for(path, version, keep=True).table, analysis.table)


def test_comparison_uses_the_recommended_lsh_setting() -> None:
    feature_set = synthetic_feature_set()
    width = widths.default_width(tuning.searchable_features(feature_set))
    grid = {"n_tables": [2, 7], "n_projections": [1, 2], "bucket_width": [width]}
    sweep = tuning.sweep_table(tuning.evaluation_split(feature_set), grid=grid)
    configs = comparison.comparison_configs(feature_set, sweep=sweep)
    assert configs[0] == registry.IndexConfig("scan") and configs[1] == tuning.recommended_config(sweep, 100)
    assert configs[2] == registry.IndexConfig("hnsw")
    assert [config.kind for config in configs[3:]] == ["ivf_flat", "hnswlib", "cross_polytope"]
    # cross-polytope as the tuning page's reference line draws it (L=8), bits, T and R chosen at fit
    assert (configs[5].n_tables, configs[5].bits) == (8, registry.DEFAULT_POLYTOPE_BITS)
    assert configs[5].target_recall == registry.DEFAULT_TARGET_RECALL and "b, T, R chosen at fit" in configs[5].label
    assert comparison.comparison_configs(feature_set)[1] == tuning.default_lsh_config(
        feature_set.features[feature_set.roles != "query"]
    )


def test_distance_analysis() -> None:
    analysis = comparison.distance_analysis(synthetic_feature_set(), n_pairs=500)
    assert analysis.table.iloc[0]["class"] == "(all)" and len(analysis.table) == 5
    assert list(analysis.sample.columns) == ["euclidean", "cosine"] and len(analysis.sample) == 500
    summary = comparison.distance_summary({"A": analysis, "B": analysis})
    assert summary.columns[0] == "feature_set" and len(summary) == 10
    figure = plots.fig_distance_histograms({"A": analysis.sample}, "cosine")
    assert figure.data[0].type == "histogram"


class _FixedExtractor:
    """Stands in for the feature set's model: every photo is embedded as the same given vector."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def transform(self, images: list) -> np.ndarray:
        return np.repeat(self.vector[None, :], len(images), axis=0).astype(np.float32)


def test_hubness_analysis_finds_the_object_every_query_lands_on() -> None:
    from PIL import Image

    feature_set = synthetic_feature_set()
    features = feature_set.features.copy()
    hub_row = int(np.flatnonzero(feature_set.roles == "index")[0])
    queries = feature_set.roles == "query"
    # every query sits right next to one indexed object: that object fills one slot of every top-10
    features[queries] = features[hub_row] + np.random.default_rng(0).normal(0, 1e-3, (int(queries.sum()), 16))
    feature_set = replace(feature_set, features=features)
    photos = {"a": Image.new("RGB", (8, 8)), "b": Image.new("RGB", (8, 8), "white")}
    analysis = comparison.hubness_analysis(feature_set, _FixedExtractor(features[hub_row]), photos)
    assert analysis.hubs["relpath"].iloc[0] == feature_set.catalog["relpath"].iloc[hub_row]
    assert analysis.hubs["count"].iloc[0] == int(queries.sum())
    assert analysis.summary["hub_share"] >= 0.1
    assert analysis.summary["ood_hub_share"] > 0
    assert sorted(analysis.photo_answers) == ["a", "b"]
    assert len(analysis.photo_answers["a"]) == 10
    without_photos = comparison.hubness_analysis(feature_set)
    assert "ood_hub_share" not in without_photos.summary


def test_reference_indexes_wait_for_a_request_on_large_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    feature_set = synthetic_feature_set()
    kinds = [config.kind for config in comparison.comparison_configs(feature_set, references=False)]
    assert kinds == ["scan", "lsh"]
    monkeypatch.setattr(comparison, "SWEEP_ON_REQUEST", 10)  # this small set counts as large now
    assert [config.kind for config in comparison.comparison_configs(feature_set)] == ["scan", "lsh"]
    # asked for on a large set: HNSW only (IVF's k-means, hnswlib and cross-polytope take minutes more there)
    kinds = [config.kind for config in comparison.comparison_configs(feature_set, references=True)]
    assert kinds == ["scan", "lsh", "hnsw"]


# A new server process (a restart): what the comparison page computes is read back from disk, nothing computed
_RESTARTED = """
import sys
from cbir.evaluation import comparison, sweep, tuning

def computed(*args, **kwargs):
    raise SystemExit("computed again")

tuning.evaluate_for = comparison.evaluate_for = tuning.budgeted_sweep = computed
comparison.distance_analysis = comparison.hubness_analysis = computed
label, path, version = sys.argv[1:4]
sets = ((label, path, int(version)),)
print(comparison.compare(sets, recommended=True, references=False, keep=True).table["config"].tolist())
assert comparison.kept_hubness(path, int(version), photos=False) is not None
comparison.distance_analysis_for(path, int(version), keep=True)
comparison.hubness_analysis_for(path, int(version), keep=True)
"""


def test_the_comparison_page_s_results_outlive_a_restart_and_not_a_changed_feature_set(tmp_path: Path) -> None:
    """compare, the recommendation, the distance and hubness analyses with ``keep``: a new process (a restarted
    server, Streamlit's caches empty) reads them back with every computation disabled; an added image (a new
    version of the feature set) makes the comparison and the analyses be computed again."""
    import subprocess
    import sys

    from cbir.core import config

    feature_set = synthetic_feature_set()
    path = save_feature_set(feature_set, tmp_path / "a.joblib")
    sets = (("A", path, workspace.file_version(path)),)
    first = comparison.compare(sets, recommended=True, references=False, keep=True)
    comparison.distance_analysis_for(path, sets[0][2], keep=True)
    comparison.hubness_analysis_for(path, sets[0][2], keep=True)
    assert comparison.kept_hubness(path, sets[0][2], photos=True) is None  # kept without the photos only
    restarted = subprocess.run(
        [sys.executable, "-c", _RESTARTED, *map(str, sets[0])],
        capture_output=True, text=True, timeout=300, cwd=config.PROJECT_ROOT,
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert restarted.stdout.strip() == str(first.table["config"].tolist())
    # an image added in place: the file changes, and with it the version the pages pass
    rows = [*range(len(feature_set.features)), 0]  # the first image once more, under another name
    grown = replace(feature_set, features=feature_set.features[rows], catalog=feature_set.catalog.iloc[rows])
    grown.catalog.reset_index(drop=True, inplace=True)
    grown.catalog.loc[len(grown.catalog) - 1, ["path", "relpath"]] = ["/nowhere/added.jpg", "added.jpg"]
    save_feature_set(grown, tmp_path / "a.joblib")
    version = workspace.file_version(path)
    assert version != sets[0][2]
    assert comparison.kept_comparison((("A", path, version),), recommended=True, references=False) is None
    assert comparison.kept_hubness(path, version, photos=False) is None
    again = comparison.compare((("A", path, version),), recommended=True, references=False, keep=True)
    assert again.table["n_indexed"].iloc[0] == first.table["n_indexed"].iloc[0] + 1  # computed on the new rows
    assert comparison.distance_analysis_for(path, version, keep=True).sample is not None


def test_a_reference_index_built_once_gets_the_distractors_added(tmp_path: Path) -> None:
    """With and without the distractors from one index: the "without" result is the one built without them, the
    "with" one indexes the distractors too and scores close to an index built on all the rows."""
    path = save_feature_set(synthetic_feature_set(n_index=60, n_distractors=80), tmp_path / "a.joblib")
    version = workspace.file_version(path)
    config = registry.IndexConfig("ivf_flat")
    with_, without = tuning.evaluate_pair_for(path, version, config)
    built_with = tuning.evaluate_for(path, version, config, True)
    built_without = tuning.evaluate_for(path, version, config, False)
    assert without.row()["map"] == built_without.row()["map"]
    assert without.row()["n_indexed"] == built_without.row()["n_indexed"]
    assert with_.row()["n_indexed"] == built_with.row()["n_indexed"] == without.row()["n_indexed"] + 80
    assert abs(with_.row()["recall"] - built_with.row()["recall"]) < 0.05
    assert abs(with_.row()["map"] - built_with.row()["map"]) < 0.05


def test_distractors_before_an_added_image_are_not_added_but_built_with(tmp_path: Path) -> None:
    """An image added after the distractors (growth in place): the added index's ids would not be the split's, so
    both settings are built as before."""
    feature_set = synthetic_feature_set(n_index=30, n_distractors=30)
    last_index = int(np.flatnonzero(feature_set.roles == "index")[-1])
    order = [*range(last_index), *range(last_index + 1, len(feature_set.features)), last_index]
    moved = replace(
        feature_set,
        features=feature_set.features[order],
        catalog=feature_set.catalog.iloc[order].reset_index(drop=True),
    )
    path = save_feature_set(moved, tmp_path / "a.joblib")
    version = workspace.file_version(path)
    config = registry.IndexConfig("ivf_flat")
    with_, without = tuning.evaluate_pair_for(path, version, config)
    assert with_.row()["map"] == tuning.evaluate_for(path, version, config, True).row()["map"]
    assert without.row()["map"] == tuning.evaluate_for(path, version, config, False).row()["map"]


def test_the_setup_keeps_the_comparison_page_s_first_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m cbir extract``'s precompute (keep_default_comparison) keeps what the comparison page's first view
    reads, under the page's own key: its feature sets and versions, euclidean, the recommended LSH setting and the
    references, the distance and hubness analyses; so the page draws it whole without computing anything."""
    from builders import install_feature_set

    from cbir.app import ui
    from cbir.core import config

    collection = tmp_path / "collection"
    collection.mkdir()
    monkeypatch.setenv("CBIR_COLLECTION", str(collection))
    install_feature_set(Path(save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")), collection)
    done = comparison.keep_default_comparison()
    assert len(done) == 1 and done == comparison.default_feature_sets()
    choices = ui.feature_set_choices()
    sets = workspace.with_versions(choices, list(choices))  # what the page passes (its default: every set)
    assert sets == done
    assert workspace.with_versions(choices) == sets and workspace.with_versions(choices, []) == ()  # none chosen
    parts = list(ui.comparisons(sets, "euclidean", True, True))
    assert len(parts) == 1  # the kept whole, no part computed
    assert REFERENCES <= set(parts[0].table["index"]) and "LSH" in set(parts[0].table["index"])
    _, path, version = sets[0]
    assert parts[0].table["config"].iloc[2] == tuning.recommended_for(path, version).label  # the recommended LSH
    assert comparison.kept_hubness(path, version, "euclidean", photos=False) is not None
    before = sorted(p.name for p in (config.artifacts_dir() / "cache").rglob("*.joblib"))
    assert comparison.keep_default_comparison() == done  # read back, nothing written again
    assert sorted(p.name for p in (config.artifacts_dir() / "cache").rglob("*.joblib")) == before


def test_the_page_waits_for_the_background_computing_its_first_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a change to the collection the background computes the comparison page's first view again
    (cbir.service.background); a page opened meanwhile waits for it and reads it whole instead of computing it a
    second time beside it, and the background does not wait for that page's run (it would until its yield limit, 60
    s, longer than the page waits here, so the page would compute the parts itself)."""
    from builders import install_feature_set

    from cbir.app import ui
    from cbir.core import foreground
    from cbir.service import background

    collection = tmp_path / "collection"
    collection.mkdir()
    monkeypatch.setenv("CBIR_COLLECTION", str(collection))
    monkeypatch.setattr(ui, "BACKGROUND_WAIT_S", 30.0)
    install_feature_set(Path(save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")), collection)
    sets = comparison.default_feature_sets()
    assert ui.is_default_comparison(sets, "euclidean", True, True)
    assert not ui.is_default_comparison(sets, "cosine", True, True) and not ui.is_default_comparison(
        sets, "euclidean", True, False
    )
    assert comparison.kept_comparison(sets, "euclidean", True, references=True) is None
    with foreground.page_run():  # as the comparison page's run
        background.refresh_default_comparison()
        assert background.computing()
        parts = list(ui.comparisons(sets, "euclidean", True, True))
    assert background.wait(60) and not background.computing()
    assert len(parts) == 1  # the background's whole, read back: no part computed by the page
    assert REFERENCES <= set(parts[0].table["index"]) and "LSH" in set(parts[0].table["index"])
