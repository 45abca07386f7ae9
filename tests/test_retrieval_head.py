"""The retrieval head (issue 22): losses against a NumPy reference, the class-balanced sampler, training on the real
default collection (must beat the frozen features), the saved extractor through ``extract --weights``, the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
from tests.conftest import require


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


# --------------------------------------------------------------------------------------------------------------
# the real default collection (its stored ImageNet features are the frozen head's training data)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def default_imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The default collection's ImageNet feature set, read-only through a symlink in a temp artifacts folder (so
    the trained feature sets are written there, never beside the shared ones); its catalog as a Catalog."""
    from cbir.core import config
    from cbir.data.collection import Catalog, collection_id
    from cbir.features.extractor import FeatureExtractor, feature_path, load_features

    real = config.PROJECT_ROOT / "artifacts"
    monkeypatch.setenv("CBIR_ARTIFACTS", str(real))
    root = config.default_collection()
    store = feature_path(root, "efficientnet_lite0", FeatureExtractor("efficientnet_lite0").weights_id)
    require((store / "meta.json").is_file(), f"no ImageNet features at {store} (python -m cbir extract)")
    artifacts = tmp_path / "artifacts"
    (artifacts / "features" / collection_id(root)).mkdir(parents=True)
    (artifacts / "features" / collection_id(root) / store.name).symlink_to(store.resolve(), target_is_directory=True)
    (artifacts / "weights").symlink_to((real / "weights").resolve(), target_is_directory=True)
    monkeypatch.setenv("CBIR_ARTIFACTS", str(artifacts))
    base = load_features(artifacts / "features" / collection_id(root) / store.name)
    return base, Catalog(root=root, images=base.catalog, report=base.report)


def _scan_map(features: np.ndarray, base: Any, metric: str = "cosine") -> float:
    from cbir.evaluation.evaluate import evaluate_split, split_collection
    from cbir.indexes.scan import SequentialScan

    return evaluate_split(SequentialScan(metric), split_collection(features, base.labels, base.roles)).map


