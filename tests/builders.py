"""Test data shared by the test modules (not a test module itself): synthetic feature sets, the small real Open Clip
Art feature set, encoded images, and the bad and unusual uploads the query decoder and the Search page must handle."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.harness import switch_page  # noqa: F401  (the tests import it from here)
from cbir.core.storage import save_artifact
from cbir.data.collection import collection_id, scan_collection
from cbir.data.query import MAX_UPLOAD_BYTES
from cbir.features.extractor import extract_collection
from cbir.features.sources import FEATURES_KIND, FeatureSet, load_features

BACKBONE = "efficientnet_lite0"


def small_feature_path(collection: Path) -> Path:
    """EfficientNet-Lite0 features of the small Open Clip Art collection, extracted once per test session to a
    fixed place beside it (test_app.py and test_browser.py reuse the same file)."""
    from cbir.features.backbones import available_backbones
    from cbir.features.extractor import FeatureExtractor

    out = collection.parent / f"{collection.name}-features" / f"{BACKBONE}.joblib"
    if out.is_file():
        return out
    if not available_backbones().get(BACKBONE):
        pytest.skip(f"{BACKBONE} ImageNet weights are not available offline")
    extract_collection(scan_collection(collection), FeatureExtractor(BACKBONE, "imagenet"), out_path=out)
    return out


def install_feature_set(feature_file: Path, collection: Path) -> Path:
    """Copy a feature artifact where :func:`cbir.features.workspace.list_feature_sets` finds it for ``collection`` under
    the current (per-test) ``CBIR_ARTIFACTS``."""
    from cbir.core import config

    target = config.artifacts_dir() / "features" / collection_id(collection) / feature_file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(feature_file, target)
    return target


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
        "huge file": (b"\xff" * (MAX_UPLOAD_BYTES + 1), "too big"),
    }


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


# ----------------------------------------------------------------------------------------------------------
# Growing collections (test_growth): a few real images, a model-free extractor, a real feature store copy
# ----------------------------------------------------------------------------------------------------------

REAL_COLLECTION = Path(__file__).resolve().parents[1] / "artifacts" / "collections" / "openclipart"


class PixelExtractor:
    """A model-free stand-in for :class:`cbir.features.extractor.FeatureExtractor` (the same decoding and batching): the
    features of an image are its 16×16 grey thumbnail (256-d). Fast enough for the quick test loop."""

    backbone = "efficientnet_lite0"
    weights_id = "pixels-16"
    weights_path = None
    dim = 256
    batch_size = 8
    workers = 1

    def prepare(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("L").resize((16, 16)), dtype=np.float32)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        return (np.asarray(batch, dtype=np.float32).reshape(len(batch), -1) / 16.0).astype(np.float32)

    def transform(self, images: list[Image.Image]) -> np.ndarray:
        return self.predict_arrays(np.stack([self.prepare(image) for image in images]))

    def iter_batches(self, paths: list[str]):
        from cbir.features.extractor import FeatureExtractor

        return FeatureExtractor.iter_batches(self, paths)  # type: ignore[arg-type]

    def _decode(self, path: str) -> np.ndarray | str:
        from cbir.data.images import decode_or_reason

        return decode_or_reason(path, self.prepare)


def real_images(per_class: int, classes: int, split: str = "training_set") -> list[Path]:
    """The first ``per_class`` images of the first ``classes`` classes of the real default collection's split."""
    folders = sorted(p for p in (REAL_COLLECTION / split).iterdir() if p.is_dir())[:classes]
    return [image for folder in folders for image in sorted(folder.iterdir())[:per_class]]


def copy_real_collection(out: Path, per_class: int = 4, classes: int = 3, distractors: int = 3) -> Path:
    """A small collection in the paper's layout made of copies (same bytes and mtimes) of real default-collection
    images: ``per_class`` training and 1 validation image per class, and ``distractors`` distractors."""
    chosen = real_images(per_class, classes) + real_images(1, classes, "validation_set")
    chosen += sorted((REAL_COLLECTION / "distractors").rglob("*.jpg"))[:distractors]
    for image in chosen:
        target = out / image.relative_to(REAL_COLLECTION)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, target)
    return out


def real_store_copy(root: Path, out: Path, backbone: str = BACKBONE) -> Path:
    """A feature store at ``out`` for the collection ``root`` made by :func:`copy_real_collection`, holding the real
    default-collection features (ImageNet ``backbone``) of its images: the rows are copied from the default
    collection's store when it exists, else the copy's images are extracted (a few seconds)."""
    from cbir.data.collection import collection_id
    from cbir.features.store import catalog_keys, write_store

    stores = sorted((REAL_COLLECTION.parents[1] / "features").glob(f"*/{backbone}-*imagenet*/meta.json"))
    if not stores:  # a fresh clone (CI) has the collection but not its features: extract the copy's few images
        from cbir.features.extractor import FeatureExtractor, extract_collection

        extract_collection(scan_collection(root), FeatureExtractor(backbone, "imagenet", batch_size=32), out_path=out)
        return out
    real = load_features(stores[0].parent)
    catalog = scan_collection(root).images
    rows = real.catalog.reset_index(drop=True).reset_index().set_index("relpath").loc[catalog["relpath"], "index"]
    meta = {**real.meta, "collection_root": str(root.resolve()), "collection_id": collection_id(root)}
    meta["n_images"] = len(catalog)
    assert len(set(catalog_keys(catalog))) == len(catalog)
    write_store(
        out, [np.asarray(real.features[rows.to_numpy()])], catalog, pd.DataFrame(columns=["path", "reason"]), {}, meta
    )
    return out
