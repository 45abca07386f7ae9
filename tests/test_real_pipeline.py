"""End to end on real images with real ImageNet features: the default Open Clip Art collection and
EfficientNet-Lite0 (both install offline), and the paper's own data when ``../shared/data`` has it.

The tests read the real ``artifacts/`` and never write them (a running app would reload mid-test): the default
feature set is the one ``python -m cbir extract`` wrote; when there is none, it is extracted into a temporary folder
(about 4 minutes on 2 cores). :func:`test_real_artifacts_are_not_written` checks the files' mtimes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.core import config
from cbir.core.config import fingerprint_cache_path
from cbir.data.cleaning import clean_collection
from cbir.data.collection import scan_collection
from cbir.data.hygiene import FingerprintCache, content_fraction, fingerprint_files
from cbir.data.images import load_image
from cbir.data.openclipart import build_collection
from cbir.data.samples import sample_photos
from cbir.evaluation.evaluate import evaluate, split_collection
from cbir.evaluation.report import feature_set_row
from cbir.features.extractor import FeatureExtractor, extract_collection
from cbir.features.sources import FeatureSet
from cbir.features.workspace import FeatureSetNotFoundError, resolve_feature_set
from cbir.indexes.base import l2_normalize
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.scan import SequentialScan
from cbir.indexes.widths import default_bucket_width
from tests.conftest import require

pytestmark = [pytest.mark.integration, pytest.mark.real_artifacts, pytest.mark.slow]


def _artifact_mtimes() -> dict[str, int]:
    """mtime (ns) of every file under the real artifacts' collections, features and hygiene folders."""
    root = config.artifacts_dir()
    return {
        str(path): path.stat().st_mtime_ns
        for folder in ("collections", "features", "hygiene")
        if (root / folder).is_dir()
        for path in (root / folder).resolve().rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def real_mtimes() -> dict[str, int]:
    """The real artifacts' mtimes before this module's first test."""
    return _artifact_mtimes()


@pytest.fixture(scope="module")
def default_features(real_mtimes: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> FeatureSet:
    """The default collection's EfficientNet-Lite0 ImageNet feature set, read; extracted into a temporary folder
    when it does not exist (the real artifacts are never written)."""
    try:
        return resolve_feature_set(backbone="efficientnet_lite0", weights="imagenet")
    except FeatureSetNotFoundError:
        pass
    source = config.openclipart_dir()
    require(source.is_dir(), f"no Open Clip Art at {source} (apt-get install openclipart-png)")
    scratch = tmp_path_factory.mktemp("real-artifacts")
    collection = config.default_collection()
    if not collection.is_dir():
        collection = scratch / "openclipart"
        build_collection(collection, workers=2)
    with pytest.MonkeyPatch.context() as patch:  # the hygiene cache of the extraction goes to the scratch folder
        patch.setenv("CBIR_ARTIFACTS", str(scratch))
        (scratch / "weights").symlink_to(config.PROJECT_ROOT / "artifacts" / "weights", target_is_directory=True)
        catalog, _ = clean_collection(collection)  # what `python -m cbir extract` indexes
        return extract_collection(
            catalog, FeatureExtractor("efficientnet_lite0", batch_size=32), out_path=scratch / "features"
        )


def test_collection_and_features_are_real(default_features: FeatureSet) -> None:
    catalog = default_features.catalog
    counts = catalog.groupby("role").size()
    # 8,121 source drawings less the exact/near copies, blanks and undecodable files left out by the builder
    assert counts["index"] > 4500 and counts["query"] > 450 and counts["distractor"] > 300
    assert catalog["label"].dropna().nunique() == 13
    assert default_features.features.shape == (len(catalog), 1280)
    assert np.isfinite(default_features.features).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_scan_map(default_features: FeatureSet, metric: str) -> None:
    fs = default_features
    with_d = evaluate(SequentialScan(metric), fs.features, fs.labels, fs.roles, k=10)
    without = evaluate(SequentialScan(metric), fs.features, fs.labels, fs.roles, k=10, with_distractors=False)
    # ImageNet features separate clip-art categories far above chance (largest class ≈ 28 % of the index)
    assert with_d.map > 0.55
    assert with_d.map <= without.map + 1e-9  # distractors can only push relevant objects out of the top 10
    assert with_d.mean_visited == with_d.n_indexed
    per_class = with_d.per_class
    assert len(per_class) == 13 and per_class["n_queries"].sum() == with_d.n_queries
    weighted = (per_class["map"] * per_class["n_queries"]).sum() / per_class["n_queries"].sum()
    assert weighted == pytest.approx(with_d.map)


def test_lsh_keeps_most_of_the_map_at_a_tenth_of_the_cost(default_features: FeatureSet) -> None:
    fs = default_features
    split = split_collection(fs.features, fs.labels, fs.roles)
    scan = evaluate(SequentialScan(), fs.features, fs.labels, fs.roles)
    width = 4.0 * default_bucket_width(split.index_vectors)  # the median pairwise distance
    plain = evaluate(LSHIndex(6, 6, width, seed=0), fs.features, fs.labels, fs.roles)
    probed = evaluate(LSHIndex(6, 6, width, seed=0, probes=4), fs.features, fs.labels, fs.roles)
    assert plain.visited_fraction < 0.10
    assert probed.visited_fraction < 0.15
    assert probed.map > plain.map  # probing neighbouring buckets finds more true neighbours
    assert probed.map > 0.85 * scan.map


def test_collection_has_no_copies_and_no_query_has_one_in_the_index(default_features: FeatureSet) -> None:
    fs = default_features
    indexed = fs.roles != "query"
    distinct_rows = np.unique(fs.features[indexed], axis=0)
    assert len(distinct_rows) == int(indexed.sum())  # no two indexed images have identical features
    # near copies (recoloured, resized, filed twice): a query whose features are almost those of an indexed image
    unit = l2_normalize(fs.features)
    best_similarity = (unit[fs.roles == "query"] @ unit[indexed].T).max(axis=1)
    assert (best_similarity >= 0.99).mean() <= 0.02


def test_no_blank_image_is_indexed_and_photos_get_drawings(default_features: FeatureSet) -> None:
    fs = default_features
    indexed = fs.catalog[fs.roles != "query"]
    cache = FingerprintCache(fingerprint_cache_path())
    cache.path = None  # read the real cache, never write it
    fingerprints, errors = fingerprint_files(indexed["path"].tolist(), cache=cache)
    assert not errors
    content = np.array([fp.content_fraction for fp in fingerprints])
    assert (content >= 0.01).all(), indexed["relpath"].to_numpy()[content < 0.01][:10]
    # the photos a new user tries first: each answer shows a drawing, not an empty page
    extractor = FeatureExtractor("efficientnet_lite0")
    vectors = extractor.transform(list(sample_photos().values()))
    _, ids, _ = SequentialScan().fit(fs.features[fs.roles != "query"]).search(vectors, 10)
    for name, row in zip(sample_photos(), ids, strict=True):
        answers = indexed["path"].to_numpy()[row]
        assert len(answers) == 10
        shares = [content_fraction(load_image(path)) for path in answers]
        assert min(shares) >= 0.05, (name, answers, shares)


def test_collection_images_find_themselves(default_features: FeatureSet) -> None:
    fs = default_features
    index_rows = np.flatnonzero(fs.roles == "index")[:50]
    scan = SequentialScan().fit(fs.features)
    distances, ids, _ = scan.search(fs.features[index_rows], 5)
    assert (distances[:, 0] < 1e-3).all()
    assert (ids[:, 0] == index_rows).all()
    # and through the whole pipeline: decode the file again, extract, search
    query = FeatureExtractor("efficientnet_lite0").transform([load_image(fs.catalog["path"].iloc[index_rows[0]])])
    distances, ids, _ = scan.search(query, 5)
    assert distances[0, 0] < 1e-2 and index_rows[0] in ids[0][distances[0] < 1e-2]


def test_report_row(default_features: FeatureSet) -> None:
    row, table = feature_set_row(default_features)
    assert row["scan mAP cosine"] > 0.55
    assert row["LSH visited %"] <= 10.0
    assert 0.8 < row["LSH / scan mAP"] <= 1.0 + 1e-9
    assert len(table) == 5 * 4 * 4 * 2


def test_paper_data_when_present(paper_data: Path, tmp_path: Path) -> None:
    """The paper's layout (training_set/validation_set, + MIRFlickr distractors) scans as it is."""
    catalog = scan_collection(paper_data)
    assert (catalog.images["role"] == "index").sum() > 0
    assert (catalog.images["role"] == "query").sum() > 0
    sample = catalog.images.groupby("role").head(8)
    checked = scan_collection(paper_data)
    checked.images = sample.reset_index(drop=True)
    result = extract_collection(
        checked,
        FeatureExtractor("efficientnet_lite0", batch_size=8),
        out_path=tmp_path / "paper_sample.joblib",
    )
    assert len(result.features) + len(result.report) == len(sample)


def test_real_artifacts_are_not_written(default_features: FeatureSet, real_mtimes: dict[str, int]) -> None:
    """Run last in this module: no file of the real artifacts was added, removed or touched by its tests."""
    assert len(default_features.features) > 0
    assert real_mtimes, "the real artifacts hold files"
    assert _artifact_mtimes() == real_mtimes