@pytest.mark.integration
@pytest.mark.slow
def test_frozen_head_beats_imagenet_features_and_round_trips(
    default_imagenet: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cbir.cli.main import main
    from cbir.features.extractor import load_features
    from cbir.features.finetune import RetrievalConfig, retrieval_runs, train_retrieval

    base, catalog = default_imagenet
    cfg = RetrievalConfig(loss=LossSettings("supcon"), fit=FitSettings(epochs=8))
    result = train_retrieval(catalog, cfg, progress=False)
    trained = load_features(result.feature_set)
    assert trained.features.shape == (len(base.catalog), 256)
    assert np.allclose(np.linalg.norm(trained.features, axis=1), 1.0, atol=1e-4)
    assert trained.meta["weights_path"] == str(result.extractor)
    before, after = _scan_map(np.asarray(base.features, np.float32), base), _scan_map(trained.features, base)
    assert after > before + 0.03, (before, after)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["n_train"] == int(((base.roles == "index") & base.catalog["label"].notna().to_numpy()).sum())
    assert retrieval_runs(catalog.root)["loss"].tolist() == ["supcon"]

    # `extract --weights` with the saved extractor (the whole backbone + head) gives the rows projected from
    # the stored pooled features: on a small collection of real images
    picked = base.catalog[base.catalog["role"] == "index"].groupby("label").head(1)
    small = tmp_path / "small"
    for row in picked.itertuples():
        (small / "training_set" / row.label).mkdir(parents=True, exist_ok=True)
        (small / "training_set" / row.label / Path(row.path).name).symlink_to(row.path)
    out = tmp_path / "small-features"
    assert main(["extract", "--collection", str(small), "--weights", str(result.extractor), "--out", str(out)]) == 0
    extracted = load_features(out)
    names = extracted.catalog["path"].map(lambda p: Path(p).name).tolist()
    expected = trained.features[[base.catalog["path"].map(lambda p: Path(p).name).tolist().index(n) for n in names]]
    assert extracted.features.shape == (len(picked), 256)
    assert np.allclose(extracted.features, expected, atol=2e-3)
    capsys.readouterr()

    # the Search page's engine embeds a query with the feature set's own extractor: an indexed image finds itself
    from cbir.indexes.registry import IndexConfig
    from cbir.service.search import SearchEngine

    engine = SearchEngine(trained)
    answer = engine.query(picked["path"].iloc[0], IndexConfig("scan", "cosine"))
    assert engine.warning is None and answer.results["path"].iloc[0] == picked["path"].iloc[0]


def test_last_stage_unfrozen_trains_on_a_tiny_collection(tmp_path: Path) -> None:
    """The unfrozen path end to end at 64×64 on generated images: cached boundary activations, the last stage
    and the head trained, the extractor saved and loadable, its output unit vectors."""
    import keras
    from PIL import Image

    from cbir.features.finetune import RetrievalConfig, train_retrieval

    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
    for split, count in (("training_set", 4), ("validation_set", 2)):
        for name, rgb in colours.items():
            for i in range(count):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
                (tmp_path / "c" / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(tmp_path / "c" / split / name / f"{i}.png")
    cfg = RetrievalConfig(
        weights=None,
        dim=8,
        hidden=None,
        unfreeze_last_stage=True,
        input_size=(64, 64),
        fit=FitSettings(epochs=2, classes_per_batch=3, per_class=2),
    )
    result = train_retrieval(tmp_path / "c", cfg, progress=False)
    assert result.feature_set is None and result.head is None
    assert result.extractor.name == "retrieval-supcon-laststage.keras"
    assert len(result.outcome.history) == 2 and np.isfinite(result.outcome.history[-1]["loss"])
    assert result.metrics["n_train"] == 12 and result.metrics["unfrozen"] == "block15_expand_conv"
    model = keras.models.load_model(result.extractor, compile=False)
    out = np.asarray(model(rng.normal(0, 1, (2, 64, 64, 3)).astype(np.float32)))
    assert out.shape == (2, 8) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_cli_loss_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import argparse

    import cbir.features.finetune
    from cbir.cli.finetune import add_finetune_parser, retrieval_config_from_args
    from cbir.features.finetune import FitOutcome, RetrievalResult

    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["finetune", "--loss", "proxy_anchor", "--dim", "128", "--hidden", "0", "--margin", "0.2", "--max-epochs", "7"]
    )
    cfg = retrieval_config_from_args(args)
    assert (cfg.loss.loss, cfg.loss.margin, cfg.dim, cfg.hidden, cfg.fit.epochs) == ("proxy_anchor", 0.2, 128, None, 7)
    assert retrieval_config_from_args(parser.parse_args(["finetune", "--loss", "ce"])).fit == FitSettings()
    with pytest.raises(FinetuneError, match="--model 2"):
        retrieval_config_from_args(parser.parse_args(["finetune", "--loss", "ce", "--model", "2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--loss", "triplet"])

    def fake(collection: Path, cfg: Any, progress: bool) -> RetrievalResult:
        metrics = {"unfrozen": None, "history": [{"loss": 1.5}], "stopped": "epochs", "train_seconds": 3.0}
        metrics.update(n_train=10, classes=["a", "b"])
        outcome = FitOutcome([], 3.0, "epochs")
        return RetrievalResult(tmp_path, tmp_path / "x.keras", None, tmp_path / "fs", outcome, metrics)

    monkeypatch.setattr(cbir.features.finetune, "train_retrieval", fake)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "proxy_anchor, frozen backbone" in printed and "python -m cbir report" in printed


def test_report_says_how_each_feature_set_was_trained(tmp_path: Path) -> None:
    from cbir.evaluation.report import training_metrics

    assert training_metrics(None)["training"] == "-"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"kind": "retrieval", "loss": "supcon", "unfrozen": None, "train_seconds": 42.5})
    )
    row = training_metrics(str(run / "retrieval-supcon-frozen.keras"))
    assert row["training"] == "supcon head (index split)" and row["train s"] == 42.5 and np.isnan(row["accuracy"])
    paper = {"model": 1, "seconds_per_epoch": 36.0, "epochs_done": 28, "test_accuracy": 0.78, "test_loss": 0.83}
    (run / "metrics.json").write_text(json.dumps(paper))
    row = training_metrics(str(run / "model1-dense256.keras"))
    assert row["training"] == "paper classifier, model 1" and row["train s"] == 36.0 * 28 and row["accuracy"] == 0.78
