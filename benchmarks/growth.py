"""Growing a collection in place versus rebuilding it: the cost of adding and removing one image.

    .venv/bin/python benchmarks/growth.py                       # the default collection's ImageNet feature set
    .venv/bin/python benchmarks/growth.py --sample 64 --repeats 3

Works on a temporary copy (hard links where possible) of the default collection and of its EfficientNet-Lite0
ImageNet feature store, never on the real ones. Measured, on that copy:

- ``remove`` of one indexed image and ``add`` of it back (:mod:`cbir.service.growth`: checks, features of that image
only,
  one appended shard, the manifest last), and the same through ``python -m cbir add`` in a new process (which also
  loads the model);
- the shared search engine catching up (:meth:`cbir.service.search.SearchEngine.refresh` with the exact scan, an LSH
index and
  HNSW fitted) against fitting those indexes again on every row;
- a full re-extraction, from the model's measured rate on ``--sample`` images of the collection.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT as PROJECT_ROOT
from harness import best_of, machine_line  # first: this checkout's cbir, not an installed one


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder as hard links (same bytes and mtimes, no space), or as copies across file systems."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def copy_workspace(collection: Path, store: Path, out: Path) -> tuple[Path, Path]:
    """``(collection copy, store copy)`` under ``out``: the feature set's rows and catalog (paths moved to the copy),
    written as a new store where the copy's feature sets live (``out/artifacts``); ``store`` may be a legacy
    ``.joblib`` feature set."""
    from cbir.data.collection import collection_id
    from cbir.features.sources import load_features
    from cbir.features.store import write_store

    root = out / "collection"
    link_tree(collection, root)
    real = load_features(store)
    catalog = real.catalog.copy()
    catalog["path"] = [str(root.resolve() / relpath) for relpath in catalog["relpath"]]
    meta = {**real.meta, "collection_root": str(root.resolve()), "collection_id": collection_id(root)}
    name = store.name if store.suffix != ".joblib" else store.stem  # a legacy .joblib becomes a store
    target = out / "artifacts" / "features" / collection_id(root) / name
    chunks = (np.asarray(real.features[i : i + 4096]) for i in range(0, len(catalog), 4096))
    write_store(target, chunks, catalog, real.report, {}, meta, dtype=real.meta.get("dtype", "float32"))
    return root, target


def growth_cycles(store: Path, root: Path, extractor: Any, configs: Sequence[Any], repeats: int) -> dict[str, list]:
    """One indexed image goes out and comes back in, ``repeats`` times (the same work every round), with the search
    engine following; then the refit it avoids. Seconds per step, per round; ``"victim"``: the image last added."""
    from cbir.features.sources import load_features
    from cbir.service import growth
    from cbir.service.search import SearchEngine

    feature_set = load_features(store)
    n = len(feature_set.catalog)
    engine = SearchEngine(feature_set, extractor, path=store)
    for config_ in configs:
        engine.index(config_)
    victim = feature_set.catalog[feature_set.catalog["role"] == "index"].iloc[n // 3]
    victim = {"relpath": victim["relpath"], "label": victim["label"]}
    timings: dict[str, list] = {"remove": [], "add": [], "add_embed": [], "refresh": [], "refit": []}
    for _ in range(repeats):
        report = growth.remove_images(store, [victim["relpath"]])
        timings["remove"].append(report.seconds)
        engine.refresh()
        removed_file = root / growth.REMOVED_FOLDER / victim["relpath"]
        report = growth.add_images(store, [removed_file], label=victim["label"], extractor=extractor)
        timings["add"].append(report.seconds)
        timings["add_embed"].append(report.embed_seconds)
        started = time.perf_counter()
        engine.refresh()
        timings["refresh"].append(time.perf_counter() - started)
        victim = {"relpath": report.images.iloc[0]["relpath"], "label": report.images.iloc[0]["label"]}
    grown = load_features(store)
    timings["refit"] = [best_of(1, lambda: [c.build().fit(grown.features) for c in configs])[0] for _ in range(repeats)]
    assert len(grown.catalog) == n, "the copy should end where it started"
    timings["victim"] = [victim]
    return timings


def cli_add_seconds(store: Path, root: Path, victim: dict[str, Any]) -> float:
    """``python -m cbir add`` of one image in a new process (it loads the model), after removing it."""
    from cbir.service import growth

    growth.remove_images(store, [victim["relpath"]])
    removed_file = root / growth.REMOVED_FOLDER / victim["relpath"]
    started = time.perf_counter()
    command = [sys.executable, "-m", "cbir", "add", str(removed_file), "--label", str(victim["label"])]
    command += ["--features", str(store)]
    subprocess.run(command, check=True, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def extraction_seconds_per_image(root: Path, extractor: Any, sample: int, out: Path) -> float:
    """The model's extraction rate on ``sample`` images of the collection, batched as a full extraction is."""
    from cbir.data.collection import scan_collection
    from cbir.features.extractor import extract_collection

    catalog = scan_collection(root)
    rows = catalog.images.iloc[np.linspace(0, len(catalog.images) - 1, sample).astype(int)]
    sample_catalog = type(catalog)(root=root, images=rows.reset_index(drop=True))
    extractor.batch_size = 32  # the search engine's model embeds one query at a time; extraction batches
    started = time.perf_counter()
    extracted = extract_collection(sample_catalog, extractor, out_path=out)
    return (time.perf_counter() - started) / max(int(extracted.meta["computed"]), 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, default=None, help="feature store (default: the newest ImageNet one)")
    parser.add_argument("--sample", type=int, default=64, help="images extracted to measure the model's rate")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the in-process timings")
    parser.add_argument("--no-cli", action="store_true", help="skip the `python -m cbir add` timing")
    args = parser.parse_args(argv)

    from cbir.core import config

    config.quiet_native_libraries()
    from cbir.features.query_model import extractor_spec, make_extractor
    from cbir.features.sources import load_features
    from cbir.features.workspace import resolve_feature_path
    from cbir.indexes.registry import IndexConfig

    real_store = args.features or resolve_feature_path(None, "efficientnet_lite0", None, "imagenet")
    real_root = Path(load_features(real_store).meta["collection_root"])
    with tempfile.TemporaryDirectory(prefix="cbir-growth-") as tmp:
        started = time.perf_counter()
        root, store = copy_workspace(real_root, Path(real_store), Path(tmp))
        os.environ["CBIR_ARTIFACTS"] = str(Path(tmp) / "artifacts")
        os.environ["CBIR_COLLECTION"] = str(root)
        print(f"copy of {root.name} and its feature store: {time.perf_counter() - started:.1f} s ({machine_line()})")
        n = len(load_features(store).catalog)
        started = time.perf_counter()
        extractor = make_extractor(extractor_spec(load_features(store).meta))
        model_s = time.perf_counter() - started
        configs = (IndexConfig("scan"), IndexConfig("lsh", n_tables=7, n_projections=2, bucket_width=4.0))
        timings = growth_cycles(store, root, extractor, (*configs, IndexConfig("hnsw")), args.repeats)
        cli_s = float("nan") if args.no_cli else cli_add_seconds(store, root, timings["victim"][0])
        per_image = extraction_seconds_per_image(root, extractor, args.sample, Path(tmp) / "sample-store")

    full = per_image * n
    add = min(timings["add"])
    print(f"\nfeature set: {real_store} ({n:,} images, copied)\n")
    rows = [
        ("add one image (checks, features, copy, append; model loaded)", add),
        ("  of which decoding + features", min(timings["add_embed"])),
        ("remove one image (tombstone in every store, move the file)", min(timings["remove"])),
        ("search engine catches up (scan + LSH + HNSW, in place)", min(timings["refresh"])),
        ("refit scan + LSH + HNSW on every row instead", min(timings["refit"])),
        ("`python -m cbir add` in a new process (loads the model)", cli_s),
        ("loading the model (in process)", model_s),
        (f"full re-extraction ({n:,} images at {1 / per_image:.1f} img/s, from {args.sample})", full),
    ]
    print("| step | seconds |\n|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.3f} |")
    print(
        f"\nadding one image in place: {add:.2f} s, {full / add:.0f}× faster than a full re-extraction ({full:.0f} s); "
        f"the engine catches up {min(timings['refit']) / min(timings['refresh']):.0f}× faster than refitting"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
