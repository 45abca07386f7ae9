"""Evaluation of a fine-tuned classifier: classification report, cross-entropy and the training-curve figure.

Plain NumPy / pandas (plotly imported lazily), so the comparison page and the tests read them without Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

_CE_EPSILON = 1e-7  # Keras clips probabilities to [eps, 1 - eps] in its cross-entropy; we match it


def classification_report(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-class precision, recall, f1-score and support, plus accuracy, macro and weighted averages.

    ``y_true``, ``y_pred``: 1-D integer class indices in ``[0, n_classes)``. ``class_names``: one name per index
    (default ``"0"``, ``"1"``, ...). Returns a DataFrame indexed by the class names then ``accuracy``, ``macro avg``,
    ``weighted avg``, columns ``precision``, ``recall``, ``f1-score`` (float) and ``support`` (int) — the paper's
    table. Undefined ratios (no prediction / no sample of a class) count as 0; the ``accuracy`` row holds the
    accuracy in ``f1-score`` (NaN precision/recall) and the total support, as scikit-learn prints it.
    """
    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels, y_pred {pred.size}")
    n_classes = (
        len(class_names) if class_names is not None else int(max(true.max(initial=-1), pred.max(initial=-1)) + 1)
    )
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n_classes)]
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    total = int(support.sum())
    accuracy = float(tp.sum() / total) if total else 0.0
    weights = support / total if total else np.zeros(n_classes)
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1-score": f1, "support": support},
        index=pd.Index(names, name="class"),
    )
    summary = pd.DataFrame(
        {
            "precision": [np.nan, precision.mean(), float(precision @ weights)],
            "recall": [np.nan, recall.mean(), float(recall @ weights)],
            "f1-score": [accuracy, f1.mean(), float(f1 @ weights)],
            "support": [total, total, total],
        },
        index=pd.Index(["accuracy", "macro avg", "weighted avg"], name="class"),
    )
    report = pd.concat([table, summary])
    report["support"] = report["support"].astype(np.int64)
    return report


def cross_entropy(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of ``proba`` (n, n_classes) float against ``labels`` (n,) int."""
    if len(labels) == 0:
        return float("nan")
    picked = np.asarray(proba, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(picked, _CE_EPSILON, 1.0 - _CE_EPSILON)).mean())


def training_figure(history: pd.DataFrame, title: str = "") -> Any:
    """Plotly figure of the training curves: accuracy (left) and loss (right), training and validation.

    ``history``: one row per epoch with columns ``epoch``, ``accuracy``, ``val_accuracy``, ``loss``, ``val_loss``
    (as returned by :func:`load_history` / :attr:`FinetuneResult.history`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Training and validation accuracy", "Training and validation loss")
    )
    styles = {"": dict(mode="lines+markers", marker=dict(size=5)), "val_": dict(mode="lines")}
    colors = {"": "#1f77b4", "val_": "#d62728"}
    for col, metric in ((1, "accuracy"), (2, "loss")):
        for prefix, label in (("", "Training"), ("val_", "Validation")):
            fig.add_trace(
                go.Scatter(
                    x=history["epoch"],
                    y=history[prefix + metric],
                    name=f"{label} {metric}",
                    line=dict(color=colors[prefix], dash="solid" if prefix else "dot"),
                    legendgroup=prefix or "train",
                    **styles[prefix],
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=2)
    fig.update_layout(title=title or None, height=380, margin=dict(l=40, r=20, t=60, b=40))
    return fig
