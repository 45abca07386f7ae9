"""Collection hygiene: exact and near duplicates, blank images, content crop, duplicate-aware splits, and the
Open Clip Art builder that uses them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from cbir.core import config
from cbir.data import cleaning, hygiene, openclipart
from cbir.data.collection import scan_collection, stratified_split
from cbir.data.images import load_image


def drawing(seed: int, size: tuple[int, int] = (160, 120), scale: float = 1.0) -> Image.Image:
    """A clip-art-like drawing: a few random filled shapes and strokes on a white page."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
        x1, y1 = x0 + rng.uniform(0.15, 0.4) * w, y0 + rng.uniform(0.15, 0.4) * h
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0 + 0.3 * (y1 - y0)), (x0 + 0.5 * (x1 - x0), y1)], fill=colour)
        draw.line((rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)), fill=0, width=3)
    if scale != 1.0:
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    return image


def save(image: Image.Image, path: Path, **kwargs: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return str(path)


def recolour(image: Image.Image, shift: tuple[int, int, int] = (12, -8, 6)) -> Image.Image:
    array = np.asarray(image).astype(np.int16) + np.array(shift, dtype=np.int16)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_of_the_same_pixels_in_two_files_is_equal(tmp_path: Path) -> None:
    image = drawing(1)
    a = save(image, tmp_path / "a.png")
    b = save(image, tmp_path / "b.png", compress_level=0)  # other bytes, same pixels
    c = save(image, tmp_path / "c.jpg", quality=90)
    assert Path(a).read_bytes() != Path(b).read_bytes()
    fa, fb, fc = (hygiene.fingerprint_file(p) for p in (a, b, c))
    assert fa == fb
    assert fc.pixel_hash != fa.pixel_hash  # JPEG changes pixels: not an exact copy ...
    assert bin(fc.phash ^ fa.phash).count("1") <= hygiene.NEAR_DUPLICATE_RADIUS  # ... but a near one
    assert 0.1 < fa.content_fraction < 0.9 and fa.pixel_std > 20 and fa.blank_reason() is None


def test_exact_duplicates_keep_the_shortest_path(tmp_path: Path) -> None:
    image = drawing(2)
    paths = [save(image, tmp_path / name) for name in ("copy_of_cat.png", "cat.png", "sub/cat_again.png")]
    other = save(drawing(3), tmp_path / "dog.png")
    kept, report = cleaning.clean([*paths, other], workers=2)
    assert kept == [paths[1], other]
    assert set(report["path"]) == {paths[0], paths[2]}
    assert (report["reason"] == hygiene.EXACT_DUPLICATE).all()
    assert (report["duplicate_of"] == paths[1]).all()


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda im, p: save(im.resize((120, 90), Image.Resampling.LANCZOS), p / "v.png"), id="resized"),
        pytest.param(lambda im, p: save(recolour(im), p / "v.png"), id="recoloured"),
        pytest.param(lambda im, p: save(im, p / "v.jpg", quality=70), id="jpeg"),
        pytest.param(lambda im, p: save(drawing(4, size=(320, 240)), p / "v.png"), id="redrawn-larger"),
    ],
)
def test_near_duplicates_are_found(tmp_path: Path, variant: Callable[[Image.Image, Path], str]) -> None:
    original = save(drawing(4), tmp_path / "a.png")
    copy = variant(load_image(original), tmp_path)
    others = [save(drawing(seed), tmp_path / f"other{seed}.png") for seed in (10, 11, 12)]
    kept, report = cleaning.clean([original, copy, *others], workers=2)
    assert kept == [original, *others]
    assert report.to_dict("records") == [{"path": copy, "reason": hygiene.NEAR_DUPLICATE, "duplicate_of": original}]


