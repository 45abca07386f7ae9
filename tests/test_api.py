"""The HTTP API (issue 21, items 4-6) over real HTTP: ``python -m cbir serve`` started on a free loopback port against
the small real Open Clip Art collection and its EfficientNet-Lite0 features, called with httpx.

The Search page's four kinds of query answer with the page's own results (the same engine code, run here in-process
for comparison); every file of the bad-input corpus (tests/test_bad_inputs.py) and every bad parameter gets a 4xx JSON
error with the message the page shows, and the server keeps answering; images are served from inside the collection
only; a short load run (5 clients × 5 s, benchmarks/api_load.py) has no error while the Streamlit app answers."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_bad_inputs import BadInput, build_corpus

from benchmarks.api_load import api_server, run_api_load
from benchmarks.browser import Server, server_errors, streamlit_server
from cbir.core import config
from cbir.core.names import INDEX_KINDS
from cbir.data.collection import collection_id
from cbir.data.images import ImageDecodeError
from cbir.data.query import MAX_UPLOAD_BYTES, decode_query
from cbir.data.samples import sample_photo, sample_photo_png

httpx = pytest.importorskip("httpx")


@dataclass
class Served:
    """The API server under test, its collection, feature file and the environment it runs with."""

    server: Server
    collection: Path
    feature_file: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, openclipart_small: Path) -> Iterator[Served]:
    """``python -m cbir serve`` over the small collection, its feature set installed in an artifacts folder of its own
    (the converted weights shared with the real one)."""
    from builders import small_feature_path

    feature_file = small_feature_path(openclipart_small)
    artifacts = tmp_path_factory.mktemp("api-artifacts")
    (artifacts / "weights").symlink_to(config.PROJECT_ROOT / "artifacts" / "weights", target_is_directory=True)
    target = artifacts / "features" / collection_id(openclipart_small) / feature_file.name
    target.parent.mkdir(parents=True)
    shutil.copy2(feature_file, target)
    env = {"CBIR_ARTIFACTS": str(artifacts), "CBIR_COLLECTION": str(openclipart_small)}
    with api_server(artifacts / "api.log", env, openclipart_small) as server:
        yield Served(server, openclipart_small, target, env)
        assert server.alive(), server.log()
        assert not server_errors(server.log()), server.log()


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[Any]:
    with httpx.Client(base_url=served.server.url, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def page_engine(served: Served) -> Any:
    """The Search page's engine (:func:`cbir.service.search.shared_engine` with the feature set's model), here."""
    from cbir.features.workspace import base_version, load_feature_set
    from cbir.service.search import extractor_spec, shared_engine

    path = str(served.feature_file)
    return shared_engine(path, base_version(path), extractor_spec(load_feature_set(path).meta))


def collection_image(collection: Path, split: str = "training_set") -> Path:
    return sorted((collection / split).rglob("*.jpg"))[3]


def search(client: Any, data: bytes | None = None, name: str = "query.jpg", **params: Any) -> Any:
    files = None if data is None else {"image": (name, data)}
    return client.post(
        "/search", params={key: value for key, value in params.items() if value is not None}, files=files
    )


# ----------------------------------------------------------------------------------------------------------
# The Search page's four kinds of query
# ----------------------------------------------------------------------------------------------------------


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@pytest.mark.parametrize("source", ["upload", "camera", "example", "collection"])
@pytest.mark.parametrize("index", ["scan", "lsh", "hnsw"])
@pytest.mark.integration
@pytest.mark.slow
def test_the_search_pages_queries_answer_like_the_page(
    client: Any, served: Served, page_engine: Any, source: str, index: str
) -> None:
    from cbir.service.search import default_config

    file = collection_image(served.collection)
    relpath = file.relative_to(served.collection).as_posix()
    data = {
        "upload": file.read_bytes(),
        "camera": jpeg(sample_photo("astronaut")),  # what st.camera_input sends: a JPEG photo
        "example": sample_photo_png("coffee"),
        "collection": None,
    }[source]
    response = search(client, data, path=relpath if data is None else None, index=index, k=10)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    assert 1 <= len(results) <= 10 and (index != "scan" or len(results) == 10)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores)  # euclidean: distances ascending
    for result in results:
        assert (served.collection / result["path"]).is_file()
        assert result["image"].startswith("/images/")
        if result["role"] != "distractor":
            assert result["label"] == Path(result["path"]).parent.name  # the class folder
    timings = body["timings_ms"]
    assert timings["search"] > 0 and timings["total"] >= timings["embed"] + timings["search"] - 1e-6
    assert (timings["embed"] > 0) == (source != "collection")  # a collection image is searched by its features
    n_objects = body["n_objects"]
    assert n_objects == len(page_engine.catalog)
    if index == "scan":
        assert body["visited"] == n_objects and body["visited_fraction"] == 1.0
    elif index == "lsh":
        assert 0 < body["visited"] < n_objects
    if source in ("upload", "collection"):  # a collection image finds itself first
        assert results[0]["path"] == relpath and results[0]["score"] == pytest.approx(0, abs=1e-2)

    # the page's engine, run here, gives the same answer (LSH at the page's default setting)
    path = str(served.feature_file)
    config = default_config(index, path)
    if data is None:
        row = int(page_engine.catalog.set_index("relpath").loc[relpath, "id"])
        expected = page_engine.query_vector(page_engine.feature_set.features[row], config, 10)
    else:
        expected = page_engine.query(decode_query(data), config, 10)
        assert body["notes"] == expected.notes
    assert body["index"]["label"] == expected.index_label
    assert [r["path"] for r in results] == expected.results["relpath"].tolist()
    np.testing.assert_allclose(scores, expected.results["score"], rtol=1e-4, atol=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_settings_and_metrics_reach_the_index(client: Any, served: Served) -> None:
    relpath = collection_image(served.collection, "validation_set").relative_to(served.collection).as_posix()
    body = search(client, path=relpath, index="lsh", n_tables=2, n_projections=6, bucket_width=0.5, k=5).json()
    assert body["index"]["label"].startswith("LSH g=2 h=6 w=0.5") and len(body["results"]) <= 5
    cosine = search(client, path=relpath, metric="cosine", k=20).json()
    scores = [r["score"] for r in cosine["results"]]
    assert cosine["score_name"] != body["score_name"] and scores == sorted(scores, reverse=True)  # similarities
    assert cosine["results"][0]["path"] == relpath and scores[0] == pytest.approx(1, abs=1e-4)
    hnswlib = search(client, path=relpath, index="hnswlib", ef_search=32).json()
    assert hnswlib["visited"] is None and hnswlib["visited_fraction"] is None  # hnswlib does not count them
    assert hnswlib["results"][0]["path"] == relpath


# ----------------------------------------------------------------------------------------------------------
# Bad input: 4xx JSON with the page's message; the server keeps answering
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[BadInput]:
    return build_corpus(tmp_path_factory.mktemp("bad-inputs"))


@pytest.mark.integration
@pytest.mark.slow
def test_the_bad_input_corpus_over_http(client: Any, bad_inputs: list[BadInput]) -> None:
    for case in bad_inputs:
        data = case.path.read_bytes()
        response = search(client, data, name=case.path.name)
        if case.outcome in ("error", "refused"):
            with pytest.raises(ImageDecodeError) as page:
                decode_query(data)  # what the Search page shows
            assert response.status_code == (413 if case.outcome == "refused" else 400), (case.name, response.text)
            assert response.json() == {"error": str(page.value)}, case.name
        else:
            assert response.status_code == 200, (case.name, response.text)
            query = decode_query(data)
            assert response.json()["query"]["notes"] == query.notes, case.name
            assert response.json()["query"]["warnings"] == query.warnings, case.name
        assert client.get("/health").status_code == 200


def test_a_body_far_over_the_limit_is_refused_with_the_pages_message(client: Any) -> None:
    data = bytes(3 * MAX_UPLOAD_BYTES)  # over the body limit: refused while it arrives, before the form is parsed
    response = search(client, data)
    assert response.status_code == 413
    assert response.json()["error"].startswith("the file is too big (60.0 MB; the limit is 20 MB)")
    assert client.get("/health").status_code == 200


BAD_PARAMETERS = [
    ("k = 0", {"k": 0}, 400, "k must be between 1 and 1000, got 0"),
    ("k < 0", {"k": -3}, 400, "k must be between 1 and 1000, got -3"),
    ("k huge", {"k": 10**12}, 400, "k must be between 1 and 1000, got 1000000000000"),
    ("k not a number", {"k": "ten"}, 422, "k: Input should be a valid integer"),
    ("unknown index", {"index": "btree"}, 400, "kind must be one of"),
    ("unknown metric", {"metric": "manhattan"}, 400, "metric must be one of"),
    ("no LSH table", {"index": "lsh", "n_tables": 0}, 400, "n_tables must be between 1 and 64, got 0"),
    ("huge ef", {"index": "hnsw", "ef_search": 10**7}, 400, "ef_search must be between 1 and 4096"),
    ("bad width", {"index": "lsh", "bucket_width": "nan"}, 400, "bucket_width must be between"),
    ("unknown feature set", {"feature_set": "nope"}, 404, "no feature set 'nope'"),
    ("path outside", {"path": "../../../../etc/passwd"}, 404, "is not an image of the collection"),
    ("absolute path", {"path": "/etc/passwd"}, 404, "is not an image of the collection"),
    ("path not indexed", {"path": "training_set/none.jpg"}, 404, "is not an image of the collection"),
]


@pytest.mark.parametrize(
    ("params", "status", "words"), [case[1:] for case in BAD_PARAMETERS], ids=[c[0] for c in BAD_PARAMETERS]
)
@pytest.mark.integration
@pytest.mark.slow
def test_bad_parameters_are_4xx_json(client: Any, params: dict[str, Any], status: int, words: str) -> None:
    data = None if "path" in params else sample_photo_png("coffee")
    response = search(client, data, **params)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"], response.text
    assert client.get("/health").status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_a_query_needs_one_image(client: Any, served: Served) -> None:
    relpath = collection_image(served.collection).relative_to(served.collection).as_posix()
    for response in (search(client), search(client, sample_photo_png("coffee"), path=relpath)):
        assert response.status_code == 400 and "give either an image" in response.json()["error"]
    text_field = client.post("/search", data={"image": "not a file"})
    assert text_field.status_code == 422 and "image" in text_field.json()["error"]


# ----------------------------------------------------------------------------------------------------------
# Images, metadata, docs
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_result_images_come_from_inside_the_collection_only(client: Any, served: Served) -> None:
    result = search(client, sample_photo_png("coffee")).json()["results"][0]
    response = client.get(result["image"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == (served.collection / result["path"]).read_bytes()
    escapes = [
        "/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/images/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        "/images/training_set/%2E%2E/%2E%2E/%2E%2E/" + served.collection.name + "-features/x.joblib",
        "/images/.removed/anything.jpg",
        "/images/training_set/none.jpg",
        "/images/a%00b.jpg",
    ]
    for url in escapes:
        response = client.send(httpx.Request("GET", served.server.url + url))  # sent as written (no dot removal)
        assert response.status_code == 404, (url, response.text)
        assert "is not an image of the collection" in response.json()["error"], url


def test_symlinks_are_resolved_before_the_collection_check(tmp_path: Path) -> None:
    from cbir.service.api import NotFoundError, SearchService

    collection, outside = tmp_path / "collection", tmp_path / "secret.jpg"
    (collection / "cats").mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(outside)
    Image.new("RGB", (16, 16), "blue").save(collection / "cats" / "blue.jpg")
    (collection / "cats" / "escape.jpg").symlink_to(outside)
    (collection / "cats" / "alias.jpg").symlink_to(collection / "cats" / "blue.jpg")
    service = SearchService(collection)
    assert service.image_file("cats/alias.jpg") == (collection / "cats" / "blue.jpg").resolve()
    for relpath in ("cats/escape.jpg", "../secret.jpg", str(outside), "cats", "cats/missing.jpg"):
        with pytest.raises(NotFoundError):
            service.image_file(relpath)


@pytest.mark.integration
@pytest.mark.slow
def test_health_feature_sets_indexes_and_docs(client: Any, served: Served, page_engine: Any) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["collection"] == str(served.collection)
    assert [e["model"] for e in health["engines"]] == [True]
    assert health["warm_start"]["query_runtime"] == "TensorFlow Lite (XNNPACK)"  # what embeds its queries
    assert health["engines"][0]["n_objects"] == len(page_engine.catalog)
    listed = client.get("/feature-sets").json()
    assert [(f["id"], f["default"]) for f in listed["feature_sets"]] == [(served.feature_file.name, True)]
    search(client, sample_photo_png("coffee"), index="lsh")
    indexes = client.get("/indexes").json()
    assert sorted(kind["kind"] for kind in indexes["kinds"]) == sorted(INDEX_KINDS)
    assert any(built["index"].startswith("LSH") for built in indexes["built"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text  # served offline
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/health", "/feature-sets", "/indexes", "/images/{relpath}"} <= set(paths)
    assert client.get("/nowhere").json() == {"error": "Not Found"}


# ----------------------------------------------------------------------------------------------------------
# Load (CI size) and the command line
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_short_load_has_no_error_while_the_app_answers(served: Served, tmp_path: Path) -> None:
    with streamlit_server(tmp_path / "streamlit.log", served.env) as app:
        report = run_api_load(served.server.url, served.collection, clients=5, seconds=5, streamlit_url=app.url)
        app_log = app.log()
    table = report.requests
    assert report.errors == 0, table[table["error"].notna()].to_string()
    assert set(table["source"]) == {"upload", "path"} and set(table["index"]) == {"scan", "lsh", "hnsw"}
    assert report.qps > 0 and len(table) >= 5  # as many answers as clients, at least
    assert report.health_polls >= 3 and report.health_ok == report.health_polls
    assert report.load_averages and not server_errors(app_log)
    assert served.server.alive()


def test_serve_with_an_unknown_feature_set_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cbir.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["serve", "--collection", str(tmp_path / "empty"), "--feature-set", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no feature set of the collection") and err.count("\n") == 1
