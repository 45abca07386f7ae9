"""The retrieval head (issue 22): losses against a NumPy reference, the class-balanced sampler, training on the real
default collection (must beat the frozen features), the saved extractor through ``extract --weights``, the CLI.
"""

from __future__ import annotations

import numpy as np
import pytest

from cbir.features.finetune import (
    FinetuneError,
    FitSettings,
    LossSettings,
    class_balanced_batches,
    index_split,
    proxy_anchor_loss,
    softmax_ce_loss,
    supcon_loss,
)


def _batch(seed: int = 0, n: int = 12, d: int = 5, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    return z, labels


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def supcon_reference(z: np.ndarray, labels: np.ndarray, tau: float) -> float:
    """Khosla et al.'s L_out, written with loops over anchors and positives."""
    z = _unit(z.astype(np.float64))
    per_anchor = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(np.exp(z[i] @ z[a] / tau) for a in others)
        per_anchor.append(-np.mean([np.log(np.exp(z[i] @ z[p] / tau) / denominator) for p in positives]))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def proxy_anchor_reference(z: np.ndarray, labels: np.ndarray, proxies: np.ndarray, alpha: float, delta: float) -> float:
    """Kim et al.'s proxy-anchor loss, written with loops over proxies."""
    z, p = _unit(z.astype(np.float64)), _unit(proxies.astype(np.float64))
    cos = z @ p.T
    present = [c for c in range(len(p)) if (labels == c).any()]
    pos = sum(np.log1p(np.exp(-alpha * (cos[labels == c, c] - delta)).sum()) for c in present) / len(present)
    neg = sum(np.log1p(np.exp(alpha * (cos[labels != c, c] + delta)).sum()) for c in range(len(p))) / len(p)
    return float(pos + neg)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supcon_matches_numpy_reference(tau: float) -> None:
    for seed in range(3):
        z, labels = _batch(seed)
        got = float(supcon_loss(z, labels, temperature=tau))
        assert got == pytest.approx(supcon_reference(z, labels, tau), rel=1e-4)


def test_supcon_without_positives_is_zero_and_rewards_clustering() -> None:
    z = np.eye(4, dtype=np.float32)
    assert float(supcon_loss(z, np.arange(4))) == 0.0
    labels = np.array([0, 0, 1, 1])
    clustered = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=np.float32)
    mixed = np.array([[1, 0], [0, 1], [1, 0.01], [0.01, 1]], dtype=np.float32)
    assert float(supcon_loss(clustered, labels)) < float(supcon_loss(mixed, labels))


@pytest.mark.parametrize(("alpha", "margin"), [(32.0, 0.1), (4.0, 0.0)])
def test_proxy_anchor_matches_numpy_reference(alpha: float, margin: float) -> None:
    for seed in range(3):
        z, labels = _batch(seed, n_classes=6)  # some proxies have no example in the batch
        proxies = np.random.default_rng(seed + 10).normal(size=(6, z.shape[1])).astype(np.float32)
        got = float(proxy_anchor_loss(z, labels, proxies, alpha=alpha, margin=margin))
        assert got == pytest.approx(proxy_anchor_reference(z, labels, proxies, alpha, margin), rel=1e-4)


def test_softmax_ce_matches_numpy_reference() -> None:
    logits, labels = _batch(1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_p[np.arange(len(labels)), labels % logits.shape[1]].mean()
    assert float(softmax_ce_loss(logits, labels % logits.shape[1])) == pytest.approx(expected, rel=1e-5)


def test_loss_settings_are_validated() -> None:
    with pytest.raises(FinetuneError, match="loss must be one of"):
        LossSettings(loss="triplet")
    with pytest.raises(FinetuneError, match="temperature"):
        LossSettings(temperature=0.0)


def test_class_balanced_batches() -> None:
    labels = np.repeat(np.arange(10), [3, 5, 8, 20, 40, 4, 6, 9, 2, 30])
    labels = np.concatenate([labels, [-1, -1]])  # unlabelled rows are never drawn
    batches = class_balanced_batches(labels, classes_per_batch=4, per_class=5, epoch=0, seed=0)
    assert len(batches) == -(-(len(labels) - 2) // 20)
    for batch in batches:
        assert len(batch) == 20
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and (counts == 5).all() and (classes >= 0).all()
        for c in classes:  # a class of at least 5 rows gives 5 distinct rows
            if (labels == c).sum() >= 5:
                assert len(np.unique(batch[labels[batch] == c])) == 5
    again = class_balanced_batches(labels, 4, 5, epoch=0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = class_balanced_batches(labels, 4, 5, epoch=1, seed=0)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))
    # more classes per batch than there are classes: all of them
    assert len(np.unique(labels[class_balanced_batches(labels, 50, 2, epoch=0)[0]])) == 10
    # the walk covers a class's rows before repeating one
    big = np.flatnonzero(labels == 4)
    drawn = np.concatenate([b[labels[b] == 4] for b in class_balanced_batches(labels, 10, 5, 0, n_batches=8)])
    assert len(np.unique(drawn)) == len(big)
    with pytest.raises(ValueError):
        class_balanced_batches(labels, 0, 5, epoch=0)


def test_index_split_never_trains_on_queries_or_distractors() -> None:
    labels = np.array(["a", "b", "a", None, "b", "a", "c"], dtype=object)
    roles = np.array(["index", "index", "query", "distractor", "index", "index", "query"], dtype=object)
    rows, y, classes = index_split(labels, roles)
    assert rows.tolist() == [0, 1, 4, 5] and classes == ["a", "b"] and y.tolist() == [0, 1, 1, 0]
    with pytest.raises(FinetuneError, match="at least 2"):
        index_split(labels[:1], roles[:1])


def test_fit_settings_defaults_are_data_independent() -> None:
    fit = FitSettings()
    assert fit.classes_per_batch * fit.per_class >= 128 and fit.per_class >= 4