def test_different_drawings_are_not_flagged(tmp_path: Path) -> None:
    paths = [save(drawing(seed), tmp_path / f"{seed:02d}.png") for seed in range(24)]
    fingerprints, errors = hygiene.fingerprint_files(paths, workers=2)
    assert not errors
    verdicts = hygiene.assess(fingerprints, paths)
    assert verdicts["reason"].isna().all() and verdicts["keep"].all()
    assert verdicts["group"].tolist() == list(range(24))


def test_blank_and_near_blank_images(tmp_path: Path) -> None:
    white = Image.new("RGB", (200, 200), "white")
    grey = Image.new("RGB", (200, 200), (90, 90, 90))
    # a faint gradient (what a transparent swatch becomes on white): pixels vary, but none is content
    ramp = np.linspace(240, 255, 200).astype(np.uint8)
    faint = Image.fromarray(np.repeat(np.repeat(ramp[None, :, None], 200, 0), 3, 2))
    dot = white.copy()
    ImageDraw.Draw(dot).ellipse((90, 90, 102, 102), fill="black")  # ~0.3 % of the page
    small = white.copy()
    ImageDraw.Draw(small).rectangle((20, 20, 59, 59), fill="red")  # 4 % of the page: content
    assert hygiene.content_fraction(white) == 0.0
    assert 0.002 < hygiene.content_fraction(dot) < 0.005
    assert hygiene.content_fraction(small) == pytest.approx(0.04)
    assert hygiene.content_fraction(faint) == 0.0 and hygiene.fingerprint(faint).pixel_std > hygiene.BLANK_STD
    named = {"white": white, "grey": grey, "faint": faint, "dot": dot, "small": small, "drawing": drawing(5)}
    paths = [save(image, tmp_path / f"{name}.png") for name, image in named.items()]
    kept, report = cleaning.clean(paths, workers=2)
    reasons = dict(zip(report["path"].map(lambda p: Path(p).stem), report["reason"], strict=True))
    assert reasons == {"white": "blank", "grey": "blank", "faint": "blank", "dot": "near blank"}
    assert [Path(p).stem for p in kept] == ["small", "drawing"]
    everything, same_report = cleaning.clean(paths, keep_all=True, workers=2)
    assert everything == paths and same_report.equals(report)


def test_blank_pages_are_not_duplicates_of_each_other(tmp_path: Path) -> None:
    paths = [save(Image.new("RGB", (50, 50), "white"), tmp_path / f"{i}.png") for i in range(3)]
    _, report = cleaning.clean(paths, workers=2)
    assert (report["reason"] == hygiene.BLANK).all() and report["duplicate_of"].isna().all()


def test_content_crop_makes_a_small_drawing_fill_the_frame() -> None:
    page = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(page).rectangle((300, 200, 349, 249), fill=(0, 0, 200))  # 50×50 in a corner
    assert hygiene.content_box(page, margin=0.0) == (300, 200, 350, 250)
    assert hygiene.content_box(page, margin=0.04) == (298, 198, 352, 252)  # 4 % of 50 = 2 pixels a side
    cropped = hygiene.crop_to_content(page, margin=0.04)
    assert cropped.size == (54, 54) and hygiene.content_fraction(cropped) > 0.8
    # a margin past the page is clipped, and a blank page is left as it is
    edge = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(edge).rectangle((0, 0, 49, 49), fill="black")
    assert hygiene.content_box(edge, margin=0.1) == (0, 0, 55, 55)
    blank = Image.new("RGB", (80, 60), "white")
    assert hygiene.content_box(blank) is None and hygiene.crop_to_content(blank) is blank
    with pytest.raises(hygiene.HygieneError, match="margin"):
        hygiene.content_box(page, margin=-0.1)


