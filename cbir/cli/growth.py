"""``add`` and ``remove`` subcommands (registered by :mod:`cbir.cli.main` through :func:`add_growth_parsers`): grow or
shrink a collection and its feature store in place (:mod:`cbir.service.growth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbir.cli.search import add_feature_selection_args


def _feature_path(args: argparse.Namespace) -> Path:
    from cbir.features.workspace import resolve_feature_path  # imported late: pulls in the feature-extraction stack

    return resolve_feature_path(args.features, args.backbone, args.collection, args.weights)


def cmd_add(args: argparse.Namespace) -> int:
    from cbir.features.sources import load_features
    from cbir.service.growth import add_images

    path = _feature_path(args)
    report = add_images(path, args.files, label=args.label, allow_duplicates=args.allow_duplicates)
    print(report.summary())
    # what growing in place saves: the model ran on the new images only, the rest was not read
    per_image = report.embed_seconds / max(len(report.images), 1)
    print(
        f"features of the new image(s): {report.embed_seconds:.2f} s ({per_image:.3f} s each); a full re-extraction "
        f"of the {report.n_images:,} images at that rate: ~{per_image * report.n_images:.0f} s"
    )
    print(f"feature set: {path} ({len(load_features(path).catalog):,} rows)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from cbir.service.growth import remove_images

    report = remove_images(_feature_path(args), args.paths)
    print(report.summary())
    if len(report.stores) > 1:
        print(f"removed from {len(report.stores)} feature sets of the collection")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from cbir.service.growth import removed_images, restore_images

    path = _feature_path(args)
    if not args.paths:
        gone = removed_images(path)
        if gone.empty:
            print("no removed image can be restored")
        for row in gone.itertuples():
            print(f"{row.relpath}  {row.label if isinstance(row.label, str) else '(unlabelled)'}")
        return 0
    report = restore_images(path, args.paths)
    print(report.summary())
    return 0


def add_growth_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "add",
        help="add images to the collection and its feature set in place (features computed for them only)",
        description="Copy images into the collection (training_set/<label>/ or <label>/; distractors/added/ without "
        "--label) and append their features to the feature set: the rest is not re-extracted and the app's open "
        "sessions see them on their next query. Unusable files, blank images and copies of indexed images are "
        "refused (nothing is added).",
    )
    p.add_argument("files", nargs="+", type=Path, help="image files")
    p.add_argument("--label", default=None, help="class (an existing one or a new one); default: unlabelled")
    p.add_argument("--allow-duplicates", action="store_true", help="add exact or near copies of indexed images too")
    add_feature_selection_args(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser(
        "remove",
        help="remove images from the collection and its feature sets in place",
        description="Mark images removed in every feature set of the collection (no re-extraction) and move their "
        "files to <collection>/.removed/.",
    )
    p.add_argument("paths", nargs="+", help="image paths, absolute or relative to the collection")
    add_feature_selection_args(p)
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser(
        "restore",
        help="undo remove: put removed images back in the collection and its feature sets",
        description="Move removed images back from <collection>/.removed/ and take them out of the tombstones of "
        "every feature set of the collection (their features were kept: nothing is re-extracted). Without paths, "
        "list the images that can be restored.",
    )
    p.add_argument("paths", nargs="*", help="paths relative to the collection, as remove printed them")
    add_feature_selection_args(p)
    p.set_defaults(func=cmd_restore)
