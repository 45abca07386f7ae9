"""cbir.engine without Streamlit: query decoding, search (a collection image finds itself first), tuning,
comparison and workspace status, on synthetic features and on a small real Open Clip Art feature set."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir import engine
from cbir.collection import collection_id, scan_collection
from cbir.features import FEATURES_KIND, FeatureSet, extract_collection, load_features
from cbir.images import ImageDecodeError
from cbir.storage import save_artifact

BACKBONE = "efficientnet_lite0"


# ----------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------


def small_feature_path(collection: Path) -> Path:
    """EfficientNet-Lite0 features of the small Open Clip Art collection, extracted once per test session to a
    fixed place beside it (test_app.py and test_browser.py reuse the same file)."""
    from cbir.backbones import available_backbones
    from cbir.features import FeatureExtractor

    out = collection.parent / f"{collection.name}-features" / f"{BACKBONE}.joblib"
    if out.is_file():
        return out
    if not available_backbones().get(BACKBONE):
        pytest.skip(f"{BACKBONE} ImageNet weights are not available offline")
    extract_collection(scan_collection(collection), FeatureExtractor(BACKBONE, "imagenet"), out_path=out)
    return out


def install_feature_set(feature_file: Path, collection: Path) -> Path:
    """Copy a feature artifact where :func:`cbir.workspace.list_feature_sets` finds it for ``collection`` under
    the current (per-test) ``CBIR_ARTIFACTS``."""
    from cbir import config

    target = config.artifacts_dir() / "features" / collection_id(collection) / feature_file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(feature_file, target)
    return target


@pytest.fixture(scope="session")
def small_features_file(openclipart_small: Path) -> Path:
    return small_feature_path(openclipart_small)


@pytest.fixture(scope="session")
def small_features(small_features_file: Path) -> FeatureSet:
    return load_features(small_features_file)


@pytest.fixture(scope="session")
def search_engine(small_features: FeatureSet) -> engine.SearchEngine:
    extractor = engine.make_extractor(engine.extractor_spec(small_features.meta))
    return engine.SearchEngine(small_features, extractor)


def synthetic_feature_set(
    n_classes: int = 4, n_index: int = 20, n_query: int = 5, n_distractors: int = 20, dim: int = 16, seed: int = 0
) -> FeatureSet:
    """Well separated Gaussian classes plus uniform distractors, with a catalog like a real one."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, (n_classes, dim))
    rows, features = [], []
    for c in range(n_classes):
        for i in range(n_index + n_query):
            role = "index" if i < n_index else "query"
            features.append(centers[c] + rng.normal(0, 1, dim))
            rows.append({"label": f"class{c}", "role": role, "split": "train" if role == "index" else "validation"})
    for _ in range(n_distractors):
        features.append(rng.normal(0, 10, dim))
        rows.append({"label": None, "role": "distractor", "split": None})
    catalog = pd.DataFrame(rows)
    catalog.insert(0, "relpath", [f"img{i}.jpg" for i in range(len(catalog))])
    catalog.insert(0, "path", [f"/nowhere/img{i}.jpg" for i in range(len(catalog))])
    catalog["size"], catalog["mtime_ns"] = 1, 1
    meta = {
        "backbone": "resnet50v2",
        "weights_id": "random-seed0",
        "dim": dim,
        "complete": True,
        "n_images": len(catalog),
        "n_rejected": 0,
        "collection_id": "synthetic",
    }
    return FeatureSet(np.asarray(features, dtype=np.float32), catalog, pd.DataFrame(columns=["path", "reason"]), meta)


def save_feature_set(feature_set: FeatureSet, path: Path) -> str:
    save_artifact(
        path,
        FEATURES_KIND,
        {
            "features": feature_set.features,
            "catalog": feature_set.catalog,
            "report": feature_set.report,
            "meta": feature_set.meta,
        },
    )
    return str(path)


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


# ----------------------------------------------------------------------------------------------------------
# Query decoding: bad and unusual uploads
# ----------------------------------------------------------------------------------------------------------