def test_near_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    codes[50] = codes[7] ^ np.uint64(0b1011)  # 3 bits from 7
    codes[51] = codes[7] ^ np.uint64(1 << 63)  # 1 bit, the top one
    expected = {
        (i, j)
        for i in range(len(codes))
        for j in range(i + 1, len(codes))
        if bin(int(codes[i]) ^ int(codes[j])).count("1") <= 4
    }
    found = {tuple(p) for p in hygiene.near_pairs(codes, radius=4, block=64).tolist()}
    assert found == expected and {(7, 50), (7, 51), (50, 51)} <= found
    with pytest.raises(hygiene.HygieneError, match="radius"):
        hygiene.near_pairs(codes, radius=-1)


def test_fingerprint_cache_skips_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [save(drawing(seed), tmp_path / f"{seed}.png") for seed in range(3)]
    cache_path = tmp_path / "cache" / "fp.json"
    first, _ = hygiene.fingerprint_files(paths, workers=2, cache=hygiene.FingerprintCache(cache_path))
    assert len(json.loads(cache_path.read_text())) == 3

    def no_decoding(*args: object, **kwargs: object) -> Image.Image:
        raise AssertionError("decoded a cached file")

    monkeypatch.setattr(hygiene, "load_image", no_decoding)
    again, _ = hygiene.fingerprint_files(paths, workers=2, cache=hygiene.FingerprintCache(cache_path))
    assert again == first
    monkeypatch.undo()
    save(drawing(99), Path(paths[0]))  # changed file: new size/mtime, fingerprinted again
    changed, _ = hygiene.fingerprint_files(paths, workers=2, cache=hygiene.FingerprintCache(cache_path))
    assert changed[0] != first[0] and changed[1:] == first[1:]
    # another view of the same file (a crop) is cached apart
    cropped, _ = hygiene.fingerprint_files(
        paths[:1], transform=hygiene.crop_to_content, variant="crop", cache=hygiene.FingerprintCache(cache_path)
    )
    assert len(json.loads(cache_path.read_text())) == 5 and cropped[0] != changed[0]


