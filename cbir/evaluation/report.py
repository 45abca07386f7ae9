"""The results table of the README: every built feature set × (exact scan, best LSH under a budget).

For each complete feature set of a collection: the exact scan's mAP@k with the euclidean distance and with the
cosine similarity (with and without distractors, as in the paper's Section 4 tables), then an LSH sweep
(euclidean) over :data:`REPORT_GRID` whose best configuration visiting at most ``budget_fraction`` of the indexed
objects per query is reported with its mAP, its recall@k against the exact scan and its visited objects.
``python -m cbir report`` prints it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
from PIL import Image

from cbir.core.names import METRICS
from cbir.evaluation.comparison import hubness_analysis
from cbir.evaluation.evaluate import evaluate_split, split_collection
from cbir.evaluation.sweep import recommend, sweep_split
from cbir.features.query_model import extractor_spec, make_extractor
from cbir.features.sources import FeatureSet
from cbir.features.workspace import FeatureSetNotFoundError, list_feature_sets, load_features
from cbir.indexes.scan import SequentialScan
from cbir.indexes.widths import default_width, width_grid

REPORT_GRID = {"n_tables": [2, 4, 6, 8, 10], "n_projections": [2, 4, 6, 8]}
WIDTH_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)  # × the data-driven default width
REPORT_PROBES = (0, 4)
BUDGET_FRACTION = 0.10


def training_metrics(weights_path: str | None) -> dict[str, object]:
    """How the model a feature set came from was trained: ``training`` (none, the paper's classifier, or a
    retrieval head and its loss), ``train s`` (training seconds: a retrieval run's fit, a classifier's epochs ×
    seconds per epoch) and a classifier's validation ``accuracy`` / ``loss`` (NaN for the others)."""
    nan = float("nan")
    metrics_file = Path(weights_path).parent / "metrics.json" if weights_path else None
    if metrics_file is None or not metrics_file.is_file():
        return {"training": "-", "train s": nan, "accuracy": nan, "loss": nan}
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("kind") == "retrieval":
        part = "last stage + head" if metrics["unfrozen"] else "head"
        return {
            "training": f"{metrics['loss']} {part} (index split)",
            "train s": float(metrics["train_seconds"]),
            "accuracy": nan,
            "loss": nan,
        }
    return {
        "training": f"paper classifier, model {metrics['model']}",
        "train s": float(metrics["seconds_per_epoch"]) * int(metrics["epochs_done"]),
        "accuracy": float(metrics["test_accuracy"]),
        "loss": float(metrics["test_loss"]),
    }


def feature_set_row(
    feature_set: FeatureSet,
    k: int = 10,
    budget_fraction: float = BUDGET_FRACTION,
    progress: Callable[[int, int], object] | None = None,
    photos: Mapping[str, Image.Image] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """One results row for ``feature_set`` and the LSH sweep it came from. With ``photos`` (out-of-domain
    queries), the row also gives the hubness of the exact euclidean scan: ``scan hub share`` (share of the
    validation queries' top-k slots held by the 1 % most frequent answers) and ``photos on hubs`` (share of the
    photos' answers that are among those hubs)."""
    x, labels, roles = feature_set.features, feature_set.labels, feature_set.roles
    row: dict = {
        "backbone": feature_set.meta["backbone"],
        "weights": feature_set.meta["weights_id"],
        **training_metrics(feature_set.meta.get("weights_path")),
    }
    splits = {distractors: split_collection(x, labels, roles, distractors) for distractors in (True, False)}
    for distractors, split in splits.items():
        suffix = "" if distractors else " (no distractors)"
        for metric in METRICS:
            result = evaluate_split(SequentialScan(metric), split, k=k)
            row[f"scan mAP {metric}{suffix}"] = result.map
            if distractors:
                row[f"scan mean {result.score_name}"] = result.mean_score
    if photos is not None:
        extractor = make_extractor(extractor_spec(feature_set.meta), warm_up=False)
        hubness = hubness_analysis(feature_set, extractor, photos, k=k).summary
        row.update({"scan hub share": hubness["hub_share"], "photos on hubs": hubness["ood_hub_share"]})
    split = splits[True]  # its euclidean scan answers are the recall reference of the sweep
    grid = {**REPORT_GRID, "bucket_width": width_grid(default_width(split.index_vectors), WIDTH_MULTIPLIERS)}
    table = sweep_split(split, grid, metric="euclidean", k=k, probes=REPORT_PROBES, progress=progress)
    budget = budget_fraction * split.n_indexed
    best = recommend(table, budget)
    row.update(
        {
            "indexed": split.n_indexed,
            "queries": split.n_queries,
            f"LSH best mAP (≤{budget_fraction:.0%} visited)": best["map"],
            "LSH recall": best["recall"],
            "LSH visited": best["mean_visited"],
            "LSH visited %": 100 * best["visited_fraction"],
            "LSH g,h,w,probes": (
                f"{int(best['n_tables'])},{int(best['n_projections'])},{best['bucket_width']:.3g},{int(best['probes'])}"
            ),
            "LSH / scan mAP": best["map"] / row["scan mAP euclidean"],
        }
    )
    return row, table


def to_markdown(table: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub markdown table (pandas' own ``to_markdown`` needs the extra package ``tabulate``)."""

    def cell(value: object) -> str:
        return float_format.format(value) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def report(
    collection: str | os.PathLike[str] | None = None,
    k: int = 10,
    budget_fraction: float = BUDGET_FRACTION,
    photos: Mapping[str, Image.Image] | None = None,
) -> pd.DataFrame:
    """The results table for every complete feature set of ``collection`` (default collection when ``None``);
    ``photos``: out-of-domain queries for the hubness columns (see :func:`feature_set_row`)."""
    sets = list_feature_sets(collection)
    sets = sets[sets["status"] == "complete"].drop_duplicates(["backbone", "weights"])
    if sets.empty:
        raise FeatureSetNotFoundError("no feature sets yet: run `python -m cbir extract` first")
    rows = [
        feature_set_row(load_features(path), k=k, budget_fraction=budget_fraction, photos=photos)[0]
        for path in sets["path"]
    ]
    return pd.DataFrame(rows)
