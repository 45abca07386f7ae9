"""The model a query is embedded with: :class:`ExtractorSpec` names the backbone and weights that computed a feature
set (read off its meta), :func:`make_extractor` builds it. The search engine, growth and the report use it; a server
runs its model's ops on one thread each (:func:`one_thread_per_op`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cbir.core import config
from cbir.features.backbones import WeightsNotFoundError, get_backbone, resolve_weights, weights_identity
from cbir.features.extractor import FeatureExtractor
from cbir.features.workspace import weights_kind


@dataclass(frozen=True)
class ExtractorSpec:
    """How to rebuild the model that computed a feature set (hashable: the extractor cache key)."""

    backbone: str
    weights: str | None
    seed: int = 0


def extractor_spec(meta: Mapping[str, Any]) -> ExtractorSpec:
    """The backbone and weights a query must be embedded with to be comparable to the feature set ``meta``.

    ``meta["weights_path"]`` wins when present; ``random-seedN`` ids mean random weights with seed N; ImageNet ids
    use the local ImageNet weights; other ids (fine-tuned models) are looked up among the weights files under
    ``<artifacts>/finetune`` and the weights folder by their identity. Raises
    :class:`cbir.features.backbones.WeightsNotFoundError` otherwise.
    """
    backbone = str(meta.get("backbone"))
    spec = get_backbone(backbone)
    weights_id = str(meta.get("weights_id", ""))
    path = meta.get("weights_path")
    if path and Path(path).is_file():
        return ExtractorSpec(backbone, str(path))
    if weights_id.startswith("random-seed"):
        return ExtractorSpec(backbone, None, int(weights_id.removeprefix("random-seed") or 0))
    if weights_kind(weights_id) == "ImageNet":
        return ExtractorSpec(backbone, "imagenet")
    folders = [config.artifacts_dir() / "finetune", config.artifacts_dir() / "weights", config.weights_dir()]
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for candidate in sorted(folder.rglob("*")):
            if (
                candidate.suffix in (".keras", ".h5")
                and candidate.is_file()
                and weights_identity(str(candidate)) == weights_id
            ):
                return ExtractorSpec(backbone, str(candidate))
    known = resolve_weights(spec, "imagenet")
    raise WeightsNotFoundError(
        f"cannot find the weights {weights_id!r} that computed this {backbone} feature set "
        f"(looked under {', '.join(str(f) for f in folders if f is not None)}; the ImageNet weights "
        f"are {known}). Pick another feature set or re-extract it."
    )


def make_extractor(spec: ExtractorSpec, warm_up: bool = True) -> FeatureExtractor:
    """Build the feature extractor of ``spec``; ``warm_up`` runs one image so the first user query is not the
    one paying for graph tracing."""
    extractor = FeatureExtractor(spec.backbone, spec.weights, batch_size=1, seed=spec.seed)
    if warm_up:
        extractor.transform([Image.new("RGB", (32, 32), "white")])
    return extractor


QUERY_OP_THREADS = 1  # TensorFlow's intra-op threads in a server, which embeds one query at a time


def one_thread_per_op() -> bool:
    """Have TensorFlow run each op on one thread (its intra-op pool), as a server embeds one query at a time: the
    single-query policy of :mod:`cbir.indexes.threads` for the model. On two cores with one of them busy (another
    session, the browser drawing the page) each op split over two threads waited for the slower half: the Search
    page's embedding took 80 ms (median of 8 queries, load 3-5) against 37 ms on one thread, and one image alone 40-42
    against 26-32 ms at load 3; a batch of 32 is 10-20 % slower on one thread (44-47 against 39 images/s), which a
    server rarely runs (the home page's build, before any query). Takes effect only before TensorFlow's runtime starts
    (its first op) and when the environment does not choose (``TF_NUM_INTRAOP_THREADS``); returns whether it did."""
    if os.environ.get("TF_NUM_INTRAOP_THREADS"):
        return False
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(QUERY_OP_THREADS)
    except RuntimeError:  # the runtime has started: its thread pools are made
        return False
    return True
