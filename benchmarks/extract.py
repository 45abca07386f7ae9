"""Feature-extraction throughput: the full pipeline (decode + resize + model) vs the bare model, same images.

    .venv/bin/python benchmarks/extract.py [--backbone efficientnet_lite0] [--n-images 256] [--collection DIR]

Both are measured in one run on the same real images: the bare model gets the already-decoded, resized batches,
so the ratio full/bare tells how much decoding costs once it is overlapped with the model (goal: ≥ 0.9).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from cbir import config
from cbir.collection import scan_collection
from cbir.features import FeatureExtractor
from cbir.images import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--collection", default=None)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weights = None if args.weights == "none" else args.weights

    catalog = scan_collection(args.collection or config.default_collection())
    paths = catalog.images["path"].sample(n=min(args.n_images, len(catalog.images)), random_state=0).tolist()
    extractor = FeatureExtractor(args.backbone, weights, batch_size=args.batch_size, workers=args.workers)
    extractor.predict_arrays(np.zeros((args.batch_size, *extractor.spec.input_size, 3), np.float32))  # warm up

    start = time.perf_counter()
    decoded = [extractor.prepare(load_image(p)) for p in paths]
    decode_seconds = time.perf_counter() - start
    batches = [np.stack(decoded[i : i + args.batch_size]) for i in range(0, len(decoded), args.batch_size)]

    rows = []
    for repeat in range(args.repeats):  # alternate the two so that neither gets a systematically warmer machine
        start = time.perf_counter()
        for batch in batches:
            extractor.predict_arrays(batch)
        bare = time.perf_counter() - start
        start = time.perf_counter()
        n_done = sum(len(ok) + len(bad) for ok, _, bad in extractor.iter_batches(paths))
        full = time.perf_counter() - start
        assert n_done == len(paths)
        rows.append(
            {
                "repeat": repeat,
                "bare seconds": bare,
                "full seconds": full,
                "bare model img/s": len(paths) / bare,
                "full pipeline img/s": len(paths) / full,
                "ratio full/bare": bare / full,
            }
        )
    table = pd.DataFrame(rows)
    print(f"backbone={args.backbone} images={len(paths)} batch={args.batch_size} decode threads={args.workers}")
    print(f"decode + resize alone (1 thread): {len(paths) / decode_seconds:.1f} img/s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    total_bare, total_full = table["bare seconds"].sum(), table["full seconds"].sum()
    print(
        f"\nover all repeats: bare model {len(table) * len(paths) / total_bare:.1f} img/s, full pipeline "
        f"{len(table) * len(paths) / total_full:.1f} img/s, ratio {total_bare / total_full:.2f} (goal ≥ 0.9)"
    )


if __name__ == "__main__":
    main()
