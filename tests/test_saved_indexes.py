"""Indexes kept on disk (cbir.features.saved_indexes): the round trip with what they were built from, the search
engine loading one instead of building it, growth keeping them in step (an add) or marking them stale (a removal),
a changed feature set never served from a stale index, and ``python -m cbir index build / list``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import PixelExtractor, real_images

from cbir.cli.main import main
from cbir.features import saved_indexes
from cbir.features.extractor import load_features
from cbir.features.saved_indexes import build_saved, index_dir, load_fresh, read_info
from cbir.features.sources import FeatureSetVersion
from cbir.features.store import append_rows, read_manifest, read_table
from cbir.features.workspace import list_indexes
from cbir.indexes.registry import IndexConfig
from cbir.service import growth
from cbir.service.search import SearchEngine

LSH = IndexConfig("lsh", bucket_width=40.0, n_tables=4, n_projections=2)


def _engine(store: Path) -> SearchEngine:
    return SearchEngine(load_features(store), PixelExtractor(), path=store)  # type: ignore[arg-type]


def test_round_trip_records_what_it_was_built_from(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    features = load_features(store).features
    for config in (IndexConfig("scan"), LSH, IndexConfig("hnsw", "cosine")):
        info = build_saved(store, config)
        manifest = read_manifest(store)
        assert info["feature_set"] == str(store.resolve()) and info["n_objects"] == len(features)
        assert info["version"] == {"base": manifest["base"], "generation": 0, "n_rows": len(features)}
        assert info["build_seconds"] >= 0 and IndexConfig(**info["config"]) == config.fit_key
        folder = index_dir(store, config)
        assert [p.name for p in folder.glob("*.joblib")] == [info["file"]]
        loaded, reason = load_fresh(store, config, FeatureSetVersion.of(store))
        assert reason is None and loaded is not None
        built = config.build().fit(features)
        queries = features[:5] + 0.01
        np.testing.assert_array_equal(loaded.search(queries, 5).ids, built.search(queries, 5).ids)
    # the search-time knob is not part of the setting: one saved HNSW answers every ef, set to the one asked for
    tuned, _ = load_fresh(store, IndexConfig("hnsw", "cosine", ef_search=200), FeatureSetVersion.of(store))
    assert tuned is not None and tuned.ef_search == 200
    assert index_dir(store, IndexConfig("hnsw", ef_search=200)) == index_dir(store, IndexConfig("hnsw"))
    table = list_indexes()
    assert len(table) == 3 and table["fresh"].all() and (table["images"] == len(features)).all()
    # building again replaces the index file (one left) and its record
    first = read_info(index_dir(store, LSH))
    again = build_saved(store, LSH)
    assert again["file"] != first["file"] and len(list(index_dir(store, LSH).glob("*.joblib"))) == 1


def test_the_engine_loads_a_saved_index_instead_of_building_it(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    build_saved(store, LSH)
    engine = _engine(store)
    vector = engine.feature_set.features[3]
    answer = engine.query_vector(vector, LSH)
    assert engine.sources[LSH] == "loaded" and answer.results["id"].iloc[0] == 3 and not answer.notes
    scan = IndexConfig("scan")
    engine.query_vector(vector, scan)
    assert engine.sources[scan] == "built"  # none saved


def test_an_add_updates_saved_indexes_in_place(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    for config in (IndexConfig("scan"), LSH, IndexConfig("hnsw")):
        build_saved(store, config)
    n = len(load_features(store).features)
    image = real_images(6, 1)[5]
    report = growth.add_images(store, [image], label="animals", extractor=PixelExtractor())
    assert any("3 saved index(es) updated in place" in note for note in report.notes)
    current = FeatureSetVersion.of(store)
    assert current.generation == 1 and current.n_rows == n + 1
    new_row = load_features(store).features[-1:]
    for config in (IndexConfig("scan"), LSH, IndexConfig("hnsw")):
        info = read_info(index_dir(store, config))
        assert info is not None and info["version"]["generation"] == 1 and info["n_objects"] == n + 1
        loaded, reason = load_fresh(store, config, current)
        assert reason is None and loaded is not None
        assert loaded.search(new_row, 1).ids[0, 0] == n  # the new image finds itself
    engine = _engine(store)
    assert engine.query_vector(new_row[0], LSH).results["id"].iloc[0] == n and engine.sources[LSH] == "loaded"


def test_a_removal_marks_saved_indexes_stale_and_they_are_never_served(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    build_saved(store, LSH)
    relpath = read_table(store, read_manifest(store)["catalog"], [])["relpath"].iloc[0]
    report = growth.remove_images(store, [relpath])
    assert any("marked stale" in note for note in report.notes)
    info = read_info(index_dir(store, LSH))
    assert info is not None and "1 image(s) removed" in info["stale"]
    index, reason = load_fresh(store, LSH, FeatureSetVersion.of(store))
    assert index is None and "stale" in reason
    engine = _engine(store)
    answer = engine.query_vector(engine.feature_set.features[0], LSH)
    assert engine.sources[LSH] == "built" and "stale" in answer.notes[0] and "built in memory" in answer.notes[0]
    assert engine.index(LSH).n_objects == len(engine.feature_set.features)
    table = list_indexes()
    assert not table["fresh"].iloc[0] and table["freshness"].iloc[0].startswith("stale: 1 image(s) removed")
    # rebuilding makes it fresh again
    build_saved(store, LSH)
    assert list_indexes()["fresh"].all()


def test_a_feature_set_changed_behind_its_back_is_not_served(grown: tuple[Path, Path]) -> None:
    """A change growth did not see (another tool appending rows) leaves the saved index at an older generation: the
    version check refuses it."""
    _root, store = grown
    build_saved(store, IndexConfig("scan"))
    feature_set = load_features(store)
    row = feature_set.catalog.iloc[:1].assign(path="/elsewhere/x.png", relpath="x.png")
    append_rows(store, feature_set.features[:1], row)
    index, reason = load_fresh(store, IndexConfig("scan"), FeatureSetVersion.of(store))
    assert index is None and "generation 0" in reason and "generation 1" in reason
    assert not list_indexes()["fresh"].any()


def test_unreadable_saved_index_is_built_instead(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    info = build_saved(store, IndexConfig("scan"))
    (index_dir(store, IndexConfig("scan")) / info["file"]).write_bytes(b"not a joblib")
    index, reason = load_fresh(store, IndexConfig("scan"), FeatureSetVersion.of(store))
    assert index is None and "unreadable" in reason


def test_cli_index_build_and_list(grown: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _root, store = grown
    assert main(["index", "list"]) == 0
    assert "no saved index" in capsys.readouterr().out
    assert main(["index", "build", "--kind", "lsh", "-g", "3", "--features", str(store)]) == 0
    out = capsys.readouterr().out
    assert "bucket width w =" in out and "saved to" in out
    assert main(["index", "list"]) == 0
    out = capsys.readouterr().out
    assert "lsh-euclidean-g3-h2-w" in out and "fresh" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", "--kind", "hnsw", "--ef-search", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ef-search" in err and "must be >= 1" in err


def test_setting_names_are_stable_and_distinct() -> None:
    names = {
        saved_indexes.setting_name(config)
        for config in (
            IndexConfig("scan"),
            IndexConfig("scan", "cosine"),
            LSH,
            IndexConfig("lsh", bucket_width=41.0, n_tables=4, n_projections=2),
            IndexConfig("lsh", bucket_width=40.0, n_tables=4, n_projections=2, seed=1),
            IndexConfig("cross_polytope"),
            IndexConfig("cross_polytope", bits=12),
            IndexConfig("hnsw"),
            IndexConfig("hnswlib"),
            IndexConfig("ivf_flat"),
        )
    }
    assert len(names) == 10
    assert (
        saved_indexes.setting_name(IndexConfig("lsh", probes=3, bucket_width=2.5)) == "lsh-euclidean-g7-h2-w2.5-seed0"
    )
    assert json.loads(json.dumps(sorted(names)))  # plain names
