"""Retrieval-head benchmark: features trained for retrieval beside the frozen ImageNet features (issue 22's goals).

    .venv/bin/python benchmarks/retrieval_head.py                          # frozen + supcon / proxy_anchor / ce
    .venv/bin/python benchmarks/retrieval_head.py --losses supcon --epochs 40 --per-class 8 --hidden 0
    .venv/bin/python benchmarks/retrieval_head.py --collection PATH        # another labelled collection
    .venv/bin/python benchmarks/retrieval_head.py --losses "" --score FEATURES   # a stored (e.g. unfrozen) set

Trains each head in memory on the collection's stored pooled features of the index split (labels of the index
split only, the same code as ``python -m cbir finetune --loss ...``), embeds every image and scores the exact scan
(mAP@10, euclidean and cosine, with the distractors indexed) and the default E2LSH setting (g=7, h=2, the
data-driven width): its mAP@10 and recall@10 against this feature set's own exact euclidean scan; the hubness of
the exact euclidean scan (the validation queries' hub share, the sample photos' answers on those hubs; the photos
go through the same head, i.e. what ``extract --weights`` gives them). Prints one row
per feature set with the training seconds and the load average (the machine is shared: seconds move with it).
Goal: a frozen-backbone head trained in ≤ 3 min on two cores reaches scan mAP@10 (cosine) ≥ 0.70.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from cbir.core import config
from cbir.data.samples import sample_photos
from cbir.evaluation.evaluate import evaluate_split, split_collection
from cbir.evaluation.hubness import hubness_summary
from cbir.evaluation.report import training_metrics
from cbir.features.extractor import FeatureExtractor, load_features
from cbir.features.finetune.heads import FitSettings, LossSettings, build_head, embed, fit_embedding
from cbir.features.finetune.retrieval import base_feature_set, index_split
from cbir.features.query_model import extractor_spec, make_extractor
from cbir.indexes.registry import IndexConfig
from cbir.indexes.scan import SequentialScan
from cbir.indexes.widths import default_width

GOAL_MAP_COSINE = 0.70


def score(
    features: np.ndarray, labels: np.ndarray, roles: np.ndarray, photos: np.ndarray, k: int = 10
) -> dict[str, float]:
    """Scan mAP@k (euclidean, cosine), hubness of the exact euclidean scan (hub share of the validation queries'
    answers; share of the out-of-domain ``photos``' answers (their (n, d) vectors) that are those hubs), and the
    default E2LSH setting's mAP@k and recall@k on ``features``."""
    split = split_collection(features, labels, roles, with_distractors=True)
    row = {f"scan mAP {m}": evaluate_split(SequentialScan(m), split, k=k).map for m in ("euclidean", "cosine")}
    photo_ids = SequentialScan("euclidean").fit(split.index_vectors).search(photos, k)[1]
    hubness = hubness_summary(split.exact_ids("euclidean", k), split.n_indexed, out_of_domain_ids=photo_ids)
    row.update({"hub share": hubness["hub_share"], "photos on hubs": hubness["ood_hub_share"]})
    lsh = IndexConfig("lsh", bucket_width=default_width(split.index_vectors)).build()
    result = evaluate_split(lsh, split, k=k)
    row.update({"LSH mAP": result.map, "LSH recall@10": result.recall, "LSH visited %": 100 * result.visited_fraction})
    return row


def stored_row(path: str) -> dict[str, object]:
    """The benchmark row of a stored feature set: the photos embedded by its own model, the training seconds from
    the run's ``metrics.json`` (beside the extractor)."""
    fs = load_features(path)
    extractor = make_extractor(extractor_spec(fs.meta), warm_up=False)
    photos = extractor.transform(list(sample_photos().values()))
    trained = training_metrics(fs.meta.get("weights_path"))
    row = score(np.asarray(fs.features, np.float32), fs.labels, fs.roles, photos)
    return {
        "features": fs.meta["weights_id"],
        "loss": trained["training"],
        **row,
        "train s": trained["train s"],
        "load avg": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default=None)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--losses", default="supcon,proxy_anchor,ce")
    parser.add_argument("--epochs", type=int, default=FitSettings.epochs)
    parser.add_argument("--lr", type=float, default=FitSettings.lr)
    parser.add_argument("--classes-per-batch", type=int, default=FitSettings.classes_per_batch)
    parser.add_argument("--per-class", type=int, default=FitSettings.per_class)
    parser.add_argument("--hidden", type=int, default=1024, help="0: a linear head")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=LossSettings.temperature)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--score",
        action="append",
        default=[],
        metavar="FEATURES",
        help="also score this stored feature set (e.g. a last-stage run's `extract --weights` output); repeatable",
    )
    args = parser.parse_args()

    base = base_feature_set(args.collection or config.default_collection(), args.backbone, "imagenet")
    labels, roles = base.labels, base.roles
    rows, y, classes = index_split(labels, roles)
    x_all = np.asarray(base.features, dtype=np.float32)
    photos = FeatureExtractor(args.backbone, "imagenet").transform(list(sample_photos().values()))  # pooled
    print(
        f"{base.meta['backbone']} {base.meta['weights_id']}: {len(x_all)} images, trained on {len(rows)} index "
        f"rows of {len(classes)} classes (no query, no distractor)"
    )
    table = [
        {
            "features": "frozen ImageNet",
            "loss": "-",
            **score(x_all, labels, roles, photos),
            "train s": 0.0,
            "load avg": os.getloadavg()[0],
        }
    ]
    for path in args.score:
        table.append(stored_row(path))
        print(pd.DataFrame(table[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    fit = FitSettings(
        epochs=args.epochs,
        lr=args.lr,
        classes_per_batch=args.classes_per_batch,
        per_class=args.per_class,
        seed=args.seed,
    )
    for loss in filter(None, args.losses.split(",")):
        settings = replace(LossSettings(), loss=loss, temperature=args.temperature)
        head = build_head(x_all.shape[1], args.dim, args.hidden or None, seed=args.seed)
        x = x_all[rows]
        t0 = time.perf_counter()
        outcome = fit_embedding(head, lambda r, x=x: x[r], y, settings, fit, progress=False)
        seconds = time.perf_counter() - t0
        load = os.getloadavg()[0]
        table.append(
            {
                "features": f"head {args.dim}-d (hidden {args.hidden or '-'})",
                "loss": loss,
                **score(embed(head, x_all), labels, roles, embed(head, photos)),
                "train s": seconds,
                "load avg": load,
            }
        )
        print(pd.DataFrame(table[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        del outcome
    print()
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = max(r["scan mAP cosine"] for r in table[1:]) if len(table) > 1 else float("nan")
    print(
        f"\ngoal: scan mAP@10 (cosine) >= {GOAL_MAP_COSINE} with a frozen backbone: best {best:.3f} "
        f"({'met' if best >= GOAL_MAP_COSINE else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
