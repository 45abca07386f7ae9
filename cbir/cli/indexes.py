"""``index build`` and ``index list`` (registered by :mod:`cbir.cli.main` through :func:`add_index_parsers`): fitted
indexes kept on disk, which the app and the API load instead of building (:mod:`cbir.features.saved_indexes`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import pandas as pd

from cbir.cli.args import non_negative_int, positive_float, positive_int
from cbir.cli.search import add_feature_selection_args
from cbir.core.names import INDEX_KINDS, METRICS

if TYPE_CHECKING:
    from cbir.indexes.registry import IndexConfig


def index_config(args: argparse.Namespace, path: str) -> IndexConfig:
    """The :class:`IndexConfig` of the options; LSH's bucket width, when not given, the one the Search page starts
    from on the feature set at ``path`` (:func:`cbir.service.search.default_config`)."""
    from cbir.indexes.registry import DEFAULT_POLYTOPE_BITS, DEFAULT_TARGET_RECALL, IndexConfig
    from cbir.service.search import default_config

    width = args.bucket_width
    if args.kind == "lsh" and width is None:
        width = default_config("lsh", path, args.metric).bucket_width
        print(f"bucket width w = {width:.4g} (the Search page's default; set it with -w)")
    return IndexConfig(
        args.kind,
        args.metric,
        n_tables=args.n_tables,
        n_projections=args.n_projections,
        bucket_width=1.0 if width is None else width,
        probes=args.probes,
        seed=args.seed,
        ef_search=args.ef_search,
        n_probe=args.n_probe,
        bits=args.bits if args.bits is not None else DEFAULT_POLYTOPE_BITS,
        target_recall=args.target_recall if args.target_recall is not None else DEFAULT_TARGET_RECALL,
    )


def cmd_index_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cbir.features.saved_indexes import build_saved, index_dir
    from cbir.features.workspace import resolve_feature_path

    path = resolve_feature_path(args.features, args.backbone, args.collection, args.weights)
    config = index_config(args, str(path))
    bar = tqdm(desc="building the index", file=sys.stderr, leave=False, unit="rows")

    def progress(stage: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_description(stage)
        bar.update(done - bar.n)

    try:
        info = build_saved(path, config, progress=progress)
    finally:
        bar.close()
    print(
        f"{info['label']}: {info['n_objects']:,} images, built in {info['build_seconds']:.2f} s, saved to "
        f"{index_dir(path, config)}"
    )
    return 0


def cmd_index_list(args: argparse.Namespace) -> int:
    from cbir.features.workspace import list_indexes

    table = list_indexes()
    if table.empty:
        print("no saved index: build one with `python -m cbir index build --kind hnsw`")
        return 0
    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        print(table.drop(columns=["fresh"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


def add_index_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build and list indexes saved on disk (the app loads them instead of building)",
        description="Fitted indexes saved under artifacts/indexes/<feature set>/<setting>/ with what they were built "
        "from; the app serves one only while its feature set is unchanged (growth keeps them in step or marks them "
        "stale).",
    )
    from cbir.indexes.reference import DEFAULT_EF_SEARCH, DEFAULT_N_PROBE

    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    build = verbs.add_parser("build", help="fit an index on every image of a feature set and save it")
    add_feature_selection_args(build)
    build.add_argument("--kind", choices=INDEX_KINDS, required=True, help="index kind")
    build.add_argument("--metric", choices=METRICS, default="euclidean")
    build.add_argument("-g", "--n-tables", type=positive_int, default=7, help="LSH / cross-polytope tables")
    build.add_argument("-H", "--n-projections", type=positive_int, default=2, help="LSH hash functions per table")
    build.add_argument("-w", "--bucket-width", type=positive_float, default=None, help="LSH (default: data-driven)")
    build.add_argument("--probes", type=non_negative_int, default=0, help="LSH multi-probe (a search-time knob)")
    build.add_argument("--seed", type=non_negative_int, default=0, help="seed of the LSH functions")
    build.add_argument("--ef-search", type=positive_int, default=DEFAULT_EF_SEARCH, help="HNSW ef (a search-time knob)")
    build.add_argument(
        "--n-probe", type=positive_int, default=DEFAULT_N_PROBE, help="IVF-Flat nprobe (a search-time knob)"
    )
    build.add_argument("--bits", type=positive_int, default=None, help="cross-polytope bits per table")
    build.add_argument(
        "--target-recall",
        type=float,
        default=None,
        help="cross-polytope: probes and shortlist chosen at fit for this recall@10 (default 0.9; 0: --probes, R=30)",
    )
    build.set_defaults(func=cmd_index_build)
    listing = verbs.add_parser("list", help="the saved indexes: size, build time, freshness")
    listing.set_defaults(func=cmd_index_list)
