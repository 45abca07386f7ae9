"""The Streamlit pages driven by ``streamlit.testing.v1.AppTest`` against a small real Open Clip Art collection with
EfficientNet-Lite0 features: search (upload, collection pick, bad inputs), slider-driven tuning, comparison."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from builders import bad_uploads, install_feature_set, switch_page, unusual_uploads
from streamlit.testing.v1 import AppTest

from cbir.app import formats, ui
from cbir.core import config
from cbir.features.sources import load_features

APP = config.PROJECT_ROOT / "app.py"
TIMEOUT = 180  # the first run of a page may load the model and compile numba kernels
N_RESULTS = 10

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="session")
def app_artifacts(tmp_path_factory: pytest.TempPathFactory, openclipart_small: Path, small_features_file: Path) -> Path:
    """One artifacts folder holding the small feature set for all page tests: the same feature-set path in every
    test lets Streamlit's caches (evaluations, sweeps, the model) carry over between tests, as in a live app."""
    folder = tmp_path_factory.mktemp("app_artifacts")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CBIR_ARTIFACTS", str(folder))
        install_feature_set(small_features_file, openclipart_small)
    return folder


@pytest.fixture
def app_env(openclipart_small: Path, app_artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app pointed at the small collection and its feature set."""
    monkeypatch.setenv("CBIR_COLLECTION", str(openclipart_small))
    monkeypatch.setenv("CBIR_ARTIFACTS", str(app_artifacts))
    return openclipart_small


def open_app(page: str | None = None) -> AppTest:
    """app.py run by ``AppTest`` (its Home page), then the page at the URL path ``page`` when given."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    if page is not None:
        switch_page(at, page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, float]:
    """Metric label → number (``"1,234"``, ``"6.2%"``, ``"0.52 ms"`` → 1234, 6.2, 0.52)."""
    return {m.label: float(m.value.replace(",", "").rstrip("%").split()[0]) for m in at.metric}


def images(at: AppTest) -> int:
    """Pictures on the page (one ``st.image`` element may hold a list of them: the Search page's ten results), but
    the one of the hidden container that readies the browser's code (:func:`cbir.app.ui.preload_browser_code`)."""

    def shown(node: Any) -> int:
        if str(getattr(getattr(node, "proto", None), "id", "")).endswith(f"-{ui.PRELOAD_KEY}"):
            return 0  # the hidden container
        if getattr(node, "type", None) == "image":
            return len(node.proto.imgs)
        children = getattr(node, "children", None)
        return sum(shown(child) for child in children.values()) if isinstance(children, dict) else 0

    return shown(at.main)


def results_table(at: AppTest) -> pd.DataFrame:
    """The Search page's results table, in the pipeline's column names (the page shows human ones)."""
    table = at.dataframe[-1].value
    names = {"Rank": "rank", "Path": "relpath", "Class": "label", "Role": "role", "Distance": "score"}
    return table.rename(columns={**names, "Similarity": "score"})


def check_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ----------------------------------------------------------------------------------------------------------
# Home
# ----------------------------------------------------------------------------------------------------------


def test_home_page_shows_the_collection(app_env: Path) -> None:
    at = open_app()
    n_images = len(load_features(next(iter(config.artifacts_dir().rglob("*.joblib")))).catalog)
    values = metrics(at)
    assert values["Images"] == n_images and values["Classes"] == 13
    assert [s.value for s in at.subheader] == ["Collection", "Feature sets", "Indexes", "Images left out"]
    counts = at.dataframe[0].value
    assert {"index", "query", "distractor", "total"} <= set(counts.columns)
    assert at.dataframe[1].value["Backbone"].tolist() == [formats.backbone_name("efficientnet_lite0")]
    assert len(at.get("plotly_chart")) == 1
    assert at.sidebar.selectbox[0].value == "efficientnet_lite0 · ImageNet"
    assert not at.error and [b.label for b in at.button] == ["Build and save"]  # only an index to build


def test_home_page_builds_lists_and_flags_saved_indexes(app_env: Path) -> None:
    at = open_app()
    assert "No index saved" in at.info[-1].value
    at.selectbox(key="home-index-metric").set_value("cosine")
    next(box for box in at.selectbox if box.label.startswith("Build and save an index")).set_value("scan")
    at.button(key="home-index-build").click().run()
    check_ok(at)
    table = next(frame.value for frame in at.dataframe if "freshness" in frame.value.columns)
    assert table["freshness"].tolist() == ["fresh"] and table["setting"].tolist() == ["exact scan (cosine)"]
    assert table["build_s"].iloc[0] >= 0 and table["size_mb"].iloc[0] > 0
    # a saved index whose feature set changed is flagged, never used silently
    from cbir.features.saved_indexes import read_info, saved_infos

    folder, info = saved_infos()[0]
    (folder / "info.json").write_text(json.dumps({**info, "stale": "2 image(s) removed from the feature set"}))
    assert read_info(folder)["stale"]
    at = open_app()
    assert any("no longer match their feature set" in warning.value for warning in at.warning)


def test_home_page_without_open_clip_art(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "none"))
    monkeypatch.setenv("CBIR_OPENCLIPART_DIR", str(tmp_path / "not-installed"))
    at = open_app()
    assert "No usable collection" in at.warning[0].value
    assert "not installed" in at.error[0].value
    assert "apt-get install openclipart-png" in at.code[0].value
    assert not at.button


