"""Adding and removing images in place (cbir.service.growth): copies of real images of the default collection, a
model-free
extractor for the quick loop and the real EfficientNet-Lite0 for the real-feature checks; the store's commit point
under an injected crash; the shared search engine following the store; the CLI."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import REAL_COLLECTION, PixelExtractor, copy_real_collection, real_images, save_feature_set, switch_page
from conftest import require
from PIL import Image

from cbir.cli.main import main
from cbir.data.collection import scan_collection
from cbir.features import store as feature_store
from cbir.features.extractor import extract_collection
from cbir.features.sources import load_features
from cbir.features.store import read_manifest
from cbir.indexes.registry import IndexConfig
from cbir.service import growth
from cbir.service.search import SearchEngine, search_engine_for


def _new_image() -> Path:
    """A real image the small collection does not hold (a later training image of the first class)."""
    return real_images(6, 1)[5]


def _snapshot(root: Path, store: Path) -> tuple[list[str], bytes, list[str]]:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return files, (store / "meta.json").read_bytes(), sorted(p.name for p in store.iterdir() if p.name != ".lock")


def test_add_copies_the_image_computes_its_features_once_and_appends(grown: tuple[Path, Path]) -> None:
    root, store = grown
    before = load_features(store)
    shard = read_manifest(store)["features"][0]
    image = _new_image()
    report = growth.add_images(store, [image], label="animals", extractor=PixelExtractor())
    after = load_features(store)
    assert len(after.catalog) == len(before.catalog) + 1 == report.n_images
    row = after.catalog.iloc[-1]
    assert row["relpath"] == f"training_set/animals/{image.name}" and row["role"] == "index"
    assert (root / row["relpath"]).read_bytes() == image.read_bytes()
    # the old rows are untouched (their shard is not rewritten), the new row is what extraction computes
    manifest = read_manifest(store)
    assert manifest["features"][0] == shard and len(manifest["features"]) == 2 and manifest["generation"] == 1
    np.testing.assert_array_equal(after.features[: len(before.catalog)], before.features)
    np.testing.assert_array_equal(after.features[-1], PixelExtractor().transform([Image.open(image).convert("RGB")])[0])
    # a rerun of the extraction computes nothing: the added row is in the cache under its key
    again = extract_collection(scan_collection(root), PixelExtractor(), out_path=store)
    assert again.meta["computed"] == 0 and len(again.catalog) == len(after.catalog)
    assert "added 1 image" in report.summary() and "training_set/animals" in report.summary()


def test_new_class_and_unlabelled_images_go_to_their_folders(grown: tuple[Path, Path]) -> None:
    root, store = grown
    first, second = real_images(1, 5)[3:5]
    growth.add_images(store, [first], label="my drawings", extractor=PixelExtractor())
    growth.add_images(store, [("camera photo", second.read_bytes())], extractor=PixelExtractor())
    catalog = load_features(store).catalog
    new_class, unlabelled = catalog.iloc[-2], catalog.iloc[-1]
    assert new_class["relpath"] == f"training_set/my drawings/{first.name}" and new_class["label"] == "my drawings"
    assert unlabelled["relpath"] == "distractors/added/camera_photo.jpg" and unlabelled["role"] == "distractor"
    assert unlabelled["label"] is None or unlabelled["label"] != unlabelled["label"]  # None / NaN
    # the collection scan agrees with the roles the store gave them
    scanned = scan_collection(root).images.set_index("relpath")
    assert scanned.loc[new_class["relpath"], "role"] == "index"
    assert scanned.loc[unlabelled["relpath"], "role"] == "distractor"
    for bad in ("", "../up", ".hidden", "training_set", "distractors"):
        with pytest.raises(growth.GrowthError, match="cannot be a class name"):
            growth.add_images(store, [_new_image()], label=bad, extractor=PixelExtractor())


def test_file_names_are_kept_when_safe() -> None:
    assert growth._file_name("beverages__icecube_.jpg", b"") == "beverages__icecube_.jpg"
    assert growth._file_name(".hidden.PNG", b"") == "hidden.png"
    assert growth._file_name("camera photo", b"\x89PNG....") == "camera_photo.png"
    assert growth._file_name("a/b/../c d?.jpeg", b"") == "c_d_.jpeg"


def test_bad_files_and_copies_are_refused_and_nothing_changes(grown: tuple[Path, Path], tmp_path: Path) -> None:
    root, store = grown
    before = _snapshot(root, store)
    indexed = real_images(1, 1)[0]
    near = io.BytesIO()
    Image.open(indexed).convert("RGB").resize((300, 300)).save(near, "JPEG", quality=70)
    cases = {
        "not an image": ([("notes.txt", b"plain text, not a picture" * 20)], "not an image"),
        "blank": ([("white.png", _png(Image.new("RGB", (64, 64), "white")))], "blank image"),
        "bad among good": ([_new_image(), ("broken.png", _png(Image.new("RGB", (64, 64)))[:40])], "broken.png"),
        "exact copy": ([("copy.jpg", indexed.read_bytes())], f"exact duplicate of training_set/animals/{indexed.name}"),
        "near copy": ([("resized.jpg", near.getvalue())], "near duplicate (perceptual hashes"),
        "twice in a batch": ([_new_image(), ("again.jpg", _new_image().read_bytes())], "added together"),
    }
    for name, (files, words) in cases.items():
        with pytest.raises(growth.GrowthError, match="nothing was added") as error:
            growth.add_images(store, files, label="animals", extractor=PixelExtractor())
        assert words in str(error.value), (name, str(error.value))
        assert _snapshot(root, store) == before, name
    with pytest.raises(growth.GrowthError, match="no such file"):
        growth.add_images(store, [tmp_path / "missing.jpg"], extractor=PixelExtractor())
    # a copy can still be added on purpose
    report = growth.add_images(
        store, [("copy.jpg", indexed.read_bytes())], label="animals", extractor=PixelExtractor(), allow_duplicates=True
    )
    assert report.images["relpath"].tolist() == ["training_set/animals/copy.jpg"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_crash_before_the_commit_leaves_the_previous_state(
    grown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, store = grown
    files, manifest, _ = _snapshot(root, store)
    before = load_features(store)

    def power_cut(folder: Path, manifest: dict) -> None:
        raise OSError("power cut before the manifest was replaced")

    monkeypatch.setattr(feature_store, "_commit", power_cut)
    with pytest.raises(OSError, match="power cut"):
        growth.add_images(store, [_new_image()], label="animals", extractor=PixelExtractor())
    # the new shard and catalog were written, but the manifest (the commit point) is the previous one
    assert (store / "meta.json").read_bytes() == manifest
    assert any(
        p.name.startswith("features-") and p.name not in json.loads(manifest)["features"] for p in store.iterdir()
    )
    after = load_features(store)
    np.testing.assert_array_equal(after.features, before.features)
    assert after.catalog.equals(before.catalog)
    assert _snapshot(root, store)[0] == files  # the image was taken back out of the collection
    monkeypatch.undo()
    growth.add_images(store, [_new_image()], label="animals", extractor=PixelExtractor())
    named = set(read_manifest(store)["features"]) | {read_manifest(store)["catalog"]}
    leftovers = [
        p.name for p in store.glob("*-*.*") if p.name not in named and not p.name.startswith(("report", "rej"))
    ]
    assert leftovers == []  # the next commit removed the half-written generation's files


def test_remove_tombstones_every_store_and_moves_the_file(grown: tuple[Path, Path]) -> None:
    root, store = grown
    other = store.parent / "pixels-copy"
    shutil.copytree(store, other)
    before = load_features(store)
    gone = before.catalog["relpath"].iloc[2]
    report = growth.remove_images(store, [gone])
    assert report.images["relpath"].tolist() == [gone] and report.n_images == len(before.catalog) - 1
    for path in (store, other):  # both feature sets of the collection
        assert gone not in load_features(path).catalog["relpath"].tolist()
    assert not (root / gone).exists() and (root / growth.REMOVED_FOLDER / gone).is_file()
    assert gone not in scan_collection(root).images["relpath"].tolist()
    # a full re-extraction computes nothing and compacts the store
    again = extract_collection(scan_collection(root), PixelExtractor(), out_path=store)
    assert again.meta["computed"] == 0 and len(again.catalog) == len(before.catalog) - 1
    assert read_manifest(store)["removed"] == []
    with pytest.raises(growth.GrowthError, match="not in the feature set"):
        growth.remove_images(store, [gone])


def test_restore_undoes_a_removal_in_every_store(grown: tuple[Path, Path]) -> None:
    root, store = grown
    other = store.parent / "pixels-copy"
    shutil.copytree(store, other)
    before = load_features(store)
    gone = before.catalog["relpath"].iloc[4]
    growth.remove_images(store, [gone])
    assert growth.removed_images(store)["relpath"].tolist() == [gone]
    report = growth.restore_images(store, [gone])
    assert report.images["relpath"].tolist() == [gone] and report.n_images == len(before.catalog)
    assert (root / gone).is_file() and not (root / growth.REMOVED_FOLDER / gone).exists()
    for path in (store, other):
        after = load_features(path)
        assert after.catalog["relpath"].tolist() == before.catalog["relpath"].tolist()
        np.testing.assert_array_equal(after.features, before.features)
    assert growth.removed_images(store).empty
    with pytest.raises(growth.GrowthError, match="not removed"):
        growth.restore_images(store, [gone])
    # a removed image whose place was taken by a new file is not restored over it
    growth.remove_images(store, [gone])
    (root / gone).write_bytes(b"another file")
    with pytest.raises(growth.GrowthError, match="another file"):
        growth.restore_images(store, [gone])


def test_legacy_joblib_feature_sets_say_how_to_convert(grown: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = grown
    legacy = Path(save_feature_set(load_features(store), tmp_path / "old.joblib"))
    with pytest.raises(growth.GrowthError, match="python -m cbir extract"):
        growth.add_images(legacy, [_new_image()], extractor=PixelExtractor())


def test_the_shared_engine_follows_the_store_without_refitting(grown: tuple[Path, Path]) -> None:
    _root, store = grown
    engine = search_engine_for(str(store), 0, extractor=PixelExtractor())  # type: ignore[arg-type]
    scan, lsh = IndexConfig("scan"), IndexConfig("lsh", bucket_width=40.0, n_tables=4, n_projections=2)
    engine.query_vector(engine.feature_set.features[0], lsh)
    fitted = engine.index(lsh)
    n = engine.n_objects
    image = _new_image()
    assert engine.query(image, scan).results["relpath"].iloc[0] != f"training_set/animals/{image.name}"
    growth.add_images(store, [image], label="animals", extractor=PixelExtractor())  # as another process would
    for config in (scan, lsh):
        answer = engine.query(image, config)
        assert answer.results["relpath"].iloc[0] == f"training_set/animals/{image.name}"
        assert answer.results["score"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    grown_lsh = engine.index(lsh)
    assert grown_lsh is not fitted and grown_lsh.n_objects == n + 1 == engine.n_objects
    assert grown_lsh._directions is fitted._directions  # appended to the buckets, hash functions not redrawn
    assert engine.generations == 1 and not engine.refresh()  # nothing new: one stat, no work
    # removing it (from another process too) takes it out of every answer and of the pick list
    growth.remove_images(store, [f"training_set/animals/{image.name}"])
    for config in (scan, lsh, IndexConfig("hnsw")):
        answer = engine.query(image, config)
        assert f"training_set/animals/{image.name}" not in answer.results["relpath"].tolist()
    assert engine.n_objects == n and f"training_set/animals/{image.name}" not in engine.catalog["relpath"].tolist()
    # visited counts the live images only (the removed row stays in the fitted indexes as a tombstone)
    assert engine.query(image, scan).visited == n
    assert all(engine.query(image, config).visited <= n for config in (lsh, IndexConfig("ivf_flat")))
    # undo: the file comes back, its stored features answer again (nothing recomputed), in every session
    restored = growth.restore_images(store, [f"training_set/animals/{image.name}"])
    assert restored.n_images == n + 1 and (_root / f"training_set/animals/{image.name}").is_file()
    answer = engine.query(image, scan)
    assert answer.results["relpath"].iloc[0] == f"training_set/animals/{image.name}"
    assert answer.visited == answer.n_objects == n + 1 == engine.n_objects


def test_engine_answers_while_another_thread_adds(grown: tuple[Path, Path]) -> None:
    import threading

    _, store = grown
    engine = SearchEngine(load_features(store), PixelExtractor(), path=store)  # type: ignore[arg-type]
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_querying() -> None:
        try:
            while not stop.is_set():
                for config in (IndexConfig("scan"), IndexConfig("lsh", bucket_width=40.0)):
                    answer = engine.query_vector(engine.feature_set.features[0], config)
                    assert len(answer.results) and answer.results["path"].notna().all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=keep_querying) for _ in range(3)]
    for thread in threads:
        thread.start()
    for image in real_images(6, 3)[::6][:3]:
        growth.add_images(store, [image], label="plants", extractor=PixelExtractor(), allow_duplicates=True)
        engine.refresh()
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert engine.n_objects == len(load_features(store).catalog)


def test_cli_add_and_remove(grown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _root, store = grown
    for module in ("cbir.features.query_model", "cbir.service.search"):  # growth's model and the engine's
        monkeypatch.setattr(f"{module}.make_extractor", lambda spec, warm_up=True: PixelExtractor())
        monkeypatch.setattr(f"{module}.extractor_spec", lambda meta: None)
    image = _new_image()
    assert main(["add", str(image), "--label", "animals", "--features", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"training_set/animals/{image.name}" in out and "a full re-extraction" in out
    assert main(["add", str(image), "--label", "animals", "--features", str(store)]) == 2
    assert "exact duplicate" in capsys.readouterr().err
    assert main(["remove", f"training_set/animals/{image.name}", "--features", str(store)]) == 0
    assert "removed 1 image" in capsys.readouterr().out
    assert main(["remove", "no/such.jpg", "--features", str(store)]) == 2
    assert "not in the feature set" in capsys.readouterr().err
    assert main(["restore", "--features", str(store)]) == 0  # lists what can be restored
    assert f"training_set/animals/{image.name}" in capsys.readouterr().out
    assert main(["restore", f"training_set/animals/{image.name}", "--features", str(store)]) == 0
    assert "restored 1 image" in capsys.readouterr().out
    assert f"training_set/animals/{image.name}" in load_features(store).catalog["relpath"].tolist()
    assert main(["restore", f"training_set/animals/{image.name}", "--features", str(store)]) == 2
    assert "not removed" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Real features, the real model and the Search page (EfficientNet-Lite0 loads in a few seconds: slow)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def real_grown(tmp_path: Path) -> tuple[Path, Path]:
    """(collection, store): 18 real images with their real EfficientNet-Lite0 ImageNet features, the store where the
    app looks for the collection's feature sets."""
    from builders import real_store_copy

    from cbir.core import config
    from cbir.data.collection import collection_id

    require(REAL_COLLECTION.is_dir(), f"no default collection at {REAL_COLLECTION} (python -m cbir openclipart)")
    root = copy_real_collection(tmp_path / "collection")
    out = config.artifacts_dir() / "features" / collection_id(root) / "efficientnet_lite0-imagenet"
    return root, real_store_copy(root, out)


