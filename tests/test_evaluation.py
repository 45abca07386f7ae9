"""mAP@k definition, evaluate() on synthetic collections, sweeps, Pareto frontier and recommendations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbir.core.metrics import average_precision_at_k, average_precision_batch
from cbir.evaluation import evaluate as evaluate_module
from cbir.evaluation.evaluate import ROW_COLUMNS, evaluate, split_collection
from cbir.evaluation.sweep import SWEEP_COLUMNS, evaluate_settings, pareto_frontier, recommend, sweep
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.scan import SequentialScan
from cbir.indexes.widths import default_bucket_width

# ---- AP@k by hand ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retrieved", "query", "n_relevant", "k", "expected"),
    [
        (["a", "b", "a"], "a", 2, 3, (1 / 1 + 2 / 3) / 2),  # P@1 = 1, P@3 = 2/3
        (["b", "a", "a"], "a", 5, 3, (1 / 2 + 2 / 3) / 3),  # R > k: divide by k
        (["a"], "a", 5, 10, 1 / 5),  # fewer than k results: missing ones are not relevant
        (["b", "c"], "a", 0, 10, 0.0),  # no relevant object in the index
        (["a", "a"], "a", 0, 10, 0.0),  # R = 0 wins even if labels match (query class absent from index)
        ([None, "a", -1, ""], "a", 1, 4, 1 / 2),  # distractors never relevant
        ([None, None], None, 3, 2, 0.0),  # an unlabelled query matches nothing
        ([1, 2, 1, 1], 1, 3, 2, 1.0 / 2),  # only the first k count: P@1 = 1 over min(2, 3)
        (["a", "a", "a"], "a", 3, 3, 1.0),
    ],
)
def test_average_precision_at_k_hand_computed(
    retrieved: list, query: object, n_relevant: int, k: int, expected: float
) -> None:
    assert average_precision_at_k(retrieved, query, n_relevant, k) == pytest.approx(expected)


def test_average_precision_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        average_precision_at_k(["a"], "a", 1, k=0)
    with pytest.raises(ValueError, match="n_relevant_in_index"):
        average_precision_at_k(["a"], "a", -1)


def test_batch_ap_equals_scalar_ap() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(200, 10))
    n_relevant = rng.integers(0, 15, size=200)
    relevant = labels == 1
    batch = average_precision_batch(relevant, n_relevant)
    scalar = [average_precision_at_k(list(row), 1, int(r), k=10) for row, r in zip(labels, n_relevant, strict=True)]
    np.testing.assert_allclose(batch, scalar)


# ---- evaluate ------------------------------------------------------------------------------------------------


def clustered_collection(
    n_classes: int = 4, per_class: int = 60, n_queries_per_class: int = 5, n_distractors: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Well separated Gaussian classes plus far-away distractors, rows shuffled."""
    rng = np.random.default_rng(seed)
    dim = 16
    centers = rng.standard_normal((n_classes, dim)) * 20
    rows, labels, roles = [], [], []
    for c in range(n_classes):
        for role, count in (("index", per_class), ("query", n_queries_per_class)):
            rows.append(centers[c] + rng.standard_normal((count, dim)))
            labels += [f"class{c}"] * count
            roles += [role] * count
    rows.append(rng.standard_normal((n_distractors, dim)) + 100)
    labels += [None] * n_distractors
    roles += ["distractor"] * n_distractors
    order = rng.permutation(len(labels))
    features = np.concatenate(rows).astype(np.float32)[order]
    return features, np.array(labels, dtype=object)[order], np.array(roles)[order]


