"""Feature-extraction throughput: the full pipeline (decode + resize + model) vs the bare model, same images, and
Ray Data against the in-process pipeline.

    .venv/bin/python benchmarks/extract.py [--backbone efficientnet_lite0] [--n-images 256] [--collection DIR]
        [--ray | --cold] [--ray-address ADDRESS] [--ray-cpus 2] [--ray-decode actor|tasks]

All are measured in one run on the same real images: the bare model gets the already-decoded, resized batches,
so the ratio full/bare tells how much decoding costs once it is overlapped with the model (goal: ≥ 0.9). With
``--ray`` the same paths then go through :func:`cbir.features.ray.ray_batches` (one model actor on a local Ray with
``--ray-cpus`` CPUs, decoding where ``--ray-decode`` says: in the actor by default, or in Ray Data tasks): its
throughput end to end (Ray start, actor start and model build included) and in steady state (from its first batch
to its last) against the in-process pipeline's (goal: ≥ 0.8), and the largest difference between the two engines'
features (goal: 0).

That comparison gives the in-process pipeline a model that is already built. ``--cold`` times what a user running
``python -m cbir extract [--engine ray]`` waits for instead: each engine in a fresh Python process (TensorFlow
import and model build included, and for Ray its start and its actor's own import and build), on the same images,
alternately, ``--repeats`` times each; then the same throughput ratio and feature difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (first: this checkout's cbir, not an installed one)
import numpy as np
import pandas as pd

from cbir.core import config
from cbir.data.collection import scan_collection
from cbir.data.images import load_image
from cbir.features.extractor import Batches, FeatureExtractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--collection", default=None)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also time Ray Data on the same images")
    parser.add_argument("--ray-address", default=None, help="a Ray cluster (default: start Ray locally)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--ray-actors", type=int, default=1, help="model actors")
    parser.add_argument(
        "--ray-decode", choices=["actor", "tasks"], default=None, help="where Ray decodes (cbir.features.ray)"
    )
    parser.add_argument("--cold", action="store_true", help="each engine in a fresh process, start-up included")
    parser.add_argument("--one-run", nargs=3, metavar=("ENGINE", "PATHS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    weights = None if args.weights == "none" else args.weights
    if args.one_run:
        one_run(*args.one_run, weights, args)
        return

    catalog = scan_collection(args.collection or config.default_collection())
    paths = catalog.images["path"].sample(n=min(args.n_images, len(catalog.images)), random_state=0).tolist()
    if args.cold:
        compare_cold(paths, args)
        return
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
    if args.ray:
        compare_ray(extractor, paths, len(table) * len(paths) / total_full, args)


def on_ray_batches(extractor: FeatureExtractor, paths: list[str], args: argparse.Namespace) -> Batches:
    """:func:`cbir.features.ray.ray_batches` with the command line's Ray options."""
    from cbir.features.ray import ray_batches

    return ray_batches(
        extractor,
        paths,
        address=args.ray_address,
        num_cpus=args.ray_cpus,
        actors=args.ray_actors,
        decode=args.ray_decode,
    )