def _real_row(relpath: str) -> np.ndarray:
    """The features the extraction pipeline computes for a default-collection image: its row in the default
    collection's store when there is one, else computed the way ``extract`` computes it (decode, batch, model)."""
    stores = sorted((REAL_COLLECTION.parents[1] / "features").glob("*/efficientnet_lite0-*imagenet*/meta.json"))
    if not stores:
        from cbir.features.extractor import FeatureExtractor

        ok, features, _ = next(
            FeatureExtractor("efficientnet_lite0", "imagenet").iter_batches([str(REAL_COLLECTION / relpath)])
        )
        assert ok and features is not None
        return features[0]
    real = load_features(stores[0].parent)
    return np.asarray(real.features[real.catalog["relpath"].tolist().index(relpath)])


@pytest.mark.slow
@pytest.mark.integration
def test_real_model_adds_the_features_extraction_computed(real_grown: tuple[Path, Path]) -> None:
    """An image of the default collection added with the feature set's own model gets the row the full extraction
    computed for it, and finds itself first; a recompressed copy of an indexed drawing is refused."""
    _, store = real_grown
    image = real_images(1, 5, "validation_set")[4]  # a query image of a class the small collection lacks
    report = growth.add_images(store, [image], label=image.parent.name)
    added = load_features(store)
    np.testing.assert_allclose(added.features[-1], _real_row(image.relative_to(REAL_COLLECTION).as_posix()), atol=2e-4)
    engine = search_engine_for(str(store), 0)
    assert engine.query(image).results["relpath"].iloc[0] == report.images["relpath"].iloc[0]
    indexed = real_images(1, 2)[1]
    near = io.BytesIO()
    Image.open(indexed).convert("RGB").save(near, "JPEG", quality=60)
    with pytest.raises(
        growth.GrowthError, match=r"near duplicate \(perceptual hashes \d bits apart\) of training_set/"
    ):
        growth.add_images(store, [("recompressed.jpg", near.getvalue())], label="animals", extractor=engine.extractor)