@pytest.fixture(scope="module")
def collection() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return clustered_collection()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_scan_on_separated_clusters_has_map_one(collection: tuple, metric: str) -> None:
    features, labels, roles = collection
    result = evaluate(SequentialScan(metric), features, labels, roles, k=10)
    assert result.map == pytest.approx(1.0)
    assert result.n_indexed == 4 * 60 + 100 and result.n_queries == 20
    assert result.mean_visited == result.n_indexed and result.visited_fraction == 1.0
    assert result.score_name == ("distance" if metric == "euclidean" else "similarity")
    if metric == "euclidean":
        assert 0 < result.mean_score < 10  # neighbours inside a unit-variance cluster, not across clusters
    else:
        assert 0.9 < result.mean_score <= 1.0
    assert list(result.per_class.columns) == ["class", "n_queries", "map"]
    assert result.per_class["class"].tolist() == ["class0", "class1", "class2", "class3"]
    assert result.per_class["n_queries"].tolist() == [5, 5, 5, 5]
    row = result.row()
    assert list(row) == ROW_COLUMNS
    assert row["map"] == result.map and row["score_name"] == result.score_name and row["index"] == "scan"
    assert row["recall"] == result.recall == 1.0 and row["n_tables"] is None  # the scan is its own reference


def test_distractors_are_indexed_only_on_request_and_never_relevant(collection: tuple) -> None:
    features, labels, roles = collection
    labels = labels.copy()
    labels[roles == "distractor"] = "class0"  # a label on a distractor row must be ignored
    without = evaluate(SequentialScan(), features, labels, roles, with_distractors=False)
    assert without.n_indexed == 240
    # queries placed on the distractors: every result is a distractor, so AP must be 0
    roles_on_distractors = roles.copy()
    distractor_rows = np.flatnonzero(roles == "distractor")
    moved = features.copy()
    moved[np.flatnonzero(roles == "query")] = features[distractor_rows[:20]]
    result = evaluate(SequentialScan(), moved, labels, roles_on_distractors, k=10)
    assert result.map == 0.0


def test_lsh_evaluation_reports_partial_visits(collection: tuple) -> None:
    features, labels, roles = collection
    result = evaluate(LSHIndex(n_tables=3, n_projections=2, bucket_width=10.0), features, labels, roles)
    assert 0 < result.mean_visited < result.n_indexed
    assert result.visited_fraction == pytest.approx(result.mean_visited / result.n_indexed)
    assert result.map > 0.9
    assert result.index_params["n_tables"] == 3 and result.fit_seconds > 0 and result.search_seconds > 0
    assert result.ap.shape == (20,)


def test_every_index_and_the_scan_are_timed_one_query_at_a_time(collection: tuple, monkeypatch) -> None:
    """Both timing modes: the batch (``query_ms``) and one query at a time (``single_query_ms``, the Search page's
    mode), the exact scan timed by the same function as every other index, on single-row searches."""
    features, labels, roles = collection
    real = evaluate_module.time_single_queries
    calls: list[tuple[str, list[int], float]] = []

    def spy(index, split, k, progress=None):  # type: ignore[no-untyped-def]
        rows: list[int] = []
        search = index.search

        def recorded(Q, k):  # type: ignore[no-untyped-def]
            rows.append(len(Q))
            return search(Q, k)

        monkeypatch.setattr(index, "search", recorded)
        ms = real(index, split, k, progress)
        monkeypatch.delattr(index, "search")
        calls.append((type(index).__name__, rows, ms))
        return ms

    monkeypatch.setattr(evaluate_module, "time_single_queries", spy)
    scan = evaluate(SequentialScan(), features, labels, roles)
    lsh = evaluate(LSHIndex(n_tables=3, n_projections=2, bucket_width=10.0), features, labels, roles)
    assert [name for name, _, _ in calls] == ["SequentialScan", "LSHIndex"]
    for (_, rows, ms), result in zip(calls, (scan, lsh), strict=True):
        # a short warm-up, then each of the (at most SINGLE_QUERY_SAMPLE) queries searched alone
        assert rows == [1] * (evaluate_module.SINGLE_QUERY_WARMUP + result.n_queries)
        assert result.single_query_ms == ms > 0 and result.row()["single_query_ms"] == ms
        assert result.query_ms > 0  # the batch mode is kept beside it