@pytest.mark.slow
def test_home_page_builds_collection_and_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openclipart_small: Path
) -> None:
    import cbir.data.openclipart

    # a tiny Open Clip Art build (1 image per category and role) keeps the button's real path fast
    monkeypatch.setattr(
        cbir.data.openclipart,
        "build_collection",
        functools.partial(cbir.data.openclipart.build_collection, limit_per_class=1, workers=2),
    )
    monkeypatch.setenv("CBIR_COLLECTION", str(tmp_path / "built"))
    at = open_app()
    assert at.button[0].label == "Build collection and features"
    at.button[0].click().run()
    check_ok(at)
    assert not at.error
    assert metrics(at)["Images"] > 20
    assert at.dataframe[1].value["Status"].tolist() == ["complete"]
    assert [b.label for b in at.button] == ["Build and save"]  # only an index to build
    # and the comparison page's first view, computed with it and kept where the page reads it
    from cbir.evaluation import comparison

    assert comparison.kept_comparison(comparison.default_feature_sets(), references=True) is not None


# ----------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------


def test_search_by_picking_a_collection_image(app_env: Path) -> None:
    at = open_app("Search")
    assert "Choose a query image" in at.info[0].value
    at.radio(key="search-source").set_value("Pick from the collection").run()
    picker = at.selectbox(key="search-pick")
    chosen = next(option for option in picker.options if option.startswith("training_set/"))
    picker.set_value(chosen).run()
    check_ok(at)
    assert not at.error
    assert images(at) == 1 + N_RESULTS  # the query and its results
    table = results_table(at)
    assert table["rank"].tolist() == list(range(1, N_RESULTS + 1))
    assert table["score"].is_monotonic_increasing  # euclidean distances
    assert chosen not in table["relpath"].tolist()  # the image is left out of its own answer: ten other images
    values = metrics(at)
    assert values["Share visited"] == 100.0 and values["Visited"] == len(picker.options)


