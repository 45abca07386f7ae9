"""``python -m cbir finetune``: fine-tune a backbone on a collection's labels (the paper's Section 5).

The main CLI registers the command with :func:`add_finetune_parser`; the work is
:func:`cbir.features.finetune.finetune`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbir.cli.args import non_negative_int, positive_float, positive_int
from cbir.core import config

if TYPE_CHECKING:  # imported lazily below: the package loads pandas, and `python -m cbir --help` should not wait
    from cbir.features.finetune import FinetuneConfig

DESCRIPTION = """\
Fine-tune a backbone with the paper's head (3 × [Dropout 0.5 + Dense 256/128/64 relu] + softmax) on the
collection's labels: training = index split, validation = query split.

  Model 1: frozen up to the paper's conv5_block1_1_conv (EfficientNet-Lite0: its last stage, block 15); the frozen
           part runs once per image and is cached, then only the tail trains (fast on a CPU).
  Model 2: the whole backbone trains, with augmentation (flip, translation, brightness); slow on a CPU, so give it
           a budget (--max-minutes, --steps-per-epoch). Reruns resume from the last epoch's checkpoint.

The saved feature models give fine-tuned retrieval features:
  python -m cbir extract --backbone B --weights artifacts/finetune/<collection>/<B>-model<N>/model<N>-pool.keras
"""


def _weights_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "random") else value


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to ``subparsers`` (from ``ArgumentParser.add_subparsers``); return its parser."""
    from cbir.features.backbones import BACKBONES
    from cbir.features.finetune import PAPER_LR

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a backbone on the collection's labels (paper Section 5)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--collection",
        type=Path,
        default=None,
        help="collection folder (default: $CBIR_COLLECTION or the Open Clip Art build)",
    )
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=sorted(BACKBONES),
        help="backbone to fine-tune (default: efficientnet_lite0, whose weights install offline)",
    )
    p.add_argument(
        "--model",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: train from the conv5 stage on (cached activations); 2: train everything, augmented",
    )
    p.add_argument(
        "--weights",
        type=_weights_arg,
        default="imagenet",
        help="starting weights: 'imagenet' (local copy first), 'none' (random) or a weights file",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=PAPER_LR,
        help=f"Adam learning rate (default: the paper's {PAPER_LR:g}; it moves slowly, 1e-4 is quicker)",
    )
    p.add_argument("--max-epochs", type=positive_int, default=100, help="stop after this many epochs in all")
    p.add_argument(
        "--max-minutes", type=positive_float, default=None, help="training time budget of this run; rerun to continue"
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--patience",
        type=positive_int,
        default=10,
        help="early stopping: epochs without a lower validation loss (best weights are restored)",
    )
    p.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="batches per epoch (default: one pass); shorter epochs checkpoint more often",
    )
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNormalization layers frozen")
    p.add_argument("--restart", action="store_true", help="discard the checkpoint of an earlier run")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, default=2, help="image decoding threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars (epoch lines are still printed)")
    p.set_defaults(func=cmd_finetune)
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The :class:`cbir.features.finetune.FinetuneConfig` the parsed ``args`` ask for."""
    from cbir.features.finetune import FinetuneConfig

    return FinetuneConfig(
        backbone=args.backbone,
        model=args.model,
        weights=args.weights,
        lr=args.lr,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs,
        max_minutes=args.max_minutes,
        patience=args.patience,
        steps_per_epoch=args.steps_per_epoch,
        freeze_bn=args.freeze_bn,
        seed=args.seed,
        workers=args.workers,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run :func:`cbir.features.finetune.finetune` and print the paper's evaluation: report, test loss and accuracy."""
    from cbir.features.finetune import finetune

    cfg = config_from_args(args)
    collection = args.collection or config.default_collection()
    result = finetune(collection, cfg, restart=args.restart, verbose=True, progress=not args.quiet)
    stopped = {
        "early_stopping": f"early stopping (patience {cfg.patience})",
        "max_epochs": "--max-epochs reached",
        "time_budget": "--max-minutes reached (rerun to continue)",
    }.get(result.stopped, result.stopped)
    print(
        f"\n{cfg.backbone} model {cfg.model}: {result.epochs_done} epochs ({stopped}), best epoch "
        f"{result.best_epoch}, {result.seconds_per_epoch:.1f} s per epoch, lr {cfg.lr:g}"
    )
    print(f"validation set ({int(result.report.loc['accuracy', 'support'])} images):\n")
    print(result.report.to_string(float_format=lambda v: f"{v:.2f}", na_rep=""))
    print(f"\nloss_test : {result.test_loss}")
    print(f"acc_test  : {result.test_accuracy}")
    print(f"\noutputs in {result.run_dir}")
    labels = {
        "classifier": result.classifier_path,
        **{f"feature model {name}": path for name, path in result.feature_models.items()},
    }
    width = max(len(label) for label in labels) + 1
    for label, path in labels.items():
        print(f"  {label + ':':{width}s} {path}")
    print(
        f"\nfine-tuned features: python -m cbir extract --backbone {cfg.backbone} --weights "
        f"{result.feature_models['pool']}"
    )
    return 0
