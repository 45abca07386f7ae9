"""Scanning collections: layouts, splits, roles and the rejected-file report."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.data.collection import CollectionError, scan_collection, stratified_split
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


def test_stratified_split_without_groups_takes_the_smallest_path_hashes() -> None:
    keys = [f"{label}/{i}.png" for label in ("a", "b") for i in range(30)] + ["c/only.png"]
    labels = [k.split("/")[0] for k in keys]
    is_val = stratified_split(keys, labels, 0.1)
    for label in ("a", "b"):
        ranked = sorted((k for k in keys if k.startswith(label)), key=lambda k: hashlib.sha1(k.encode()).hexdigest())
        assert {k for k, v in zip(keys, is_val, strict=True) if v and k.startswith(label)} == set(ranked[:3])
    assert not is_val[-1]  # a class of one image has no query


def test_stratified_split_keeps_groups_whole_within_quota() -> None:
    keys = [f"x/{i}.png" for i in range(40)]
    labels = ["a"] * 20 + ["b"] * 20
    groups = [i // 5 for i in range(20)] + list(range(100, 120))  # class a: groups of five
    groups[20] = 0  # one member of a's group 0 is filed under b
    is_val = stratified_split(keys, labels, 0.25, groups=groups)
    groups_arr = np.array(groups)
    for group in set(groups):
        assert len(set(is_val[groups_arr == group])) == 1
    assert is_val[:20].sum() == 5 and is_val[20:].sum() <= 5  # a: one group of five; b: up to its quota
    assert stratified_split(keys, labels, 0.25, groups=groups).tolist() == is_val.tolist()
    with pytest.raises(CollectionError, match="same length"):
        stratified_split(keys, labels[:-1], 0.1)
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(keys, labels, 1.5)


def test_flat_layout_split_keeps_copies_together_on_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path
    for label in ("cats", "dogs"):  # noise: every image unlike every other (the gradients of write_image are alike)
        for i in range(20):
            (root / label).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    originals = sorted((root / "cats").glob("*.png"))
    for i, original in enumerate(originals):  # every cat has an exact copy under another name
        (root / "cats" / f"copy_{i}.png").write_bytes(original.read_bytes())
    plain = scan_collection(root).images.set_index("relpath")["role"]
    grouped = scan_collection(root, group_duplicates=True, workers=2).images.set_index("relpath")["role"]
    pairs = [(f"cats/{p.name}", f"cats/copy_{i}.png") for i, p in enumerate(originals)]
    assert any(plain[a] != plain[b] for a, b in pairs)  # by path hash alone, some copies are split apart
    assert all(grouped[a] == grouped[b] for a, b in pairs)
    assert (grouped[grouped.index.str.startswith("cats")] == "query").sum() == 4  # 10 % of 40: two pairs


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