def test_search_upload_bad_and_unusual_files(app_env: Path, openclipart_small: Path) -> None:
    at = open_app("Search")
    uploader = at.file_uploader[0]
    good = next(openclipart_small.rglob("*.jpg"))
    uploader.set_value((good.name, good.read_bytes(), "image/jpeg")).run()
    check_ok(at)
    assert images(at) == 1 + N_RESULTS and not at.error
    # the file is taken out of the uploader (the next one is a plain upload, not a replacement) and stays the query
    assert len(at.file_uploader) == 1 and at.file_uploader[0].value is None
    assert at.file_uploader[0].key != uploader.key
    at.selectbox(key="search-metric").set_value("cosine").run()  # another run: the query stays
    assert images(at) == 1 + N_RESULTS and at.session_state["search-uploaded"][0] == good.name, "the query was lost"
    at.selectbox(key="search-metric").set_value("euclidean").run()
    for name, (data, words) in bad_uploads().items():
        at.file_uploader[0].set_value((f"{name}.png", data, "image/png")).run()
        check_ok(at)
        assert len(at.error) == 1 and words in at.error[0].value, (name, [e.value for e in at.error])
        assert "cannot be used as a query" in at.error[0].value
        assert images(at) == 0
    for name, (data, words) in unusual_uploads().items():
        suffix = {"animated gif": "gif", "cmyk": "jpg", "50 MP photo": "jpg"}.get(name, "png")
        at.file_uploader[0].set_value((f"{name}.{suffix}", data, "image/*")).run()
        check_ok(at)
        assert not at.error, (name, [e.value for e in at.error])
        assert any(words in info.value for info in at.info), (name, [i.value for i in at.info])
        assert images(at) == 1 + N_RESULTS
    # and the app still works with a plain image afterwards
    at.file_uploader[0].set_value((good.name, good.read_bytes(), "image/jpeg")).run()
    assert images(at) == 1 + N_RESULTS and not at.error and not at.info


def test_search_with_lsh_and_its_sliders(app_env: Path) -> None:
    at = open_app("Search")
    at.radio(key="search-source").set_value("Pick from the collection").run()
    picker = at.selectbox(key="search-pick")
    picker.set_value(picker.options[3]).run()
    n_images = metrics(at)["Visited"]
    at.radio(key="search-kind").set_value("LSH").run()
    check_ok(at)
    lsh = metrics(at)
    assert lsh["Visited"] < n_images and lsh["Share visited"] < 100
    at.slider(key="search-g").set_value(20).run()
    more_tables = metrics(at)["Visited"]
    at.slider(key="search-probes").set_value(10).run()
    more_probes = metrics(at)["Visited"]
    assert lsh["Visited"] <= more_tables <= more_probes
    at.selectbox(key="search-metric").set_value("cosine").run()
    check_ok(at)
    assert results_table(at)["score"].is_monotonic_decreasing  # similarities


def test_search_fastest_at_a_recall_picks_from_the_sweep_with_its_references(app_env: Path) -> None:
    at = open_app("Search")
    at.radio(key="search-source").set_value("Pick from the collection").run()
    picker = at.selectbox(key="search-pick")
    picker.set_value(picker.options[3]).run()
    at.radio(key="search-kind").set_value("Fastest at a recall").run()
    check_ok(at)
    for target in (0.5, 0.9, 1.0):
        at.slider(key="search-target-recall").set_value(target).run()
        check_ok(at)
        caption = next(c.value for c in at.caption if "validation queries, features not" in c.value)
        recall = float(caption.split("**: recall@10 ")[1].split(",")[0])  # after the label (which may name a target)
        assert recall >= target and "reference indexes" in caption
        assert images(at) == 1 + N_RESULTS and not at.error


# ----------------------------------------------------------------------------------------------------------
# Index tuning
# ----------------------------------------------------------------------------------------------------------