def compare_ray(extractor: FeatureExtractor, paths: list[str], local_rate: float, args: argparse.Namespace) -> None:
    """Ray Data on ``paths`` against the in-process rate measured just before; features compared row by row."""
    start = time.perf_counter()
    local = {p: row for ok, features, _ in extractor.iter_batches(paths) for p, row in zip(ok, features, strict=True)}
    adjacent_rate = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    first = None
    on_ray: dict[str, np.ndarray] = {}
    n_first = 0
    for ok, features, bad in on_ray_batches(extractor, paths, args):
        if first is None:
            first, n_first = time.perf_counter(), len(ok) + len(bad)
        on_ray.update(zip(ok, features if features is not None else [], strict=True))
    end = time.perf_counter()
    assert first is not None and on_ray.keys() == local.keys()
    diff = max(float(np.abs(on_ray[p] - local[p]).max()) for p in local)
    total_rate = len(paths) / (end - start)
    steady_rate = (len(paths) - n_first) / (end - first)
    print(
        f"\nRay Data ({args.ray_actors} model actor(s), decoding in {args.ray_decode or 'the default place'}, "
        f"{args.ray_cpus} CPUs): end to end {total_rate:.1f} img/s "
        f"({end - start:.1f} s, of which {first - start:.1f} s until the first batch: Ray, actor and model start), "
        f"steady state {steady_rate:.1f} img/s"
    )
    reference = (local_rate + adjacent_rate) / 2
    print(
        f"in-process pipeline: {local_rate:.1f} img/s over the repeats, {adjacent_rate:.1f} img/s just before Ray; "
        f"ratio Ray/in-process (their mean): steady state {steady_rate / reference:.2f}, "
        f"end to end {total_rate / reference:.2f} (goal ≥ 0.8); max abs feature difference "
        f"{diff:g} (goal 0)"
    )


def one_run(engine: str, paths_file: str, out: str, weights: str | None, args: argparse.Namespace) -> None:
    """The child of ``--cold``: build the extractor and compute the features of the listed paths with ``engine``,
    as ``python -m cbir extract`` does, and save them (rows in the order of the list) to ``out`` (.npy)."""
    paths = Path(paths_file).read_text().splitlines()
    extractor = FeatureExtractor(args.backbone, weights, batch_size=args.batch_size, workers=args.workers)
    if engine == "ray":
        batches = on_ray_batches(extractor, paths, args)
    else:
        batches = extractor.iter_batches(paths)
    rows = {
        p: row
        for ok, features, _ in batches
        for p, row in zip(ok, features if features is not None else [], strict=True)
    }
    np.save(out, np.stack([rows[p] for p in paths if p in rows]))


def compare_cold(paths: list[str], args: argparse.Namespace) -> None:
    """Time each engine in fresh processes (see the module docstring), alternately; print the table and ratios."""
    rows, features = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths_file = Path(tmp) / "paths.txt"
        paths_file.write_text("\n".join(paths))
        for repeat in range(args.repeats):
            for engine in ("local", "ray"):
                out = Path(tmp) / f"{engine}.npy"
                command = [sys.executable, __file__, "--one-run", engine, str(paths_file), str(out)]
                command += [
                    "--backbone",
                    args.backbone,
                    "--weights",
                    args.weights,
                    "--batch-size",
                    str(args.batch_size),
                ]
                command += ["--workers", str(args.workers), "--ray-cpus", str(args.ray_cpus)]
                command += ["--ray-actors", str(args.ray_actors)] + (
                    ["--ray-address", args.ray_address] if args.ray_address else []
                )
                command += ["--ray-decode", args.ray_decode] if args.ray_decode else []
                start = time.perf_counter()
                quiet = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # as the CLI runs it
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=quiet)
                seconds = time.perf_counter() - start
                features[engine] = np.load(out)
                rows.append({"repeat": repeat, "engine": engine, "seconds": seconds, "img/s": len(paths) / seconds})
                print(f"repeat {repeat} {engine}: {seconds:.1f} s, {len(paths) / seconds:.1f} img/s", flush=True)
    table = pd.DataFrame(rows)
    rates = table.groupby("engine")["seconds"].sum().rdiv(len(paths) * args.repeats)
    diff = float(np.abs(features["ray"] - features["local"]).max())
    print(f"\nbackbone={args.backbone} images={len(paths)} batch={args.batch_size}, each run a fresh process")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(
        f"cold end to end over {args.repeats} run(s) each: in-process {rates['local']:.1f} img/s, Ray Data "
        f"{rates['ray']:.1f} img/s, ratio {rates['ray'] / rates['local']:.2f} (goal ≥ 0.8); max abs feature "
        f"difference {diff:g} (goal 0)"
    )


if __name__ == "__main__":
    main()
