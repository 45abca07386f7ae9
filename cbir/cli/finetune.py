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
    from cbir.features.finetune import FinetuneConfig, RetrievalConfig

DESCRIPTION = """\
Fine-tune a backbone with the paper's head (3 × [Dropout 0.5 + Dense 256/128/64 relu] + softmax) on the
collection's labels: training = index split, validation = query split.

  Model 1: frozen up to the paper's conv5_block1_1_conv (EfficientNet-Lite0: its last stage, block 15); the frozen
           part runs once per image and is cached, then only the tail trains (fast on a CPU).
  Model 2: the whole backbone trains, with augmentation (flip, translation, brightness); slow on a CPU, so give it
           a budget (--max-minutes, --steps-per-epoch). Reruns resume from the last epoch's checkpoint.

The saved feature models give fine-tuned retrieval features:
  python -m cbir extract --backbone B --weights artifacts/finetune/<collection>/<B>-model<N>/model<N>-pool.keras

With --loss supcon|proxy_anchor|ce it trains a retrieval head instead (issue 22): an MLP with an L2-normalised
--dim output, trained with a metric loss (supervised contrastive, proxy-anchor) or softmax cross-entropy on
class-balanced batches of the index split's labels only. By default the backbone stays frozen and the head trains
on the stored pooled features (minutes on a CPU); the trained feature set is written at once. With
--unfreeze-last-stage the backbone's last stage trains too (Model 1's split, cached activations); then run the
printed `extract --weights` command.
"""


def _weights_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "random") else value


def _add_retrieval_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the retrieval head (``--loss`` and what it reads)."""
    from cbir.features.finetune import LOSSES, FitSettings, LossSettings

    g = p.add_argument_group("retrieval head (--loss)")
    g.add_argument(
        "--loss", choices=LOSSES, default=None, help="train a retrieval head with this loss instead of the paper's"
    )
    g.add_argument("--dim", type=positive_int, default=256, help="output size (L2-normalised); default 256")
    g.add_argument(
        "--hidden",
        type=non_negative_int,
        default=1024,
        help="hidden ReLU layer width of the head; 0: a linear head (default 1024)",
    )
    g.add_argument("--unfreeze-last-stage", action="store_true", help="train the backbone's last stage too")
    g.add_argument("--classes-per-batch", type=positive_int, default=FitSettings.classes_per_batch)
    g.add_argument("--per-class", type=positive_int, default=FitSettings.per_class, help="examples per class")
    g.add_argument("--temperature", type=positive_float, default=LossSettings.temperature, help="supcon")
    g.add_argument("--alpha", type=positive_float, default=LossSettings.alpha, help="proxy_anchor scale")
    g.add_argument("--margin", type=float, default=LossSettings.margin, help="proxy_anchor margin")


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to ``subparsers`` (from ``ArgumentParser.add_subparsers``); return its parser."""
    from cbir.features.backbones import BACKBONES
    from cbir.features.finetune import PAPER_LR, FitSettings

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
        default=None,
        help=f"Adam learning rate (default: the paper's {PAPER_LR:g}; it moves slowly, 1e-4 is quicker; "
        f"retrieval heads: {FitSettings.lr:g}, cosine-decayed)",
    )
    p.add_argument(
        "--max-epochs",
        type=positive_int,
        default=None,
        help=f"stop after this many epochs in all (default: 100; retrieval heads: {FitSettings.epochs})",
    )
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
    _add_retrieval_arguments(p)
    p.add_argument("--restart", action="store_true", help="discard the checkpoint of an earlier run")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, default=2, help="image decoding threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars (epoch lines are still printed)")
    p.set_defaults(func=cmd_finetune)
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The :class:`cbir.features.finetune.FinetuneConfig` the parsed ``args`` ask for."""
    from cbir.features.finetune import PAPER_LR, FinetuneConfig

    return FinetuneConfig(
        backbone=args.backbone,
        model=args.model,
        weights=args.weights,
        lr=args.lr if args.lr is not None else PAPER_LR,
        batch_size=args.batch_size,
        max_epochs=args.max_epochs if args.max_epochs is not None else 100,
        max_minutes=args.max_minutes,
        patience=args.patience,
        steps_per_epoch=args.steps_per_epoch,
        freeze_bn=args.freeze_bn,
        seed=args.seed,
        workers=args.workers,
    )


def retrieval_config_from_args(args: argparse.Namespace) -> RetrievalConfig:
    """The :class:`cbir.features.finetune.RetrievalConfig` the parsed ``args`` ask for (``--loss`` given)."""
    from cbir.features.finetune import FinetuneError, FitSettings, LossSettings, RetrievalConfig

    if args.model != 1:
        raise FinetuneError("--loss trains a head on Model 1's split; --model 2 does not apply")
    if args.hidden < 0:
        raise FinetuneError(f"--hidden must be >= 0, got {args.hidden}")
    fit = FitSettings(
        epochs=args.max_epochs if args.max_epochs is not None else FitSettings.epochs,
        lr=args.lr if args.lr is not None else FitSettings.lr,
        classes_per_batch=args.classes_per_batch,
        per_class=args.per_class,
        max_minutes=args.max_minutes,
        seed=args.seed,
    )
    return RetrievalConfig(
        backbone=args.backbone,
        weights=args.weights,
        dim=args.dim,
        hidden=args.hidden or None,
        loss=LossSettings(args.loss, args.temperature, args.alpha, args.margin),
        fit=fit,
        unfreeze_last_stage=args.unfreeze_last_stage,
        workers=args.workers,
    )


def cmd_retrieval(args: argparse.Namespace) -> int:
    """Train a retrieval head (``--loss``) and say where its extractor and feature set are."""
    from cbir.features.finetune import train_retrieval

    cfg = retrieval_config_from_args(args)
    collection = args.collection or config.default_collection()
    result = train_retrieval(collection, cfg, progress=not args.quiet)
    m = result.metrics
    kind = f"last stage ({m['unfrozen']} on) unfrozen" if m["unfrozen"] else "frozen backbone"
    print(
        f"\n{cfg.backbone} + {cfg.dim}-d retrieval head ({cfg.loss.loss}, {kind}): {len(m['history'])} epochs "
        f"({m['stopped']}) in {m['train_seconds']:.1f} s on {m['n_train']} index images of {len(m['classes'])} "
        f"classes; last epoch loss {m['history'][-1]['loss']:.4f}"
    )
    print(f"outputs in {result.run_dir}\n  extractor: {result.extractor}")
    if result.feature_set is not None:
        print(f"  feature set: {result.feature_set}\n\nscore it: python -m cbir report")
    else:
        print(f"\nits features: python -m cbir extract --backbone {cfg.backbone} --weights {result.extractor}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run :func:`cbir.features.finetune.finetune` and print the paper's evaluation: report, test loss and accuracy."""
    from cbir.features.finetune import finetune

    if args.loss is not None:
        return cmd_retrieval(args)
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