def test_evaluate_settings_fits_once_and_reports_that_fit_on_every_setting(collection: tuple) -> None:
    features, labels, roles = collection
    fits = []

    class Counted(LSHIndex):
        def fit(self, X: np.ndarray, progress: Callable[[str, int, int], None] | None = None) -> Counted:
            fits.append(len(X))
            return super().fit(X, progress)

    split = split_collection(features, labels, roles)
    index = Counted(n_tables=3, n_projections=4, bucket_width=5.0)
    results = list(evaluate_settings(index, split, "probes", [0, 4], k=10))
    assert fits == [len(split.index_vectors)]
    assert [r.index_params["probes"] for r in results] == [0, 4]
    assert results[0].fit_seconds > 0 and results[1].fit_seconds == results[0].fit_seconds
    assert results[1].mean_visited >= results[0].mean_visited  # probing more buckets visits at least as many


def test_tied_results_are_ranked_by_id() -> None:
    # two indexed objects at the same place with different labels; the lower id wins the tie
    features = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [0.0, 0.0]], dtype=np.float32)
    roles = np.array(["index", "index", "index", "query"])
    first_wrong = evaluate(SequentialScan(), features, np.array(["b", "a", "b", "a"], dtype=object), roles, k=1)
    first_right = evaluate(SequentialScan(), features, np.array(["a", "b", "b", "a"], dtype=object), roles, k=1)
    assert first_wrong.map == 0.0 and first_right.map == 1.0


def test_fewer_results_than_k_count_as_non_relevant() -> None:
    features = np.array([[0.0], [0.1], [0.05]], dtype=np.float32)
    labels = np.array(["a", "a", "a"], dtype=object)
    roles = np.array(["index", "index", "query"])
    result = evaluate(SequentialScan(), features, labels, roles, k=5)
    assert result.map == pytest.approx(1.0)  # R = 2 < k: both found -> AP 1
    one = evaluate(LSHIndex(1, 1, 1e9), features[[0, 2]], labels[[0, 2]], roles[[0, 2]], k=5)
    assert one.map == pytest.approx(1.0) and one.mean_visited == 1


def test_evaluate_validates_inputs(collection: tuple) -> None:
    features, labels, roles = collection
    with pytest.raises(ValueError, match="metric='cosine' but the index"):
        evaluate(SequentialScan(), features, labels, roles, metric="cosine")
    bad_roles = roles.copy()
    bad_roles[0] = "train"
    with pytest.raises(ValueError, match="roles must be in"):
        evaluate(SequentialScan(), features, labels, bad_roles)
    unlabelled = labels.copy()
    unlabelled[np.flatnonzero(roles == "query")[0]] = None
    with pytest.raises(ValueError, match="query rows have no label"):
        evaluate(SequentialScan(), features, unlabelled, roles)
    with pytest.raises(ValueError, match="must both have shape"):
        evaluate(SequentialScan(), features, labels[:-1], roles)
    with pytest.raises(ValueError, match='no rows with role "query"'):
        evaluate(SequentialScan(), features, labels, np.where(roles == "query", "index", roles))
    with pytest.raises(ValueError, match="k must be"):
        evaluate(SequentialScan(), features, labels, roles, k=0)


def test_query_class_missing_from_index_scores_zero() -> None:
    features = np.array([[0.0], [1.0], [0.5]], dtype=np.float32)
    split = split_collection(features, np.array(["a", "a", "z"], dtype=object), np.array(["index", "index", "query"]))
    assert split.n_relevant.tolist() == [0]
    result = evaluate(SequentialScan(), features, np.array(["a", "a", "z"], dtype=object), ["index", "index", "query"])
    assert result.map == 0.0 and result.per_class["class"].tolist() == ["z"]


# ---- sweep / Pareto / recommend -----------------------------------------------------------------------------------


