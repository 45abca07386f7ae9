"""Fine-tuning the backbones on a collection's labels (the paper's Section 5), made feasible on a small CPU.

Two models per backbone, both with the paper's head — three pairs of ``Dropout(0.5)`` + ``Dense(256/128/64,
relu)`` then ``Dense(n_classes, softmax)`` — on the pooled backbone output:

* **Model 1**: the backbone frozen up to :data:`FIRST_TRAINABLE` (the paper unfreezes from ``conv5_block1_1_conv``),
  trained with Adam at the paper's learning rate ``1e-6`` by default. The frozen part never changes, so its output
  (the *boundary* tensor: the input of the first trainable layer) is computed once per image and cached on disk as
  a float16 memmap; training then runs only the trainable tail (conv5 stage + head) on the cache. For ResNet50 this
  cuts a training step from ~12 GFLOP/image (forward + backward of the whole net) to the conv5 stage alone.
* **Model 2**: the same head on the whole backbone, everything trainable, with data augmentation (random horizontal
  flip, translation up to 10 % with edge fill, brightness ×[0.8, 1.2]). Decoded, resized images are cached once as a
  uint8 memmap and augmented on the fly, so an epoch never decodes a file again.

Both train with early stopping on the validation loss (patience 10, the best weights restored) under an optional
budget (``max_epochs``, ``max_minutes``) and checkpoint after every epoch (model + optimizer state, history and
early-stopping state, atomically), so a rerun continues where the last one stopped.

Data: training = catalog rows with role ``index`` and a label; validation (the paper's "test" numbers) = role
``query``; distractors are unused. Outputs go to ``<artifacts>/finetune/<collection-id>/<backbone>-model<N>/``:
``history.json``, ``report.csv`` (classification report), ``metrics.json``, ``classifier.keras`` and the feature
models ``model<N>-pool.keras`` (pooled backbone output, 2048/1280-d) and ``model<N>-dense256.keras`` (the 256-d
dense layer). A feature model takes the same input as the backbone (a 224×224 RGB batch already normalised by the
backbone's own ``preprocess_input``), so ``FeatureExtractor(backbone, weights="<path>.keras")`` and
``python -m cbir extract --backbone B --weights <path>.keras`` use it like any other weights.

Modules, one concern each (everything public is re-exported here, so ``from cbir.features.finetune import X`` is the
API):

* :mod:`~cbir.features.finetune.models` — backbone + head, the frozen / trainable split (:data:`FIRST_TRAINABLE`),
feature
  model export, compiling and saving;
* :mod:`~cbir.features.finetune.data` — the uint8 image cache, the float16 activation cache, augmentation, batch
schedule;
* :mod:`~cbir.features.finetune.training` — :func:`train_loop` and its saved :class:`TrainingState`;
* :mod:`~cbir.features.finetune.metrics` — classification report, cross-entropy, training-curve figure;
* :mod:`~cbir.features.finetune.runs` — run folders and their files, finished runs for the comparison page;
* :mod:`~cbir.features.finetune.losses` — SupCon, proxy-anchor and softmax cross-entropy in TensorFlow ops;
* :mod:`~cbir.features.finetune.heads` — the retrieval head (MLP, L2-normalised output) and its training loop;
* :mod:`~cbir.features.finetune.retrieval` — :func:`train_retrieval`, a retrieval head from a collection to a saved
  extractor and feature set (frozen backbone, or with the last stage unfrozen);
* :mod:`~cbir.features.finetune.pipeline` — :func:`finetune`, the whole run from a collection to saved models;
* :mod:`~cbir.features.finetune.errors` — :class:`FinetuneError`.
"""

from cbir.features.finetune.data import (
    Augmentation,
    ImageCache,
    activation_cache,
    augment_batch,
    class_balanced_batches,
    epoch_batches,
    image_cache,
    labelled_rows,
    write_memmap_atomic,
)
from cbir.features.finetune.errors import FinetuneError
from cbir.features.finetune.heads import (
    FitOutcome,
    FitSettings,
    LossSettings,
    build_head,
    embed,
    fit_embedding,
)
from cbir.features.finetune.losses import LOSSES, proxy_anchor_loss, softmax_ce_loss, supcon_loss
from cbir.features.finetune.metrics import classification_report, cross_entropy, training_figure
from cbir.features.finetune.models import (
    DENSE_FEATURE_LAYER,
    FIRST_TRAINABLE,
    HEAD_DROPOUT,
    HEAD_UNITS,
    PAPER_LR,
    boundary_tensor,
    build_backbone,
    build_classifier,
    compile_model,
    feature_models,
    save_model_atomic,
    set_trainable,
    split_model,
)
from cbir.features.finetune.pipeline import FinetuneConfig, FinetuneResult, finetune
from cbir.features.finetune.retrieval import (
    RetrievalConfig,
    RetrievalResult,
    index_split,
    project_feature_set,
    retrieval_dir,
    retrieval_runs,
    train_retrieval,
)
from cbir.features.finetune.runs import FinishedRun, finetune_dir, finished_runs, load_history
from cbir.features.finetune.training import (
    STATE_VERSION,
    EpochRecord,
    LoopOutcome,
    LoopSettings,
    TrainingState,
    check_resumable,
    train_loop,
)

__all__ = [
    "DENSE_FEATURE_LAYER",
    "FIRST_TRAINABLE",
    "HEAD_DROPOUT",
    "HEAD_UNITS",
    "LOSSES",
    "PAPER_LR",
    "STATE_VERSION",
    "Augmentation",
    "EpochRecord",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "FinishedRun",
    "FitOutcome",
    "FitSettings",
    "ImageCache",
    "LoopOutcome",
    "LoopSettings",
    "LossSettings",
    "RetrievalConfig",
    "RetrievalResult",
    "TrainingState",
    "activation_cache",
    "augment_batch",
    "boundary_tensor",
    "build_backbone",
    "build_classifier",
    "build_head",
    "check_resumable",
    "class_balanced_batches",
    "classification_report",
    "compile_model",
    "cross_entropy",
    "embed",
    "epoch_batches",
    "feature_models",
    "finetune",
    "finetune_dir",
    "finished_runs",
    "fit_embedding",
    "image_cache",
    "index_split",
    "labelled_rows",
    "load_history",
    "project_feature_set",
    "proxy_anchor_loss",
    "retrieval_dir",
    "retrieval_runs",
    "save_model_atomic",
    "set_trainable",
    "softmax_ce_loss",
    "split_model",
    "supcon_loss",
    "train_loop",
    "train_retrieval",
    "training_figure",
    "write_memmap_atomic",
]