@pytest.mark.slow
@pytest.mark.integration
def test_search_page_adds_an_upload_and_other_sessions_find_it(
    real_grown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from cbir.app import ui
    from cbir.core import config

    root, store = real_grown
    monkeypatch.setenv("CBIR_COLLECTION", str(root))
    image = real_images(1, 5, "validation_set")[4]
    relpath = f"training_set/{image.parent.name}/{image.name}"

    def session() -> AppTest:
        at = AppTest.from_file(str(config.PROJECT_ROOT / "app.py"), default_timeout=180).run()
        switch_page(at, "Search").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    first = session()
    first.file_uploader[0].set_value((image.name, image.read_bytes(), "image/jpeg")).run()
    assert relpath not in first.dataframe[-1].value["Path"].tolist()
    assert "search-add-class" not in [box.key for box in first.selectbox]  # the controls come when asked for
    first.toggle(key="search-change").set_value(True).run()  # the controls to change the collection
    first.selectbox(key="search-add-class").set_value("New class…").run()
    first.text_input(key="search-add-new").set_value(image.parent.name).run()
    first.button(key="search-add").click().run()
    assert not first.exception and not first.error, [e.value for e in first.error]
    assert image.name in first.success[0].value  # the file name first, then its folder
    table = first.dataframe[-1].value  # the page searched again: the image finds itself first
    assert table["Path"].iloc[0] == relpath and table["Distance"].iloc[0] < 1e-3
    # the comparison page's first view of the grown collection is computed again behind the pages, kept on disk
    from cbir.evaluation.comparison import default_feature_sets, kept_comparison
    from cbir.service import background

    assert background.wait(timeout=300)  # started by the add (nothing else computes it), after the page's run
    grown = default_feature_sets(root)  # the grown collection's version
    assert grown and kept_comparison(grown, "euclidean", True, references=True) is not None
    first.button(key="search-add").click().run()  # twice: refused, with the reason, in sentence case
    assert first.error[0].value.startswith("Nothing was added") and "exact duplicate" in first.error[0].value
    assert "--allow" not in first.error[0].value
    # another session sees it in the pick list and in its answers; the shared engine was updated, not rebuilt
    second = session()
    second.radio(key="search-source").set_value("Pick from the collection").run()
    assert relpath in second.selectbox(key="search-pick").options
    engine = ui.search_engine_with_model(str(store))  # the page's: the shared engine with the model
    assert engine.generations == 1 and engine.n_objects == len(load_features(store).catalog) == 19
    assert (root / relpath).read_bytes() == image.read_bytes()
    # and a session removes it again: gone from the answers and the pick list, its file in .removed/
    first.selectbox(key="search-remove-pick").set_value(relpath).run()
    first.button(key="search-remove").click().run()  # asks first, naming the file
    assert (root / relpath).exists() and image.name in first.warning[-1].value
    first.button(key="search-remove-yes").click().run()
    assert not first.exception and not first.error, [e.value for e in first.error]
    assert "Removed" in first.success[0].value and image.name in first.success[0].value
    assert relpath not in first.dataframe[-1].value["Path"].tolist()
    second.selectbox(key="search-pick").set_value(second.selectbox(key="search-pick").options[0]).run()
    assert relpath not in second.selectbox(key="search-pick").options
    assert not (root / relpath).exists() and (root / growth.REMOVED_FOLDER / relpath).is_file()
    first.button(key="cbir-undo").click().run()  # and Undo puts it back
    assert "Restored" in first.success[0].value and (root / relpath).is_file()
    assert relpath in first.dataframe[-1].value["Path"].tolist()
    assert background.wait(timeout=300)  # the removal's, before the test's folders go


def test_two_sessions_adding_the_same_image_at_once_add_it_once(grown: tuple[Path, Path]) -> None:
    import threading

    _, store = grown
    image, outcomes = _new_image(), []

    def add() -> None:
        try:
            growth.add_images(store, [image], label="animals", extractor=PixelExtractor())
            outcomes.append("added")
        except growth.GrowthError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=add) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes)[0] == "added" and "exact duplicate" in sorted(outcomes)[1], outcomes
    assert load_features(store).catalog["relpath"].str.endswith(image.name).sum() == 1