def test_sweep_covers_the_grid_and_reports_progress(collection: tuple) -> None:
    features, labels, roles = collection
    calls: list[tuple[int, int]] = []
    df = sweep(
        features,
        labels,
        roles,
        {"g": [1, 3], "h": [2], "w": [5.0, 1e9]},
        metric="euclidean",
        probes=[0, 2],
        progress=lambda done, total: calls.append((done, total)),
        include_scan=True,
    )
    assert list(df.columns) == SWEEP_COLUMNS
    assert len(df) == 1 + 2 * 1 * 2 * 2
    assert calls == [(i, len(df)) for i in range(1, len(df) + 1)]
    scan_map = df.loc[df["index"] == "scan", "map"].item()
    infinite = df[(df["bucket_width"] == 1e9)]
    np.testing.assert_allclose(infinite["map"], scan_map)
    np.testing.assert_allclose(infinite["mean_visited"], 340)
    # probing visits at least as much as the plain index with the same tables
    narrow = df[(df["bucket_width"] == 5.0)].set_index(["n_tables", "probes"])["mean_visited"]
    assert narrow[(1, 2)] >= narrow[(1, 0)] and narrow[(3, 2)] >= narrow[(3, 0)]
    assert (df["query_ms"] > 0).all()
    assert (df["single_query_ms"] > 0).all()  # one query at a time too, the scan's row included


def test_sweep_defaults_width_and_rejects_unknown_keys(collection: tuple) -> None:
    features, labels, roles = collection
    df = sweep(features, labels, roles, {"n_tables": [2], "n_projections": 2})
    assert len(df) == 1 and df["bucket_width"].iloc[0] > 0
    with pytest.raises(ValueError, match="unknown grid keys"):
        sweep(features, labels, roles, {"g": [1], "h": [1], "tables": [3]})
    with pytest.raises(ValueError, match="needs values for 'n_projections'"):
        sweep(features, labels, roles, {"g": [1]})


def test_pareto_frontier_hand_made() -> None:
    df = pd.DataFrame(
        {
            "mean_visited": [10, 20, 20, 30, 5, 30, np.nan, 10],
            "map": [0.5, 0.7, 0.6, 0.7, 0.1, 0.9, 1.0, 0.5],
        },
        index=list("abcdefgh"),
    )
    mask = pareto_frontier(df)
    # c is beaten by b (same visited, lower mAP); d by f; g has NaN; a and h are identical and both kept
    assert mask[mask].index.tolist() == ["a", "b", "e", "f", "h"]
    with pytest.raises(ValueError, match="column 'recall'"):
        pareto_frontier(df, y="recall")


def test_recommend_respects_budget_and_prefers_fewer_visits() -> None:
    df = pd.DataFrame({"mean_visited": [100, 400, 250, 900, 300], "map": [0.5, 0.8, 0.8, 0.95, 0.7]})
    assert recommend(df, 500).name == 2  # best mAP within budget, tie broken by fewer visited
    assert recommend(df, 1000).name == 3
    assert recommend(df, 100).name == 0
    with pytest.raises(
        ValueError, match="no configuration visits at most 50 objects per query; the cheapest visits 100"
    ):
        recommend(df, 50)


def test_default_bucket_width_scales_with_the_features(collection: tuple) -> None:
    features, _, _ = collection
    base = default_bucket_width(features)
    assert base > 0
    assert default_bucket_width(features * 10) == pytest.approx(10 * base, rel=1e-5)
    assert default_bucket_width(features * 10, metric="cosine") == pytest.approx(
        default_bucket_width(features, metric="cosine"), rel=1e-5
    )
    with pytest.raises(ValueError, match="at least 2 rows"):
        default_bucket_width(features[:1])


# ---- command line -------------------------------------------------------------------------------------------------


@pytest.fixture
def feature_artifact(tmp_path: Path, collection: tuple) -> Path:
    from cbir.core.storage import save_artifact
    from cbir.features.sources import FEATURES_KIND

    features, labels, roles = collection
    catalog = pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(len(labels))],
            "label": labels,
            "split": np.where(roles == "query", "validation", "training"),
            "role": roles,
        }
    )
    path = tmp_path / "features.joblib"
    meta = {"backbone": "synthetic", "complete": True}
    save_artifact(
        path, FEATURES_KIND, {"features": features, "catalog": catalog, "report": pd.DataFrame(), "meta": meta}
    )
    return path


