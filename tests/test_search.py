"""cbir.service.search: index configurations, the search engine (a collection image finds itself first, indexes cached
and
safe under concurrent sessions) and the model a query is embedded with."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from builders import BACKBONE, encode, synthetic_feature_set
from PIL import Image

from cbir.evaluation import tuning
from cbir.features.backbones import WeightsNotFoundError
from cbir.features.query_model import ExtractorSpec, extractor_spec, make_extractor
from cbir.features.sources import FeatureSet
from cbir.indexes.registry import DEFAULT_K, IndexConfig
from cbir.service.search import SearchEngine


@pytest.fixture(scope="session")
def search_engine(small_features: FeatureSet) -> SearchEngine:
    extractor = make_extractor(extractor_spec(small_features.meta))
    return SearchEngine(small_features, extractor)


def test_index_config_builds_and_validates() -> None:
    from cbir.indexes.lsh import LSHIndex
    from cbir.indexes.scan import SequentialScan

    assert isinstance(IndexConfig().build(), SequentialScan)
    lsh = IndexConfig("lsh", "cosine", 3, 2, 0.5, probes=2).build()
    assert isinstance(lsh, LSHIndex) and lsh.params["probes"] == 2 and lsh.metric == "cosine"
    assert IndexConfig("lsh").label.startswith("LSH g=7 h=2")
    assert IndexConfig(metric="cosine").score_name == "similarity"
    with pytest.raises(ValueError, match="kind"):
        IndexConfig("tree")
    with pytest.raises(ValueError, match="metric"):
        IndexConfig(metric="manhattan")
    # hashable and equal by value: the cache key of the tuning page
    assert hash(IndexConfig("lsh", bucket_width=1.0)) == hash(IndexConfig("lsh", bucket_width=1.0))


def test_query_vector_finds_the_row_itself_first() -> None:
    feature_set = synthetic_feature_set()
    search = SearchEngine(feature_set)
    for row in (0, 21, len(feature_set.features) - 1):  # an index image, a query image, a distractor
        for config in (
            IndexConfig(),
            IndexConfig(metric="cosine"),
            tuning.default_lsh_config(feature_set.features),
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
    search = SearchEngine(synthetic_feature_set(), max_indexes=2)
    a = search.index(IndexConfig())
    assert search.index(IndexConfig()) is a
    search.index(IndexConfig(metric="cosine"))
    search.index(IndexConfig("lsh", bucket_width=5.0))
    assert search.index(IndexConfig()) is not a  # evicted beyond max_indexes


def test_search_engine_is_safe_under_concurrent_sessions() -> None:
    """Sessions of the app share one engine: many threads asking for indexes at once (more configs than the cache
    holds, so entries are evicted while others are built) all get a fitted index of their own config, and the
    threads asking for the same config while it is built get the same object."""
    feature_set = synthetic_feature_set()
    engine = SearchEngine(feature_set, max_indexes=3)
    configs = [IndexConfig("lsh", bucket_width=float(w), n_tables=4) for w in (2, 4, 8, 16, 32)]
    configs.append(IndexConfig())
    barrier = threading.Barrier(12)
    got: list[tuple[IndexConfig, object]] = []
    errors: list[BaseException] = []

    def session(worker: int) -> None:
        try:
            barrier.wait()
            for round_ in range(20):
                config = configs[(worker + round_) % len(configs)]
                index = engine.index(config)
                assert index.n_objects == len(feature_set.features) and index.params["metric"] == config.metric
                got.append((config, index))
                answer = engine.query_vector(feature_set.features[worker], config)
                assert answer.results.iloc[0]["id"] == worker
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(worker,)) for worker in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(got) == 12 * 20
    assert len(engine._indexes) <= engine.max_indexes
    for config, index in got:  # every index was built for the config it was returned for
        expected = config.build().params
        assert index.params == expected


def test_extractor_spec_follows_the_feature_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert extractor_spec({"backbone": "resnet50", "weights_id": "random-seed3"}) == ExtractorSpec("resnet50", None, 3)
    spec = extractor_spec({"backbone": BACKBONE, "weights_id": "efficientnet_lite0_imagenet-a539f384b6"})
    assert spec == ExtractorSpec(BACKBONE, "imagenet")
    weights = tmp_path / "mine.keras"
    weights.write_bytes(b"x")
    assert extractor_spec({"backbone": "resnet50v2", "weights_id": "x", "weights_path": str(weights)}) == ExtractorSpec(
        "resnet50v2", str(weights)
    )
    # a fine-tuned model is found by its identity among the fine-tuning outputs
    from cbir.core import config
    from cbir.features.backbones import weights_identity

    model = config.artifacts_dir() / "finetune" / "c" / "resnet50v2-model2" / "model2-pool.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    found = extractor_spec({"backbone": "resnet50v2", "weights_id": weights_identity(str(model))})
    assert found == ExtractorSpec("resnet50v2", str(model))
    with pytest.raises(WeightsNotFoundError, match="cannot find the weights"):
        extractor_spec({"backbone": "resnet50v2", "weights_id": "model9-pool-0123456789"})


@pytest.mark.integration
@pytest.mark.slow
def test_collection_images_find_themselves_first(search_engine: SearchEngine, small_features: FeatureSet) -> None:
    catalog = small_features.catalog
    rows = [int(catalog.index[catalog["role"] == role][0]) for role in ("index", "query", "distractor")]
    features = small_features.features
    for row in rows:
        path = catalog.loc[row, "path"]
        for config in (IndexConfig(), IndexConfig(metric="cosine"), tuning.default_lsh_config(features)):
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
    assert len(exact.results) == DEFAULT_K and exact.visited == len(features)


@pytest.mark.integration
@pytest.mark.slow
def test_real_query_from_an_upload_with_notes(search_engine: SearchEngine, small_features: FeatureSet) -> None:
    source = Image.open(small_features.catalog["path"].iloc[0]).convert("RGBA")
    result = search_engine.query(encode(source, "PNG"))
    assert any("transparent" in note for note in result.notes)
    assert result.results.iloc[0]["score"] < 1e-3  # the same pixels, composited on white: the same features
    assert len(result.results) == DEFAULT_K


EMBED_IN_A_FRESH_PROCESS = """
import json, sys
from cbir.core import config
config.quiet_native_libraries()
from cbir.data.query import decode_query
from cbir.data.samples import sample_photo_png
from cbir.features.query_model import ExtractorSpec
from cbir.service import search
extractor = search.shared_extractor(ExtractorSpec(*sys.argv[1:3]))
import tensorflow as tf
features = extractor.transform([decode_query(sample_photo_png("chelsea")).image])[0]
print(json.dumps([tf.config.threading.get_intra_op_parallelism_threads(), features.tolist()]))
"""


@pytest.mark.integration
def test_a_server_model_runs_its_ops_on_one_thread_and_embeds_as_before(real_features: FeatureSet) -> None:
    """The server's shared model (cbir.service.search.shared_extractor) in a fresh process: TensorFlow's ops on one
    thread each (cbir.features.query_model.one_thread_per_op), the same features of a photo as on TensorFlow's own
    threads (the environment's choice wins: TF_NUM_INTRAOP_THREADS=2) to 1e-5."""
    import json
    import os
    import subprocess
    import sys

    from cbir.core import config

    spec = extractor_spec(real_features.meta)
    answers = []
    for threads in (None, "2"):
        env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
        env["PYTHONPATH"] = os.pathsep.join([str(config.PROJECT_ROOT), env.get("PYTHONPATH", "")])
        if threads:
            env["TF_NUM_INTRAOP_THREADS"] = threads
        done = subprocess.run(
            [sys.executable, "-c", EMBED_IN_A_FRESH_PROCESS, spec.backbone, str(spec.weights)],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        answers.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (one_thread, narrow), (default, wide) = answers
    assert one_thread == 1 and default == 0  # 0: TensorFlow's own choice (here the environment's 2 threads)
    assert len(narrow) == real_features.features.shape[1]
    np.testing.assert_allclose(narrow, wide, atol=1e-5, rtol=0)