def bad_uploads() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, words the error must contain)."""
    png = encode(gradient(), "PNG")
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")  # 144 MP in 17 kB
    return {
        "empty": (b"", "empty"),
        "non-image": (b"%PDF-1.4 this is not a picture at all" * 10, "not an image"),
        "truncated": (png[: len(png) // 2], "corrupt or truncated"),
        "corrupt": (png[: png.index(b"IDAT") + 20] + bytes(64) + png[png.index(b"IDAT") + 84 :], "corrupt"),
        "1x1": (encode(Image.new("RGB", (1, 1)), "PNG"), "too small"),
        "bomb": (bomb, "too large"),
        "huge file": (b"\xff" * (engine.MAX_UPLOAD_BYTES + 1), "too big"),
    }


@pytest.mark.parametrize("name", list(bad_uploads()))
def test_bad_uploads_raise_user_messages(name: str) -> None:
    data, words = bad_uploads()[name]
    with pytest.raises(ImageDecodeError) as info:
        engine.decode_query(data)
    message = str(info.value)
    assert words in message
    assert "uploaded data" not in message  # no internal wording


def unusual_uploads() -> dict[str, tuple[bytes, str]]:
    """name → (bytes, words the note must contain): these work, with an explanation."""
    sixteen = Image.fromarray((np.mgrid[0:64, 0:96][1] * 600).astype(np.uint16))
    frames = [gradient(), gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "cmyk": (encode(gradient(mode="CMYK"), "JPEG"), "CMYK"),
        "16-bit": (encode(sixteen, "PNG"), "16-bit"),
        "rgba": (encode(gradient(mode="RGBA"), "PNG"), "transparent"),
        "animated gif": (gif.getvalue(), "animated (2 frames)"),
        "50 MP photo": (encode(Image.new("RGB", (8200, 6150), (120, 180, 60)), "JPEG", quality=80), "megapixels"),
    }


@pytest.mark.parametrize("name", list(unusual_uploads()))
def test_unusual_uploads_decode_with_a_note(name: str) -> None:
    data, words = unusual_uploads()[name]
    query = engine.decode_query(data)
    assert query.image.mode == "RGB"
    assert min(query.image.size) >= 8
    assert any(words in note for note in query.notes), query.notes
    if name == "50 MP photo":  # decoded at reduced scale, not at 50 MP
        assert query.image.size[0] * query.image.size[1] < 4_000_000
        assert query.original_size == (8200, 6150)


def test_plain_images_have_no_notes(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    gradient().save(path)
    query = engine.decode_query(path)
    assert query.notes == [] and query.image.size == (96, 64)
    assert engine.decode_query(gradient()).image.size == (96, 64)
    with pytest.raises(ImageDecodeError, match="no such file"):
        engine.decode_query(tmp_path / "missing.png")


def test_tile_is_square() -> None:
    tile = engine.tile(gradient((300, 100)), side=128)
    assert tile.size == (128, 128) and tile.mode == "RGB"
    assert tile.getpixel((64, 2)) == (255, 255, 255)  # padding above a wide image


# ----------------------------------------------------------------------------------------------------------
# Index configurations, tuning and comparison on synthetic features (fast, exact expectations)
# ----------------------------------------------------------------------------------------------------------


def test_index_config_builds_and_validates() -> None:
    from cbir.index import LSHIndex, SequentialScan

    assert isinstance(engine.IndexConfig().build(), SequentialScan)
    lsh = engine.IndexConfig("lsh", "cosine", 3, 2, 0.5, probes=2).build()
    assert isinstance(lsh, LSHIndex) and lsh.params["probes"] == 2 and lsh.metric == "cosine"
    assert engine.IndexConfig("lsh").label.startswith("LSH g=7 h=2")
    assert engine.IndexConfig(metric="cosine").score_name == "similarity"
    with pytest.raises(ValueError, match="kind"):
        engine.IndexConfig("tree")
    with pytest.raises(ValueError, match="metric"):
        engine.IndexConfig(metric="manhattan")
    # hashable and equal by value: the cache key of the tuning page
    assert hash(engine.IndexConfig("lsh", bucket_width=1.0)) == hash(engine.IndexConfig("lsh", bucket_width=1.0))


def test_default_width_and_slider_range() -> None:
    feature_set = synthetic_feature_set()
    features = engine.searchable_features(feature_set)
    width = engine.default_width(features)
    low, high, step = engine.width_range(width)
    assert low < width < high and 0 < step < high - low
    grid = engine.default_grid(features)
    assert width in grid["bucket_width"]  # the tuning page's default setting is a sweep point
    cosine = engine.default_width(features, "cosine")
    assert 0 < cosine < 2  # unit-sphere distances


def test_query_vector_finds_the_row_itself_first() -> None:
    feature_set = synthetic_feature_set()
    search = engine.SearchEngine(feature_set)
    for row in (0, 21, len(feature_set.features) - 1):  # an index image, a query image, a distractor
        for config in (
            engine.IndexConfig(),
            engine.IndexConfig(metric="cosine"),
            engine.default_lsh_config(feature_set.features),
        ):
            result = search.query_vector(feature_set.features[row], config)
            first = result.results.iloc[0]
            assert first["id"] == row and first["rank"] == 1
            assert first["score"] == pytest.approx(1.0 if config.metric == "cosine" else 0.0, abs=1e-3)
            assert result.score_name == config.score_name
            assert 0 < result.visited <= len(feature_set.features)
            assert result.visited_fraction == pytest.approx(result.visited / len(feature_set.features))
    assert list(result.results.columns) == ["rank", "id", "path", "relpath", "label", "role", "score"]


def test_search_engine_caches_indexes() -> None:
    search = engine.SearchEngine(synthetic_feature_set(), max_indexes=2)
    a = search.index(engine.IndexConfig())
    assert search.index(engine.IndexConfig()) is a
    search.index(engine.IndexConfig(metric="cosine"))
    search.index(engine.IndexConfig("lsh", bucket_width=5.0))
    assert search.index(engine.IndexConfig()) is not a  # evicted beyond max_indexes


def test_evaluate_config_scan_vs_lsh_and_slider_directions() -> None:
    feature_set = synthetic_feature_set()
    scan = engine.evaluate_config(feature_set, engine.IndexConfig())
    assert scan.map > 0.9 and scan.visited_fraction == 1.0 and scan.n_queries == 20
    assert scan.n_indexed == 100  # 80 index + 20 distractors
    assert engine.evaluate_config(feature_set, engine.IndexConfig(), with_distractors=False).n_indexed == 80
    base = engine.default_lsh_config(engine.searchable_features(feature_set))

    def visited(**changes: float) -> float:
        return engine.evaluate_config(feature_set, dataclasses.replace(base, **changes)).mean_visited

    assert visited(n_tables=10) > visited(n_tables=1)
    assert visited(n_projections=1) > visited(n_projections=8)
    assert visited(bucket_width=base.bucket_width * 4) > visited(bucket_width=base.bucket_width / 4)
    assert visited(probes=10) >= visited(probes=0)


def test_sweep_pareto_and_recommendation(tmp_path: Path) -> None:
    feature_set = synthetic_feature_set()
    assert len(engine.sweep_configs(feature_set)) == 1 + 5 * 4 * 3  # the default grid, plus the exact scan
    width = engine.default_width(engine.searchable_features(feature_set))
    grid = {"n_tables": [1, 7], "n_projections": [2, 8], "bucket_width": [width, 2 * width]}
    seen = []
    table = engine.run_sweep(feature_set, grid=grid, progress=lambda done, total: seen.append((done, total)))
    assert len(table) == 9 and seen[-1] == (9, 9)
    assert table.iloc[0]["index"] == "scan" and table["pareto"].any()
    assert {"map", "mean_visited", "pareto", "label", "n_tables"} <= set(table.columns)
    recommended = engine.recommended_config(table, n_indexed=100)
    assert recommended is not None and recommended.kind == "lsh"
    row = table[table["label"] == recommended.label].iloc[0]
    assert row["mean_visited"] <= engine.RECOMMEND_BUDGET_FRACTION * 100
    assert engine.recommended_config(table, n_indexed=100, budget_fraction=-1.0) is None
    # the pages build the same table from per-setting (cached) evaluations
    path = save_feature_set(feature_set, tmp_path / "synthetic.joblib")
    version = engine.file_version(path)
    configs = engine.sweep_configs(engine.load_feature_set(path, version), grid=grid)
    rebuilt = engine.sweep_table(configs, [engine.evaluate_for(path, version, c) for c in configs])
    pd.testing.assert_series_equal(rebuilt["map"], table["map"])
    assert engine.sweep_configs_for(path, version) == engine.sweep_configs(feature_set)


def test_comparison_table_shape(tmp_path: Path) -> None:
    with_distractors = save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")
    without = save_feature_set(synthetic_feature_set(n_distractors=0, seed=1), tmp_path / "b.joblib")
    items = [
        (label, path, engine.file_version(path), tuple(engine.comparison_configs_for(path, 0)))
        for label, path in (("A", with_distractors), ("B", without))
    ]
    seen = []
    comparison = engine.compare(items, progress=lambda done, total: seen.append(total))
    table = comparison.table
    # A: 2 indexes × (with, without); B has no distractors: 2 indexes × (with) only
    assert len(table) == 6 and seen[-1] == 6
    assert list(table.columns) == engine.COMPARISON_COLUMNS
    assert set(table["index"]) == {"exact scan", "LSH"}
    assert (table.loc[table["index"] == "exact scan", "visited_fraction"] == 1.0).all()
    assert (table.loc[table["index"] == "LSH", "visited_fraction"] < 1.0).all()
    assert table["map"].between(0, 1).all() and (table["score_name"] == "distance").all()
    assert len(comparison.per_class) == 6 * 4  # one row per job and class
    assert list(comparison.per_class.columns) == ["feature_set", "index", "distractors", "class", "n_queries", "map"]
    for name, value in (("map", "mAP@10"), ("mean_visited", None), ("mean_score", None)):
        figure = engine.fig_comparison(table, name, value)
        assert {trace.name for trace in figure.data} == {"exact scan", "LSH"}
    assert len(engine.fig_comparison_per_class(comparison.per_class).data) == 4  # A, B × scan, LSH


def test_comparison_uses_the_recommended_lsh_setting() -> None:
    feature_set = synthetic_feature_set()
    width = engine.default_width(engine.searchable_features(feature_set))
    sweep = engine.run_sweep(feature_set, grid={"n_tables": [2, 7], "n_projections": [1, 2], "bucket_width": [width]})
    configs = engine.comparison_configs(feature_set, sweep=sweep)
    assert configs[0] == engine.IndexConfig("scan") and configs[1] == engine.recommended_config(sweep, 100)
    assert engine.comparison_configs(feature_set)[1] == engine.default_lsh_config(
        feature_set.features[feature_set.roles != "query"]
    )


def test_distance_analysis() -> None:
    analysis = engine.distance_analysis(synthetic_feature_set(), n_pairs=500)
    assert analysis.table.iloc[0]["class"] == "(all)" and len(analysis.table) == 5
    assert list(analysis.sample.columns) == ["euclidean", "cosine"] and len(analysis.sample) == 500
    summary = engine.distance_summary({"A": analysis, "B": analysis})
    assert summary.columns[0] == "feature_set" and len(summary) == 10
    figure = engine.fig_distance_histograms({"A": analysis.sample}, "cosine")
    assert figure.data[0].type == "histogram"


# ----------------------------------------------------------------------------------------------------------
# Workspace and extractor selection
# ----------------------------------------------------------------------------------------------------------


def test_extractor_spec_follows_the_feature_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.extractor_spec({"backbone": "resnet50", "weights_id": "random-seed3"}) == engine.ExtractorSpec(
        "resnet50", None, 3
    )
    spec = engine.extractor_spec({"backbone": BACKBONE, "weights_id": "efficientnet_lite0_imagenet-a539f384b6"})
    assert spec == engine.ExtractorSpec(BACKBONE, "imagenet")
    weights = tmp_path / "mine.keras"
    weights.write_bytes(b"x")
    assert engine.extractor_spec(
        {"backbone": "resnet50v2", "weights_id": "x", "weights_path": str(weights)}
    ) == engine.ExtractorSpec("resnet50v2", str(weights))
    # a fine-tuned model is found by its identity among the fine-tuning outputs
    from cbir import config
    from cbir.backbones import weights_identity

    model = config.artifacts_dir() / "finetune" / "c" / "resnet50v2-model2" / "model2-pool.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    found = engine.extractor_spec({"backbone": "resnet50v2", "weights_id": weights_identity(str(model))})
    assert found == engine.ExtractorSpec("resnet50v2", str(model))
    with pytest.raises(engine.EngineError, match="cannot find the weights"):
        engine.extractor_spec({"backbone": "resnet50v2", "weights_id": "model9-pool-0123456789"})


def test_feature_set_labels() -> None:
    assert (
        engine.feature_set_label(
            {"backbone": "resnet50", "weights": "resnet50_weights_tf_dim_ordering_tf_kernels_notop-1234567890"}
        )
        == "resnet50 · ImageNet"
    )
    assert (
        engine.feature_set_label({"backbone": "resnet50v2", "weights_id": "model2-pool-0123456789"})
        == "resnet50v2 · fine-tuned model2-pool"
    )
    assert engine.pick_feature_set({}, None) is None
    assert engine.pick_feature_set({"a": "1", "b": "2"}, "b") == ("b", "2")
    assert engine.pick_feature_set({"a": "1", "b": "2"}, "gone") == ("a", "1")


def test_build_default_without_openclipart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cbir.openclipart

    monkeypatch.setattr(cbir.openclipart, "OPENCLIPART_DIR", tmp_path / "not-installed")
    status = engine.collection_status(tmp_path / "empty")
    assert status.catalog is None and not status.ready and not status.openclipart_installed
    assert "not found" in (status.error or "")
    with pytest.raises(engine.EngineError, match="apt-get install openclipart-png"):
        engine.build_default(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------------------
# The real thing: Open Clip Art + EfficientNet-Lite0
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_collection_images_find_themselves_first(
    search_engine: engine.SearchEngine, small_features: FeatureSet
) -> None:
    catalog = small_features.catalog
    rows = [int(catalog.index[catalog["role"] == role][0]) for role in ("index", "query", "distractor")]
    features = small_features.features
    for row in rows:
        path = catalog.loc[row, "path"]
        for config in (engine.IndexConfig(), engine.IndexConfig(metric="cosine"), engine.default_lsh_config(features)):
            result = search_engine.query(Path(path).read_bytes(), config)
            top = result.results
            assert len(top) >= 1 and top.iloc[0]["rank"] == 1
            best = top.iloc[0]["score"]
            assert best == pytest.approx(1.0 if config.metric == "cosine" else 0.0, abs=1e-3)
            # itself first; an exact duplicate drawing in the collection may tie with it (same features)
            tied = top[np.isclose(top["score"], best, atol=1e-3)]
            assert row in tied["id"].tolist()
            assert np.allclose(features[tied["id"].to_numpy()], features[row], atol=1e-3)
            assert result.seconds >= result.search_seconds > 0 and result.embed_seconds > 0
    exact = search_engine.query(Path(catalog.loc[rows[0], "path"]))
    assert len(exact.results) == engine.DEFAULT_K and exact.visited == len(features)


@pytest.mark.integration
@pytest.mark.slow
def test_real_query_from_an_upload_with_notes(search_engine: engine.SearchEngine, small_features: FeatureSet) -> None:
    source = Image.open(small_features.catalog["path"].iloc[0]).convert("RGBA")
    result = search_engine.query(encode(source, "PNG"))
    assert any("transparent" in note for note in result.notes)
    assert result.results.iloc[0]["score"] < 1e-3  # the same pixels, composited on white: the same features
    assert len(result.results) == engine.DEFAULT_K


@pytest.mark.integration
def test_collection_status_of_a_real_collection(openclipart_small: Path, small_features_file: Path) -> None:
    empty = engine.collection_status(openclipart_small)
    assert empty.catalog is not None and not empty.ready and empty.feature_sets.empty
    install_feature_set(small_features_file, openclipart_small)
    status = engine.collection_status(openclipart_small)
    assert status.ready
    counts = status.counts()
    assert {"index", "query", "distractor", "total"} <= set(counts.columns)
    assert counts["total"].sum() == len(status.catalog.images)
    long = status.counts_long()
    assert long["images"].sum() == len(status.catalog.images)
    assert len(engine.fig_collection_counts(long).data) == 3
    choices = engine.complete_feature_sets(openclipart_small)
    assert list(choices) == [f"{BACKBONE} · ImageNet"]


def test_path_keyed_helpers_and_small_pieces(tmp_path: Path) -> None:
    from cbir import config
    from cbir.index import SequentialScan

    feature_set = synthetic_feature_set()
    path = save_feature_set(feature_set, tmp_path / "synthetic.joblib")
    version = engine.file_version(path)
    assert version > 0 and engine.file_version(tmp_path / "missing") == 0
    search = engine.search_engine_for(path, version)  # no model needed to search with stored vectors
    assert search.query_vector(feature_set.features[7]).results.iloc[0]["id"] == 7
    defaults = engine.lsh_defaults_for(path, version, "cosine")
    assert defaults.kind == "lsh" and defaults.metric == "cosine" and defaults.n_tables == engine.DEFAULT_TABLES
    assert engine.nearest([1, 2, 4, 7, 10], 8) == 7
    figure = engine.fig_per_class(
        pd.DataFrame({"class": ["a"], "n_queries": [3], "map": [0.5]}),
        pd.DataFrame({"class": ["a"], "n_queries": [3], "map": [0.7]}),
    )
    assert {trace.name for trace in figure.data} == {"current setting", "exact scan"}
    assert engine.list_indexes().empty
    SequentialScan().fit(feature_set.features).save(config.artifacts_dir() / "indexes" / "scan.joblib")
    assert engine.list_indexes()["index"].tolist() == ["scan.joblib"]
