"""Command line: ``python -m cbir COMMAND --help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cbir.cli.args import OneLineParser, positive_float, positive_int
from cbir.cli.finetune import add_finetune_parser
from cbir.cli.growth import add_growth_parsers
from cbir.cli.indexes import add_index_parsers
from cbir.cli.search import add_evaluate_parsers, add_feature_selection_args, load_selected_features
from cbir.cli.serve import add_app_parser, add_serve_parser
from cbir.core import config
from cbir.core.errors import CbirError

DESCRIPTION = """\
cbir — content-based image retrieval workbench.

Typical first run (Open Clip Art + EfficientNet-Lite0 install offline):
  python -m cbir openclipart                      # build the default collection under artifacts/
  python -m cbir extract --backbone efficientnet_lite0
  python -m cbir evaluate --backbone efficientnet_lite0 --index lsh -g 6 -H 4
  python -m cbir info                             # what is built
  python -m cbir add photo.jpg --label animals    # grow the collection in place (remove: the reverse)
  python -m cbir index build --kind hnsw          # keep a fitted index on disk (the app loads it)
  python -m cbir app                              # the Streamlit app, warmed as it starts

A collection is a folder with one subfolder per class (or training_set/ and validation_set/ with one subfolder
per class, as in the paper), optionally a distractors/ folder of unlabelled images.
"""


def _weights_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "random") else value


def add_collection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection",
        type=Path,
        default=None,
        help="collection folder (default: $CBIR_COLLECTION or the Open Clip Art build)",
    )
    parser.add_argument(
        "--distractors",
        type=Path,
        action="append",
        default=[],
        help="extra folder of unlabelled distractor images (repeatable)",
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from cbir.features.backbones import BACKBONES

    parser.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=sorted(BACKBONES),
        help="CNN feature extractor (default: efficientnet_lite0, whose weights install offline)",
    )
    parser.add_argument(
        "--weights",
        type=_weights_arg,
        default="imagenet",
        help="'imagenet' (local copy first, then download), 'none' (random) or a weights file",
    )


def cmd_openclipart(args: argparse.Namespace) -> int:
    from cbir.data import hygiene
    from cbir.data.openclipart import INSTALL_HINT, build_collection, summary
    from cbir.features.workspace import WorkspaceError

    source = config.openclipart_dir()
    if not source.is_dir():  # a user's problem: one line (the builder raises a plain FileNotFoundError)
        raise WorkspaceError(f"Open Clip Art not found at {source}. Install it with: {INSTALL_HINT}")
    out = args.out or config.default_collection()
    table = build_collection(out, workers=args.workers, limit_per_class=args.limit_per_class)
    failed = table[table["error"].notna()]
    counts, removed = summary(table)  # left out by hygiene: blank, near blank, exact/near duplicate, undecodable
    if len(removed):
        print(f"{len(removed)} source files left out:")
        print(removed.fillna("").to_string(index=False, max_colwidth=90))
    if len(failed):
        print(f"\n{len(failed)} source files could not be converted:")
        print(failed[["source", "error"]].to_string(index=False))
    print(f"\n{counts.to_string()}\ncollection written to {out}")
    totals = ", ".join(f"{n} {role}" for role, n in counts.sum().items())
    reasons = table.loc[table["role"] == "removed", "reason"]
    reasons = reasons.where(reasons.isin(hygiene.REASONS), "undecodable")
    print(f"{totals}; left out: {', '.join(f'{n} {r}' for r, n in reasons.value_counts().items()) or 'none'}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from cbir.data.collection import scan_collection

    catalog = scan_collection(args.collection or config.default_collection(), args.distractors, validate=True)
    print(f"collection {catalog.root}: {len(catalog.images)} usable images, {len(catalog.report)} rejected")
    print(catalog.counts().to_string())
    if len(catalog.report):
        print("\nrejected files:")
        print(catalog.report.to_string(index=False))
    # collection hygiene (cbir.data.hygiene): duplicates and blank images are reported here, not removed
    from cbir.data.cleaning import clean
    from cbir.data.hygiene import FingerprintCache, summarize

    _, flagged = clean(catalog, keep_all=True, cache=FingerprintCache(config.fingerprint_cache_path()))
    print(f"\nhygiene: {', '.join(f'{n} {reason}' for reason, n in summarize(flagged).items())}")
    if len(flagged):
        print(flagged.fillna("").to_string(index=False))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from cbir.data.cleaning import clean_collection
    from cbir.data.hygiene import summarize
    from cbir.features.extractor import FeatureExtractor, extract_collection

    root = args.collection or config.default_collection()
    catalog, flagged = clean_collection(root, args.distractors, keep_all=args.keep_all)
    if len(flagged):
        verb = "kept (--keep-all)" if args.keep_all else "left out"
        print(f"hygiene, {verb}: {', '.join(f'{n} {reason}' for reason, n in summarize(flagged).items())}")
    extractor = FeatureExtractor(args.backbone, args.weights, batch_size=args.batch_size, workers=args.workers)
    engine = None
    if args.engine == "ray":
        from cbir.features.ray import ray_engine

        engine = ray_engine(
            address=args.address, actors=args.actors, decode=args.decode, cpus_per_actor=args.cpus_per_actor
        )
    result = extract_collection(catalog, extractor, out_path=args.out, dtype=args.dtype, engine=engine)
    meta = result.meta
    print(
        f"{meta['backbone']} ({meta['weights_id']}): {meta['n_images']} images × {meta['dim']} features, "
        f"{meta['computed']} computed now, {meta['n_rejected']} rejected"
    )
    if len(result.report):
        print("\nrejected files:")
        print(result.report.to_string(index=False))
    if not args.no_comparison and Path(root).resolve() == Path(config.default_collection()).resolve():
        keep_comparison()
    return 0


def keep_comparison() -> None:
    """The comparison page's first view computed now and kept on disk (read back if it is there already), so that
    the app opens it at once (:func:`cbir.evaluation.comparison.keep_default_comparison`)."""
    import time

    from cbir.evaluation.comparison import keep_default_comparison

    started = time.perf_counter()
    try:
        done = keep_default_comparison()
    except CbirError as exc:  # the features are extracted; the page will say the same when it computes
        print(f"comparison page: not computed ahead ({exc})")
        return
    if done:
        print(f"comparison page: its first view kept on disk ({time.perf_counter() - started:.1f} s)")


def cmd_info(args: argparse.Namespace) -> int:
    from cbir.features.backbones import BACKBONES, available_backbones
    from cbir.features.extractor import model_device
    from cbir.features.workspace import list_feature_sets

    print(f"artifacts:  {config.artifacts_dir()}")
    print(f"collection: {config.default_collection()} (default)")
    print(f"weights:    {config.weights_dir()} (CBIR_WEIGHTS_DIR)")
    print(f"models on:  {model_device()}\n")
    available = available_backbones()
    print(
        pd.DataFrame(
            [
                {"backbone": n, "dim": s.dim, "offline imagenet weights": available[n], "description": s.description}
                for n, s in BACKBONES.items()
            ]
        ).to_string(index=False)
    )
    table = list_feature_sets()
    print("\nfeature sets:" if len(table) else "\nno feature sets yet: run `python -m cbir extract`")
    if len(table):
        print(table.to_string(index=False))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from cbir.evaluation.distances import distance_table

    feature_set = load_selected_features(args)
    index_rows = (feature_set.catalog["role"] == "index").to_numpy()
    table = distance_table(
        feature_set.features[index_rows], feature_set.labels[index_rows], max_samples=args.max_samples
    )
    print(f"distance analysis of the index split ({feature_set.meta['backbone']}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cbir.evaluation.report import (
        BUDGET_FRACTION,
        REPORT_GRID,
        REPORT_PROBES,
        WIDTH_MULTIPLIERS,
        report,
        to_markdown,
    )

    photos = None
    if not args.no_photos:
        from cbir.data.samples import sample_photos

        photos = sample_photos()
    table = report(args.collection, k=args.k, photos=photos)
    hubness = "" if photos is None else f"; hubness over {len(photos)} out-of-domain photos ({', '.join(photos)})"
    print(
        f"mAP@{args.k}, recall@{args.k} against the exact scan{hubness}; LSH: euclidean sweep over "
        f"g={REPORT_GRID['n_tables']}, h={REPORT_GRID['n_projections']}, "
        f"w={list(WIDTH_MULTIPLIERS)}× the data-driven width, probes={list(REPORT_PROBES)}; best mAP visiting "
        f"≤ {BUDGET_FRACTION:.0%} of the indexed objects\n"
    )
    print(
        table.T.to_string(header=False, float_format=lambda v: f"{v:.3f}")
        if args.transpose
        else to_markdown(table)
        if args.markdown
        else table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m cbir", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("openclipart", help="build the default collection from Debian's openclipart-png")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the default collection)")
    p.add_argument("--workers", type=positive_int, default=4)
    p.add_argument("--limit-per-class", type=positive_int, default=None, help="keep only N images per category (tests)")
    p.set_defaults(func=cmd_openclipart)

    p = sub.add_parser("scan", help="decode every image of a collection and report the unusable ones")
    add_collection_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("extract", help="compute (or update) the CNN features of a collection")
    add_collection_args(p)
    add_model_args(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=positive_int, default=2, help="image decoding threads")
    p.add_argument(
        "--out", type=Path, default=None, help="feature store folder, or a .joblib file (default: under artifacts/)"
    )
    p.add_argument(
        "--dtype", choices=["float32", "float16"], default=None, help="stored type (default: the store's, or float32)"
    )
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="in-process pipeline (default) or Ray Data"
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--actors", type=positive_int, default=1, help="model replicas on Ray")
    p.add_argument(
        "--decode",
        choices=["actor", "tasks"],
        default=None,
        help="on Ray, decode images in the model actors (default: the in-process pipeline in each actor) or in "
        "separate tasks (the default for GPU actors)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=positive_float,
        default=None,
        help="CPUs Ray reserves for each model actor (default: a local Ray's CPUs shared among the actors; 1 on a "
        "cluster: give a node's CPU count to place one actor per node)",
    )
    p.add_argument(
        "--keep-all", action="store_true", help="also extract blank images and every copy of a duplicate group"
    )
    p.add_argument(
        "--no-comparison",
        action="store_true",
        help="do not compute the comparison page's first view ahead (by default, after extracting the default "
        "collection: 10-20 s on two cores, about a minute the first time numba compiles its kernels; kept on disk)",
    )
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("info", help="what is configured and built")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("analyze", help="mean distances / similarities of the features, overall and per class")
    add_feature_selection_args(p)
    p.add_argument("--max-samples", type=positive_int, default=3000)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("report", help="the README's results table: scan and best LSH mAP per feature set")
    p.add_argument("--collection", type=Path, default=None, help="collection folder (default: the default)")
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--transpose", action="store_true", help="one column per feature set")
    p.add_argument("--no-photos", action="store_true", help="skip the hubness columns (out-of-domain photos)")
    p.set_defaults(func=cmd_report)

    add_evaluate_parsers(sub)
    add_growth_parsers(sub)
    add_index_parsers(sub)
    add_finetune_parser(sub)
    add_serve_parser(sub)
    add_app_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`~cbir.core.errors.CbirError` (the user's input or machine) is printed as one line
    ``error: …`` on stderr with exit code 2, anything else is a bug and raises with its traceback."""
    config.quiet_native_libraries()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CbirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