def test_tuning_sliders_move_the_metrics_consistently(app_env: Path) -> None:
    at = open_app("Index_tuning")
    assert not at.error
    start = metrics(at)
    assert 0 <= start["mAP@10"] <= 1 and 0 < start["Share visited"] < 100
    assert 0 < start["Recall@10"] <= 1  # against the exact scan
    # both timing modes, each beside the exact scan timed the same way
    assert start["One query"] > 0 and start["Per query in a batch"] > 0
    assert all("than scan" in m.delta for m in at.metric if m.label in ("One query", "Per query in a batch"))
    # per-class mAP, mAP and recall over the sweep against the time one query at a time (the default axis)
    assert at.radio(key="tune-axis").value == "single_query_ms" and len(at.get("plotly_chart")) == 3
    at.radio(key="tune-axis").set_value("query_ms").run()
    check_ok(at)
    at.toggle(key="tune-trends").set_value(True).run()  # the paper's trends, on request: three charts more
    check_ok(at)
    assert len(at.get("plotly_chart")) == 6 and metrics(at) == start
    at.toggle(key="tune-table").set_value(True).run()  # the sweep's table, on request
    check_ok(at)
    assert "Pareto-optimal" in at.dataframe[-1].value.columns

    def visited_after(key: str, value: float) -> float:
        at.slider(key=key).set_value(value).run()
        check_ok(at)
        return metrics(at)["Visited / query"]

    w_key = next(s.key for s in at.slider if s.key.startswith("tune-w-"))
    w_default, w_max = at.slider(key=w_key).value, at.slider(key=w_key).max
    base = start["Visited / query"]
    assert visited_after("tune-g", 20) > base  # more tables: more candidates
    assert visited_after("tune-g", 7) == base  # back to the start: the same (cached) evaluation
    assert metrics(at) == start
    assert visited_after("tune-h", 8) < base  # more projections: smaller buckets
    visited_after("tune-h", 2)
    assert visited_after(w_key, w_max) > base  # wider buckets
    visited_after(w_key, w_default)
    assert visited_after("tune-probes", 10) >= base  # multi-probe only adds buckets
    visited_after("tune-probes", 0)
    assert metrics(at) == start

    at.button(key="tune-use-recommended").click().run()
    check_ok(at)
    assert metrics(at)["Share visited"] <= 20.0  # the recommendation's budget


def test_tuning_metric_and_distractor_switches(app_env: Path) -> None:
    def indexed(at: AppTest) -> int:
        caption = next(c.value for c in at.caption if "validation queries against" in c.value)
        return int(caption.split(" against ")[1].split()[0].replace(",", ""))

    at = open_app("Index_tuning")
    with_distractors = indexed(at)
    at.toggle(key="tune-distractors").set_value(False).run()
    check_ok(at)
    assert indexed(at) < with_distractors
    at.selectbox(key="tune-metric").set_value("cosine").run()
    check_ok(at)
    assert "mean similarity" in " ".join(c.value for c in at.caption)


# ----------------------------------------------------------------------------------------------------------
# Model comparison
# ----------------------------------------------------------------------------------------------------------