def test_unusable_files_are_reported_not_kept(tmp_path: Path) -> None:
    good = save(drawing(1), tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    kept, report = cleaning.clean([good, str(bad)], workers=1)
    assert kept == [good]
    assert report["path"].tolist() == [str(bad)] and "not an image" in report["reason"].iloc[0]
    with pytest.raises(hygiene.HygieneError, match="no images"):
        cleaning.clean([])


def test_clean_catalog_prefers_labelled_indexed_images(tmp_path: Path) -> None:
    twin = drawing(7)
    for i in range(10):
        save(drawing(100 + i), tmp_path / "cats" / f"{i}.png")
    save(twin, tmp_path / "cats" / "twin_with_a_long_name.png")
    save(twin, tmp_path / "distractors" / "t.png")
    save(Image.new("RGB", (64, 64), "white"), tmp_path / "cats" / "empty.png")
    catalog = scan_collection(tmp_path)
    kept, report = cleaning.clean(catalog, workers=2)
    assert len(kept.images) == len(catalog.images) - 2
    reasons = dict(zip(report["path"].map(lambda p: Path(p).name), report["reason"], strict=True))
    assert reasons == {"t.png": hygiene.EXACT_DUPLICATE, "empty.png": hygiene.BLANK}
    assert set(kept.report["path"]) == set(report["path"])  # what is left out is in the catalog's report
    everything, _ = cleaning.clean(catalog, keep_all=True, workers=2)
    assert everything.images.equals(catalog.images) and everything.report.empty


# --------------------------------------------------------------------------------------------- splits


def test_split_keeps_duplicate_groups_together(tmp_path: Path) -> None:
    # 40 drawings per class; every fourth has a near copy (resized) in the same class and one an exact copy filed
    # under the other class: all copies must land in one split
    paths, labels = [], []
    for label, offset in (("a", 0), ("b", 1000)):
        for i in range(40):
            image = drawing(offset + i)
            paths.append(save(image, tmp_path / label / f"{i:02d}.png"))
            labels.append(label)
            if i % 4 == 0:
                paths.append(save(image.resize((120, 90), Image.Resampling.LANCZOS), tmp_path / label / f"{i}r.png"))
                labels.append(label)
    paths.append(save(load_image(paths[0]), tmp_path / "b" / "copy_of_a00.png"))
    labels.append("b")
    fingerprints, _ = hygiene.fingerprint_files(paths, workers=2)
    verdicts = hygiene.assess(fingerprints, paths, radius=hygiene.NEAR_DUPLICATE_RADIUS)
    groups = verdicts["group"].to_numpy()
    assert hygiene.duplicate_groups(fingerprints).tolist() == groups.tolist()  # type: ignore[arg-type]
    assert verdicts["reason"].notna().sum() == 21  # 20 resized copies + 1 exact copy
    assert groups[-1] == groups[0]
    relpaths = [Path(p).relative_to(tmp_path).as_posix() for p in paths]
    for fraction in (0.1, 0.3, 0.5):
        is_val = stratified_split(relpaths, labels, fraction, groups=groups)
        for group in np.unique(groups):
            assert len(set(is_val[groups == group])) == 1, f"group {group} split apart at fraction {fraction}"
        for label in ("a", "b"):
            n = labels.count(label)
            quota = max(1, round(n * fraction))
            assert 0 < is_val[np.array(labels) == label].sum() <= quota
        assert stratified_split(relpaths, labels, fraction, groups=groups).tolist() == is_val.tolist()


# --------------------------------------------------------------------------------------------- the builder


def _fake_source(root: Path) -> Path:
    """Two classes of 12 drawings (small, in a corner of a big transparent page) and a catch-all category, with
    a blank page, an exact copy filed under two categories and a recoloured copy."""
    for category, offset in (("animals", 0), ("food", 100)):
        for i in range(12):
            page = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
            page.paste(drawing(offset + i, size=(80, 60)), (300, 220))
            save(page, root / category / f"d{i:02d}.png")
    save(Image.open(root / "animals" / "d03.png"), root / "food" / "zz_same_as_animals_d03.png")
    save(recolour(load_image(root / "food" / "d05.png")), root / "food" / "d05_recoloured.png")
    save(Image.new("RGBA", (100, 100), (0, 0, 0, 0)), root / "animals" / "empty.png")
    flag = Image.new("RGB", (120, 80), (200, 0, 0))  # fills its page: its border is red, its content all of it
    ImageDraw.Draw(flag).rectangle((10, 10, 25, 25), fill=(255, 220, 0))
    save(flag, root / "animals" / "flag.png")
    outline = Image.new("RGBA", (300, 300), (0, 0, 0, 0))  # a thin circle: cropped, still mostly white page
    ImageDraw.Draw(outline).ellipse((100, 100, 199, 199), outline=(0, 0, 0, 255), width=1)
    save(outline, root / "animals" / "outline.png")
    save(drawing(500), root / "unsorted" / "misc.png")
    (root / "food" / "broken.png").write_text("not a PNG")
    return root


def test_builder_crops_cleans_and_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _fake_source(tmp_path / "src")
    monkeypatch.setattr(openclipart, "MIN_CLASS_IMAGES", 10)
    monkeypatch.setattr(openclipart, "VALIDATION_FRACTION", 0.25)
    monkeypatch.setenv("CBIR_OPENCLIPART_DIR", str(source))  # read at call time, not at import
    assert config.openclipart_dir() == source.resolve()
    out = tmp_path / "out"
    table = openclipart.build_collection(out, workers=2)
    removed = table[table["role"] == openclipart.REMOVED]
    removed = removed.set_index(removed["source"].map(lambda p: Path(p).name))
    reasons = removed["reason"].to_dict()
    assert "not an image" in reasons.pop("broken.png")
    assert reasons == {
        "empty.png": hygiene.BLANK,
        "outline.png": hygiene.NEAR_BLANK,
        "zz_same_as_animals_d03.png": hygiene.EXACT_DUPLICATE,
        "d05_recoloured.png": hygiene.NEAR_DUPLICATE,
    }
    assert Path(removed.loc["zz_same_as_animals_d03.png", "duplicate_of"]).name == "d03.png"
    counts, listed = openclipart.summary(table)
    assert counts.loc["animals"].tolist() == [10, 3, 0, 2] and counts.loc["food"].tolist() == [9, 3, 0, 3]
    assert counts.loc["unsorted", "distractor"] == 1 and len(listed) == 5
    # cropped: the 80×60 drawing (not the 400×300 page) fills the stored image, a few pixels of margin around it
    stored = Image.open(out / "training_set" / "animals" / "d00.jpg")
    assert 40 <= stored.width <= 90 and 40 <= stored.height <= 70
    catalog = scan_collection(out)
    assert len(catalog.images) == 26 and catalog.counts().loc["animals", "query"] == 3
    # a rebuild with everything kept moves nothing that was already there, and the rebuild back removes the extras;
    # a query whose copy is among the distractors (indexed) becomes an indexed image when both are kept
    query = table.loc[(table["role"] == "query") & (table["category"] == "animals"), "source"].iloc[0]
    save(load_image(query), source / "unsorted" / "copy_of_a_query.png")
    everything = openclipart.build_collection(out, workers=2, keep_all=True)
    assert everything["role"].value_counts()[openclipart.REMOVED] == 1  # the broken file: nothing to keep
    assert everything["reason"].notna().sum() == 6
    relpaths = everything["source"].map(lambda p: Path(p).relative_to(source).as_posix())
    role = dict(zip(relpaths, everything["role"], strict=True))
    assert role["food/zz_same_as_animals_d03.png"] == role["animals/d03.png"]  # one split
    assert role[Path(query).relative_to(source).as_posix()] == "index"
    assert len(scan_collection(out).images) == 31
    again = openclipart.build_collection(out, workers=2)
    assert len(scan_collection(out).images) == 26
    assert again.set_index("source").loc[query, "role"] == "query"
    manifest = json.loads((out / openclipart.MANIFEST).read_text())
    assert manifest["version"] == openclipart.BUILD_VERSION
    assert manifest["reasons"] == {
        "exact duplicate": 2,
        "near duplicate": 1,
        "blank": 1,
        "near blank": 1,
        "undecodable": 1,
    }


def test_builder_reports_a_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIR_OPENCLIPART_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install openclipart-png"):
        openclipart.plan()


@pytest.mark.integration
def test_real_open_clip_art_build_has_no_copies_across_splits(openclipart_small: Path) -> None:
    catalog = scan_collection(openclipart_small)
    images = catalog.images
    fingerprints, errors = hygiene.fingerprint_files(images["path"].tolist(), workers=2, background=openclipart.WHITE)
    assert not errors
    pixel_hashes = [fp.pixel_hash for fp in fingerprints]
    assert len(set(pixel_hashes)) == len(pixel_hashes)
    assert all(fp.blank_reason(openclipart.MIN_CONTENT_FRACTION) is None for fp in fingerprints)
    codes = np.array([fp.phash for fp in fingerprints], dtype=np.uint64)
    roles = images["role"].to_numpy()
    assert (roles == "query").sum() >= 50 and (roles == "index").sum() >= 50 and catalog.report.empty
    # re-encoding as JPEG and resizing move a hash by a bit or two: what the builder kept apart on the drawings
    # is checked on the stored files with that allowance
    pairs = hygiene.near_pairs(codes, radius=hygiene.NEAR_DUPLICATE_RADIUS - 2)
    across = [(i, j) for i, j in pairs if (roles[i] == "query") != (roles[j] == "query")]
    leaks = pd.DataFrame(across, columns=["a", "b"]).map(lambda i: images["relpath"].iloc[i])
    assert leaks.empty, f"queries with a near copy among the indexed images:\n{leaks}"
