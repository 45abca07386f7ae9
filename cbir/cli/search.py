"""``evaluate`` and ``sweep`` subcommands (registered by :mod:`cbir.cli.main` through :func:`add_evaluate_parsers`).

Both read a feature artifact (``--features PATH``, or the newest one of ``--backbone`` for ``--collection``),
split it by the catalog's ``role`` column into indexed rows and queries, and print the paper's tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cbir.cli.args import list_of, non_negative_int, positive_float, positive_int
from cbir.core.names import INDEX_KINDS, METRICS

if TYPE_CHECKING:
    from cbir.features.sources import FeatureSet


def _format_float(value: float) -> str:
    return f"{value:.4f}"


_int_list = list_of(positive_int, "integers >= 1")
_probe_list = list_of(non_negative_int, "integers >= 0")
_float_list = list_of(positive_float, "numbers > 0")


def add_feature_selection_args(parser: argparse.ArgumentParser) -> None:
    """Pick a feature set: an artifact path, or the newest one matching backbone / weights / collection."""
    parser.add_argument("--features", type=Path, default=None, help="feature artifact (.joblib)")
    parser.add_argument("--backbone", default=None, help="else: the newest feature set of this backbone")
    parser.add_argument(
        "--weights", default=None, help="…whose weights id contains this text (e.g. imagenet, model1-dense256)"
    )
    parser.add_argument("--collection", type=Path, default=None, help="collection folder (default: the default)")


def load_selected_features(args: argparse.Namespace) -> FeatureSet:
    """The :class:`cbir.features.sources.FeatureSet` named by the :func:`add_feature_selection_args` options."""
    from cbir.features.workspace import resolve_feature_set  # imported late: pulls in the feature-extraction stack

    return resolve_feature_set(args.features, args.backbone, args.collection, args.weights)


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    add_feature_selection_args(parser)
    parser.add_argument("--metric", choices=METRICS, default="euclidean")
    parser.add_argument("--k", type=positive_int, default=10, help="results per query and AP cut-off (default 10)")
    parser.add_argument("--no-distractors", action="store_true", help="do not index the distractor images")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the LSH projections")


def add_evaluate_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` and ``sweep`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "evaluate", help="mAP@k, recall@k against the exact scan, per-class mAP and visited objects of one index"
    )
    _add_common_args(p)
    p.add_argument("--index", choices=INDEX_KINDS, default="lsh")
    p.add_argument(
        "-g", "--n-tables", type=positive_int, default=7, help="LSH hash tables (default 7, the paper's app)"
    )
    p.add_argument("-H", "--n-projections", type=positive_int, default=2, help="hash functions per table (default 2)")
    p.add_argument("-w", "--bucket-width", type=positive_float, default=None, help="default: data-driven (see sweep)")
    p.add_argument(
        "--probes", type=non_negative_int, default=0, help="multi-probe: extra buckets per table (default 0)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("sweep", help="evaluate a grid of LSH settings; Pareto frontier and recommendation")
    _add_common_args(p)
    p.add_argument("--g", dest="grid_g", type=_int_list, default=[2, 4, 6, 8], help="tables, e.g. 2,4,6")
    p.add_argument("--h", dest="grid_h", type=_int_list, default=[2, 3, 4], help="projections per table")
    p.add_argument("--w", dest="grid_w", type=_float_list, default=None, help="bucket widths (default: ½,1,2×auto)")
    p.add_argument("--probes", dest="grid_probes", type=_probe_list, default=[0], help="multi-probe settings")
    p.add_argument("--budget", type=positive_float, default=None, help="recommend the best mAP visiting <= N objects")
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--no-scan", action="store_true", help="skip the exact-scan reference row")
    p.set_defaults(func=cmd_sweep)


def _print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(table.to_string(index=False, float_format=_format_float))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Fit one index on the index split (+ distractors) and print the summary and per-class tables."""
    from cbir.evaluation.evaluate import evaluate_split, split_collection
    from cbir.indexes.lsh import LSHIndex
    from cbir.indexes.registry import IndexConfig
    from cbir.indexes.scan import SequentialScan
    from cbir.indexes.widths import default_width

    feature_set = load_selected_features(args)
    split = split_collection(feature_set.features, feature_set.labels, feature_set.roles, not args.no_distractors)
    if args.index == "scan":
        index = SequentialScan(args.metric)
    elif args.index != "lsh":  # the reference indexes at their default settings
        index = IndexConfig(args.index, args.metric).build()
    else:
        width = args.bucket_width
        if width is None:
            width = default_width(split.index_vectors, args.metric, seed=args.seed)
            print(f"bucket width w = {width:.4g} (data-driven default; set it with -w)")
        index = LSHIndex(
            args.n_tables, args.n_projections, width, metric=args.metric, seed=args.seed, probes=args.probes
        )
    result = evaluate_split(index, split, k=args.k)
    backbone = feature_set.meta.get("backbone", "?")
    # the scan has no LSH settings; the score column is named after what it is (mean_distance, mean_similarity)
    row = {name: value for name, value in result.row().items() if value is not None and name != "score_name"}
    _print_table(
        f"{backbone}, k={args.k}, {'with' if not args.no_distractors else 'without'} distractors:",
        pd.DataFrame([row]).rename(columns={"mean_score": f"mean_{result.score_name}"}),
    )
    _print_table("per class:", result.per_class)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Evaluate the grid, print it with its Pareto frontier, and optionally a recommendation for ``--budget``."""
    from cbir.evaluation.evaluate import split_collection
    from cbir.evaluation.sweep import pareto_frontier, recommend, sweep_split
    from cbir.indexes.widths import default_width, width_grid

    feature_set = load_selected_features(args)
    split = split_collection(feature_set.features, feature_set.labels, feature_set.roles, not args.no_distractors)
    widths = args.grid_w or width_grid(default_width(split.index_vectors, args.metric, seed=args.seed))
    grid = {"n_tables": args.grid_g, "n_projections": args.grid_h, "bucket_width": widths}
    progress = _ProgressBar()
    try:
        table = sweep_split(
            split,
            grid,
            metric=args.metric,
            k=args.k,
            probes=args.grid_probes,
            seed=args.seed,
            progress=progress,
            include_scan=not args.no_scan,
        )
    finally:
        progress.close()
    shown = table.drop(columns=["metric"])
    _print_table(f"sweep ({args.metric}, k={args.k}):", shown)
    _print_table(
        "Pareto frontier (fewer visited objects, higher mAP):",
        shown[pareto_frontier(table)].sort_values("mean_visited"),
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"\nwrote {args.out}")
    if args.budget is not None:
        best = recommend(table[table["index"] == "lsh"], args.budget)
        print(
            f"\nrecommended for <= {args.budget:g} visited objects per query: g={best['n_tables']:.0f} "
            f"h={best['n_projections']:.0f} w={best['bucket_width']:.4g} probes={best['probes']:.0f} "
            f"-> mAP {best['map']:.4f}, recall {best['recall']:.4f}, {best['mean_visited']:.1f} visited"
        )
    return 0


class _ProgressBar:
    """``progress(done, total)`` callable over tqdm (stderr), with ``close()``."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc="configurations", file=sys.stderr, leave=False)

    def __call__(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()