def test_a_grown_feature_set_keeps_its_place_in_the_list(grown: tuple[Path, Path], tmp_path: Path) -> None:
    from cbir.core import config
    from cbir.data.collection import collection_id
    from cbir.features import workspace

    root, store = grown
    home = config.artifacts_dir() / "features" / collection_id(root)
    home.mkdir(parents=True)
    older, newer = shutil.copytree(store, home / "older"), shutil.copytree(store, home / "newer")
    import os

    os.utime(next(older.glob("features-*.npy")), ns=(1, 1))
    assert workspace.feature_files(root) == [newer, older]
    growth.add_images(older, [_new_image()], label="animals", extractor=PixelExtractor())
    assert workspace.feature_files(root) == [newer, older]  # growing it in place did not make it the newest


def test_background_comparison_runs_one_at_a_time_and_once_more_after_a_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change while the comparison is computed in the background makes it run once more when it ends (with the
    newest features), never two at once; a failure that users can be told about ends the work quietly."""
    import threading

    from cbir.core.errors import CbirError
    from cbir.service import background

    started, release, calls, running = threading.Event(), threading.Event(), [], []

    def keep(collection: object, progress: object = None) -> tuple:
        running.append(1)
        assert len(running) == 1, "two computations at once"
        calls.append(collection)
        started.set()
        release.wait(timeout=30)
        running.pop()
        if len(calls) == 2:
            raise CbirError("no feature set")
        return ()

    monkeypatch.setattr(background, "keep_default_comparison", keep)
    monkeypatch.setattr(background.foreground, "yield_to_pages", lambda *_: 0.0)
    first = background.refresh_default_comparison("a")
    assert started.wait(timeout=30)
    again = background.refresh_default_comparison("b")  # while the first runs: the same worker, once more after
    third = background.refresh_default_comparison("c")
    assert again is first and third is first
    release.set()
    assert background.wait(timeout=30)
    assert calls == ["a", "a"]  # the worker's collection; two changes during a run make one run more