def run_cli(argv: list[str]) -> int:
    import argparse

    from cbir.cli.search import add_evaluate_parsers

    parser = argparse.ArgumentParser()
    add_evaluate_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_evaluate_prints_summary_and_classes(feature_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["evaluate", "--features", str(feature_artifact), "--index", "scan", "--metric", "cosine"]) == 0
    out = capsys.readouterr().out
    assert "mean_similarity" in out and "per class:" in out and "class3" in out
    assert "1.0000" in out  # the scan's mAP on separated clusters
    assert run_cli(["evaluate", "--features", str(feature_artifact), "-g", "2", "-H", "2", "--no-distractors"]) == 0
    out = capsys.readouterr().out
    assert "bucket width w =" in out and "without distractors" in out and " 240 " in out


def test_cli_sweep_writes_csv_and_recommends(
    feature_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_csv = tmp_path / "sweep.csv"
    argv = ["sweep", "--features", str(feature_artifact), "--g", "1,2", "--h", "2", "--w", "5,1e9", "--probes", "0,1"]
    assert run_cli([*argv, "--budget", "1000", "--out", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert "Pareto frontier" in out and "recommended for <= 1000 visited" in out
    table = pd.read_csv(out_csv)
    assert len(table) == 1 + 2 * 2 * 2 and list(table.columns) == SWEEP_COLUMNS
    with pytest.raises(ValueError, match="no configuration visits at most 1"):
        run_cli([*argv, "--budget", "1", "--no-scan"])


def test_recall_at_k_counts_exact_neighbours_found() -> None:
    from cbir.core.metrics import recall_at_k

    exact = np.array([[0, 1, 2], [3, 4, 5], [6, -1, -1], [-1, -1, -1]])
    approx = np.array([[2, 1, 9], [7, 8, 9], [6, 5, -1], [1, 2, 3]])
    np.testing.assert_allclose(recall_at_k(approx, exact), [2 / 3, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(recall_at_k(approx, exact, k=1), [0.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(approx, exact, k=4)


def test_recall_of_the_scan_is_one_and_of_a_tiny_lsh_matches_brute_force(collection: tuple) -> None:
    features, labels, roles = collection
    split = split_collection(features, labels, roles)
    k = 10
    for metric in ("euclidean", "cosine"):
        scan = evaluate(SequentialScan(metric), features, labels, roles, k=k)
        assert scan.recall == 1.0 and (scan.recall_per_query == 1.0).all()
    # a tiny LSH (one table, narrow buckets) misses true neighbours
    index = LSHIndex(1, 4, 2.0, seed=0)
    from cbir.evaluation.evaluate import evaluate_split

    result = evaluate_split(index, split, k=k)
    _, ids, _ = index.search(split.query_vectors, k)
    # brute force: the exact top-k by euclidean distance, in numpy
    distances = ((split.query_vectors[:, None, :] - split.index_vectors[None, :, :]) ** 2).sum(axis=2)
    exact = np.argsort(distances, axis=1, kind="stable")[:, :k]
    expected = np.array([len(set(row[row >= 0]) & set(truth)) / k for row, truth in zip(ids, exact, strict=True)])
    np.testing.assert_allclose(result.recall_per_query, expected)
    assert result.recall == pytest.approx(expected.mean())
    assert 0 < result.recall < 1
    # the exact answers were computed once for the split and metric, and are shared
    assert split.exact_ids("euclidean", k) is split.exact_ids("euclidean", k)
    np.testing.assert_array_equal(split.exact_ids("euclidean", k), exact)


def test_sweep_rows_carry_recall(collection: tuple) -> None:
    features, labels, roles = collection
    df = sweep(features, labels, roles, {"g": [1], "h": [4], "w": [2.0, 1e9]}, include_scan=True)
    assert df["recall"].iloc[0] == 1.0 and df["recall"].between(0, 1).all()
    assert df.loc[df["bucket_width"] == 1e9, "recall"].item() == 1.0  # one bucket holds everything: exact
    assert df.loc[df["bucket_width"] == 2.0, "recall"].item() < 1.0
    assert pareto_frontier(df, y="recall").iloc[0]  # the scan: best recall (ties broken by visits only)


def test_unlabelled_mask_matches_is_unlabelled() -> None:
    import pandas as pd

    from cbir.core.metrics import _unlabelled_mask, is_unlabelled

    labels = np.array(
        [None, np.nan, "", -1, -1.0, "a", 0, 1, True, False, pd.NA, "c1", 3.5, np.int64(-1), np.float32("nan"), "-1"],
        dtype=object,
    )
    np.testing.assert_array_equal(_unlabelled_mask(labels), [is_unlabelled(label) for label in labels])
    assert _unlabelled_mask(np.array([], dtype=object)).shape == (0,)


class _CountingRows(np.ndarray):
    """A feature array that records every row selection made from it (``reads``: the number of rows taken)."""

    reads: list[int]

    def __getitem__(self, key: object) -> np.ndarray:
        if isinstance(key, np.ndarray):
            self.reads.append(len(key))
        return np.asarray(super().__getitem__(key))


def test_split_reads_the_indexed_rows_once(collection: tuple, tmp_path: Path) -> None:
    from cbir.evaluation.evaluate import evaluate_split

    features, labels, roles = collection
    n_queries = int((np.asarray(roles) == "query").sum())
    eager = split_collection(features, labels, roles, cache_dir=tmp_path)
    scan = evaluate_split(SequentialScan(), eager)  # computes the exact answers and stores them under tmp_path
    counting = np.asarray(features).view(_CountingRows)
    counting.reads = []
    lazy = split_collection(counting, labels, roles, cache_dir=tmp_path)
    assert counting.reads == [n_queries]  # the queries only
    # answered from the stored answers, but timed again in this process (its time compares with the LSH's): the
    # indexed rows are read for that, once
    again = evaluate_split(SequentialScan(), lazy)
    assert counting.reads == [n_queries, lazy.n_indexed]
    assert again.map == scan.map and again.per_class.equals(scan.per_class) and again.search_seconds > 0
    lsh = evaluate_split(LSHIndex(2, 2, 5.0, seed=0), lazy)
    assert sum(counting.reads) == n_queries + lazy.n_indexed  # not read again
    np.testing.assert_array_equal(lazy.index_vectors, np.asarray(features)[lazy.index_rows])
    assert lazy.index_vectors is lazy.index_vectors
    assert lsh.map == evaluate_split(LSHIndex(2, 2, 5.0, seed=0), eager).map


def test_split_of_pandas_string_columns_equals_the_split_of_object_arrays(collection: tuple) -> None:
    features, labels, roles = collection
    labels = np.asarray(labels, dtype=object).copy()
    labels[[3, 5]] = ["", np.nan]  # more unlabelled markers beside None (rows 3 and 5 are not queries)
    roles = np.asarray(roles, dtype=object)
    assert set(roles[[3, 5]]) <= {"index", "distractor"}
    reference = split_collection(features, labels, roles)
    # a store's catalog: pandas (arrow-backed) strings, with a non-default index
    columns = pd.DataFrame({"label": labels, "role": roles}, index=np.arange(len(roles)) + 100).astype("string")
    split = split_collection(features, columns["label"], columns["role"])
    for name in ("index_rows", "query_rows", "index_label_codes", "query_label_codes", "n_relevant"):
        np.testing.assert_array_equal(getattr(split, name), getattr(reference, name), err_msg=name)
    assert list(split.class_names) == list(reference.class_names)
    with pytest.raises(ValueError, match="roles must be in"):
        split_collection(features, columns["label"], columns["role"].replace("index", "indexed"))