def test_comparison_page_renders_its_table(app_env: Path) -> None:
    at = open_app("Model_comparison")
    assert not at.error
    table = at.dataframe[0].value  # as a person reads it: human column names (cbir.app.formats.COLUMN_NAMES)
    # 1 feature set × (exact scan, LSH, 4 reference indexes) × (with, without distractors)
    assert len(table) == 12
    assert set(table["Index"]) == {"exact scan", "LSH", "HNSW (faiss)", "IVF-Flat (faiss)", "HNSW (hnswlib)"} | {
        "cross-polytope LSH"
    }
    assert set(table["Distractors"]) == {"with", "without"}
    assert table["mAP@10"].between(0, 1).all()
    scan = table["Index"] == "exact scan"
    assert (table.loc[scan, "Recall@10"] == 1.0).all() and table["Recall@10"].between(0, 1).all()
    hubness = at.dataframe[1].value  # shares as percentages
    assert len(hubness) == 1 and hubness["Top-10 slots held by the 1 % hubs (%)"].between(0, 100).all()
    photo_columns = ["Photo answers that are hubs (%)", "Distinct photo answers (%)"]
    # the page's first view does not load the model: the photos are measured on request (or read from disk)
    assert not set(photo_columns) & set(hubness.columns)
    assert images(at) == 5  # the five most frequent answers, as tiles
    distances = at.dataframe[2].value
    assert distances["Class"].iloc[0] == "(all)" and len(distances) == 1 + 13
    assert {"Mean euclidean distance", "Mean cosine similarity"} <= set(distances.columns)  # names a person reads
    # one chart at a time (recall vs time first) and the 2 distance histograms
    assert len(at.get("plotly_chart")) == 3
    chart_titles = set()
    for chart in at.radio(key="compare-chart").options:
        at.radio(key="compare-chart").set_value(chart).run()
        check_ok(at)
        assert len(at.get("plotly_chart")) == 3, chart
        chart_titles.add(json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"])
    assert len(chart_titles) == 6  # recall vs time, 4 comparison bars (mAP, recall, visited, score), per-class
    at.radio(key="compare-chart").set_value("Mean distance").run()
    at.selectbox(key="compare-metric").set_value("cosine").run()  # the score chart's option is renamed
    check_ok(at)
    assert len(at.get("plotly_chart")) == 3 and "Mean similarity" in at.radio(key="compare-chart").options
    at.selectbox(key="compare-metric").set_value("euclidean").run()
    at.toggle(key="compare-photos").set_value(True).run()
    check_ok(at)
    # the real model embedded the four sample photos: their answers are measured too
    photos = at.dataframe[1].value[photo_columns]
    assert len(photos) == 1 and photos.apply(lambda column: column.between(0, 100)).all().all()
    # kept on disk: a new session (a restarted server's page) shows them without the toggle
    at = open_app("Model_comparison")
    check_ok(at)
    assert set(photo_columns) <= set(at.dataframe[1].value.columns)
    assert not [toggle for toggle in at.toggle if toggle.key == "compare-photos"]
    at.radio(key="compare-lsh").set_value("default").run()
    check_ok(at)
    assert at.dataframe[0].value["Setting"].str.contains("g=7 h=2").sum() == 2
    at.multiselect(key="compare-sets").set_value([]).run()
    assert "Select at least one feature set" in at.info[0].value


def test_comparison_page_shows_fine_tuning_runs(app_env: Path, app_artifacts: Path) -> None:
    import json
    import shutil

    from cbir.data.collection import collection_id
    from cbir.features.finetune import classification_report

    at = open_app("Model_comparison")
    assert any("No fine-tuned model yet" in info.value for info in at.info)
    run_dir = app_artifacts / "finetune" / collection_id(app_env) / "efficientnet_lite0-model1"
    run_dir.mkdir(parents=True)
    try:
        history = [
            {"epoch": e, "loss": 1.0 / e, "accuracy": 0.5 + e / 20, "val_loss": 1.1 / e, "val_accuracy": 0.45 + e / 20}
            for e in (1, 2, 3)
        ]
        (run_dir / "history.json").write_text(json.dumps(history))
        classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["cats", "dogs"]).to_csv(run_dir / "report.csv")
        metrics = {
            "backbone": "efficientnet_lite0",
            "model": 1,
            "lr": 1e-4,
            "test_accuracy": 0.75,
            "test_loss": 0.61,
            "epochs_done": 3,
            "best_epoch": 3,
            "seconds_per_epoch": 34.6,
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        at = open_app("Model_comparison")
        check_ok(at)
        assert at.expander[0].label == "efficientnet_lite0 · model 1 · lr 0.0001"
        shown = {m.label: m.value for m in at.metric}
        assert shown["Validation accuracy"] == "0.750" and shown["Epochs (best)"] == "3 (3)"
        report = at.dataframe[-1].value
        assert report.loc["cats", "precision"] == pytest.approx(1.0) and report.loc["dogs", "recall"] == 1.0
    finally:
        shutil.rmtree(run_dir)


def test_comparison_page_lists_retrieval_heads(app_env: Path, app_artifacts: Path) -> None:
    import json
    import shutil

    from cbir.features.finetune import retrieval_dir

    at = open_app("Model_comparison")
    assert any("No retrieval head yet" in info.value for info in at.info)
    run_dir = retrieval_dir(app_env, "efficientnet_lite0", "supcon", unfrozen=False)
    run_dir.mkdir(parents=True)
    try:
        metrics = {
            "backbone": "efficientnet_lite0",
            "loss": "supcon",
            "unfrozen": None,
            "dim": 256,
            "n_train": 78,
            "classes": ["a", "b"],
            "history": [{"epoch": 1, "loss": 2.0, "seconds": 1.0}],
            "train_seconds": 12.5,
            "load_average": [3.0, 2.0, 1.0],
            "extractor": str(run_dir / "retrieval-supcon-frozen.keras"),
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        at = open_app("Model_comparison")
        check_ok(at)
        heads = at.dataframe[-1].value
        assert heads[["loss", "trained", "trained on"]].iloc[0].tolist() == [
            "supcon",
            "head (frozen backbone)",
            "78 index images, 2 classes",
        ]
    finally:
        shutil.rmtree(run_dir)
