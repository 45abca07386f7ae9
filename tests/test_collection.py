"""Scanning collections: layouts, splits, roles and the rejected-file report."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir.collection import CollectionError, scan_collection
from tests.conftest import write_image


def _flat(tmp_path: Path, per_class: int = 20) -> Path:
    for label in ("cats", "dogs"):
        for i in range(per_class):
            write_image(tmp_path / label / f"{i}.png", seed=i)
    return tmp_path


def test_flat_layout_gets_deterministic_stratified_split(tmp_path: Path) -> None:
    root = _flat(tmp_path)
    catalog = scan_collection(root)
    counts = catalog.counts()
    assert counts.loc["cats", "query"] == 2 and counts.loc["dogs", "query"] == 2  # 10 % of 20 per class
    assert counts.loc["cats", "index"] == 18
    again = scan_collection(root)
    assert catalog.images["role"].tolist() == again.images["role"].tolist()
    assert catalog.classes == ["cats", "dogs"]


def test_paper_layout_with_distractors_nested(tmp_path: Path) -> None:
    base = tmp_path / "dataset" / "dataset_updated"
    for split, n in (("training_set", 5), ("validation_set", 2)):
        for label in ("drawings", "sculpture"):
            for i in range(n):
                write_image(base / split / label / f"{i}.jpg", fmt="JPEG", seed=i)
    for i in range(3):
        write_image(tmp_path / "distractors" / "mirflickr" / f"im{i}.jpg", fmt="JPEG", seed=i)
    (base / "training_set" / "drawings" / "readme.txt").write_text("not an image, ignored")
    catalog = scan_collection(tmp_path)
    images = catalog.images
    assert (images["role"] == "index").sum() == 10
    assert (images["role"] == "query").sum() == 4
    distractors = images[images["role"] == "distractor"]
    assert len(distractors) == 3 and distractors["label"].isna().all()
    assert set(images.loc[images["role"] == "query", "split"]) == {"validation"}


def test_extra_distractor_folder(tmp_path: Path) -> None:
    root = _flat(tmp_path / "c", per_class=4)
    extra = tmp_path / "flickr"
    write_image(extra / "x.png")
    catalog = scan_collection(root, distractor_dirs=[extra])
    assert (catalog.images["role"] == "distractor").sum() == 1


def test_validation_reports_broken_files_and_keeps_the_rest(tmp_path: Path) -> None:
    root = _flat(tmp_path, per_class=5)
    (root / "cats" / "zero.jpg").write_bytes(b"")
    (root / "dogs" / "text.png").write_text("nope")
    catalog = scan_collection(root, validate=True, workers=2)
    assert len(catalog.images) == 10
    reasons = dict(zip(catalog.report["path"].map(lambda p: Path(p).name), catalog.report["reason"], strict=True))
    assert set(reasons) == {"zero.jpg", "text.png"}
    assert "empty" in reasons["zero.jpg"] and "not an image" in reasons["text.png"]


def test_empty_and_missing_collections_have_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match="not found"):
        scan_collection(tmp_path / "nope")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(CollectionError, match="no images found"):
        scan_collection(tmp_path / "empty")


@pytest.mark.integration
def test_real_openclipart_collection(openclipart_small: Path) -> None:
    catalog = scan_collection(openclipart_small, validate=True)
    counts = catalog.counts()
    assert len(catalog.classes) >= 10
    assert (counts["query"] > 0).all() or "(distractor)" in counts.index
    assert (catalog.images["role"] == "distractor").sum() > 0
    assert len(catalog.report) == 0  # the converter already dropped what does not decode
