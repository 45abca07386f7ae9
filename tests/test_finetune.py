"""Fine-tuning (paper Section 5): the report, the frozen/trainable split, cached training, early stopping, resume.

Kept light for a 2-core CPU: random weights, EfficientNet-Lite0 at 224×224 (0.4 GFLOP per image) on a generated
collection of a few images, ResNets only at 32×32 and only for the graph split, a tiny dense model for the loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.features.backbones import available_backbones, get_backbone
from cbir.features.finetune import (
    FIRST_TRAINABLE,
    Augmentation,
    FinetuneConfig,
    FinetuneError,
    LoopSettings,
    TrainingState,
    augment_batch,
    boundary_tensor,
    build_backbone,
    build_classifier,
    classification_report,
    compile_model,
    cross_entropy,
    epoch_batches,
    finetune,
    load_history,
    set_trainable,
    split_model,
    train_loop,
    training_figure,
)

COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def _color_collection(root: Path, n_train: int = 4, n_val: int = 2, swap_val: bool = False) -> Path:
    """training_set/ + validation_set/ with one folder per colour; noisy images of that dominant colour.

    ``swap_val``: validation folders hold another colour's images (the validation loss then worsens with training).
    """
    rng = np.random.default_rng(0)
    names = list(COLORS)
    for split, count in (("training_set", n_train), ("validation_set", n_val)):
        for k, name in enumerate(names):
            source = names[(k + 1) % len(names)] if swap_val and split == "validation_set" else name
            for i in range(count):
                base = np.array(COLORS[source], dtype=np.float64)
                pixels = np.clip(base + rng.normal(0, 40, (48 + 4 * i, 64, 3)), 0, 255).astype(np.uint8)
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


# --------------------------------------------------------------------------------------------------------------
# classification report
# --------------------------------------------------------------------------------------------------------------


def test_classification_report_matches_hand_computed() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1]
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    # by hand: class a: tp 2, predicted 3, support 3; b: tp 1, predicted 3, support 2; c: tp 3, predicted 4, support 5
    precision = np.array([2 / 3, 1 / 3, 3 / 4])
    recall = np.array([2 / 3, 1 / 2, 3 / 5])
    f1 = 2 * precision * recall / (precision + recall)
    assert report.index.tolist() == ["a", "b", "c", "accuracy", "macro avg", "weighted avg"]
    assert list(report.columns) == ["precision", "recall", "f1-score", "support"]
    np.testing.assert_allclose(report.loc[["a", "b", "c"], "precision"], precision)
    np.testing.assert_allclose(report.loc[["a", "b", "c"], "recall"], recall)
    np.testing.assert_allclose(report.loc[["a", "b", "c"], "f1-score"], f1)
    assert report["support"].tolist() == [3, 2, 5, 10, 10, 10]
    assert report.loc["accuracy", "f1-score"] == pytest.approx(0.6)
    assert np.isnan(report.loc["accuracy", "precision"])
    assert report.loc["macro avg", "recall"] == pytest.approx(recall.mean())
    weights = np.array([3, 2, 5]) / 10
    assert report.loc["weighted avg", "f1-score"] == pytest.approx(f1 @ weights)
    assert report.loc["weighted avg", "recall"] == pytest.approx(0.6)  # weighted recall == accuracy


def test_classification_report_zero_division_and_errors() -> None:
    report = classification_report([0, 0, 1], [0, 0, 0], ["x", "y", "z"])  # y never predicted, z never present
    assert report.loc["y", ["precision", "recall", "f1-score"]].tolist() == [0.0, 0.0, 0.0]
    assert report.loc["z", "support"] == 0
    assert report.loc["x", "precision"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        classification_report([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError):
        classification_report([0, 3], [0, 1], ["a", "b"])


def test_cross_entropy_and_figure() -> None:
    proba = np.array([[0.5, 0.5], [0.9, 0.1], [0.0, 1.0]])
    assert cross_entropy(proba, np.array([0, 0, 0])) == pytest.approx(-(np.log(0.5) + np.log(0.9) + np.log(1e-7)) / 3)
    history = pd.DataFrame(
        {
            "epoch": [1, 2],
            "loss": [1.0, 0.8],
            "accuracy": [0.4, 0.6],
            "val_loss": [1.1, 0.9],
            "val_accuracy": [0.3, 0.5],
            "seconds": [1.0, 1.0],
        }
    )
    fig = training_figure(history)
    assert {t.name for t in fig.data} == {
        "Training accuracy",
        "Validation accuracy",
        "Training loss",
        "Validation loss",
    }


# --------------------------------------------------------------------------------------------------------------
# the frozen / trainable split
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "side", "boundary_shape", "frozen_before"),
    [
        ("resnet50", 64, (4, 4, 1024), "conv4_block6_out"),
        ("resnet50v2", 64, (2, 2, 1024), "conv5_block1_preact_bn"),
        ("efficientnet_lite0", 64, (2, 2, 192), "block14_add"),
    ],
)
def test_split_gives_same_predictions(
    backbone: str, side: int, boundary_shape: tuple[int, ...], frozen_before: str
) -> None:
    import keras

    model, _ = build_backbone(backbone, None, input_size=(side, side))
    classifier = build_classifier(model, 4)
    frozen, tail = split_model(classifier, backbone)
    set_trainable(classifier, tail)
    assert tuple(frozen.output.shape[1:]) == boundary_shape
    assert classifier.get_layer(FIRST_TRAINABLE[backbone]).trainable
    assert not classifier.get_layer(frozen_before).trainable  # v2: the preact BN stays frozen, as in the paper
    assert classifier.get_layer("ft_softmax").trainable
    names = {layer.name for layer in tail.layers}
    assert FIRST_TRAINABLE[backbone] in names and frozen_before not in names
    x = get_backbone(backbone).preprocess(np.random.default_rng(1).uniform(0, 255, (3, side, side, 3)))
    boundary = np.asarray(frozen.predict_on_batch(x))
    whole = np.asarray(classifier.predict_on_batch(x))
    np.testing.assert_allclose(np.asarray(tail.predict_on_batch(boundary)), whole, atol=1e-5)
    assert whole.shape == (3, 4)
    # the pooled features too, relative to their scale (a random EfficientNet-Lite0 gives ~1e-12 features)
    pool = keras.Model(classifier.input, model.output).predict_on_batch(x)
    pool_tail = keras.Model(boundary_tensor(classifier, backbone), model.output).predict_on_batch(boundary)
    np.testing.assert_allclose(pool_tail, pool, rtol=1e-4, atol=1e-4 * np.abs(pool).max())


# --------------------------------------------------------------------------------------------------------------
# the training loop: early stopping, resume, time budget (a tiny dense model, milliseconds per epoch)
# --------------------------------------------------------------------------------------------------------------


def _blobs(flip_val: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 32)
    x = rng.normal(0, 1, (64, 8)).astype(np.float32) + y[:, None] * 2.0
    x_val = rng.normal(0, 1, (20, 8)).astype(np.float32) + np.repeat([0, 1], 10)[:, None] * 2.0
    y_val = np.repeat([1, 0], 10) if flip_val else np.repeat([0, 1], 10)
    return x, y, x_val, y_val


def _tiny_model(lr: float):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(8)(inputs)))
    compile_model(model, lr)
    return model


def _loop(model, run_dir: Path, flip_val: bool, batch_size: int = 16, **settings: object):
    x, y, x_val, y_val = _blobs(flip_val)
    return train_loop(
        model,
        lambda rows, epoch: (x[rows], y[rows]),
        len(x),
        lambda: model.predict_on_batch(x_val),
        y_val,
        run_dir,
        {"test": 1},
        LoopSettings(batch_size=batch_size, **settings),
        verbose=False,
    )


def _record(epoch: int, val_loss: float) -> dict:
    return {
        "epoch": epoch,
        "loss": 1.0 / epoch,
        "accuracy": 0.5,
        "val_loss": val_loss,
        "val_accuracy": 0.25,
        "seconds": 0.5,
    }


def test_training_state_round_trip(tmp_path: Path) -> None:
    assert TrainingState.load(tmp_path) is None  # no checkpoint yet
    state = TrainingState(identity={"lr": 1e-3, "classes": ["a", "b"]})
    assert state.save(tmp_path) == tmp_path / "state.json"
    assert TrainingState.load(tmp_path) == state
    for epoch, val_loss in enumerate([0.9, 0.7, 0.8], start=1):
        state.end_epoch(_record(epoch, val_loss), patience=5)
    state.save(tmp_path)
    loaded = TrainingState.load(tmp_path)
    assert loaded == state and loaded is not state
    # the file keeps the version-1 layout, so checkpoints written before the typed state stay readable
    data = json.loads((tmp_path / "state.json").read_text())
    assert list(data) == [
        "version",
        "identity",
        "epoch",
        "history",
        "best_epoch",
        "best_val_loss",
        "wait",
        "checkpoint",
        "best_weights",
        "stopped",
    ]
    assert (data["version"], data["epoch"], data["best_epoch"], data["wait"]) == (1, 3, 2, 1)
    assert (data["checkpoint"], data["best_weights"]) == ("checkpoint-e0003.keras", "best-e0002.weights.h5")
    data["version"] = 0  # another version is not misread: the run starts over
    (tmp_path / "state.json").write_text(json.dumps(data))
    assert TrainingState.load(tmp_path) is None


def test_training_state_early_stopping_bookkeeping() -> None:
    state = TrainingState(identity={})
    improved = [state.end_epoch(_record(e, v), patience=2) for e, v in enumerate([1.0, 0.5, 0.6, 0.4, 0.45], 1)]
    assert improved == [True, True, False, True, False]
    assert (state.epoch, state.best_epoch, state.best_val_loss, state.epochs_since_best) == (5, 4, 0.4, 1)
    assert state.stopped is None
    assert state.files() == {"checkpoint-e0005.keras", "best-e0004.weights.h5"}
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5]
    assert not state.end_epoch(_record(6, 0.4), patience=2)  # equal is no improvement
    assert (state.stopped, state.epochs_since_best, state.best_epoch) == ("early_stopping", 2, 4)


def test_epoch_metrics_are_means_over_the_epoch(tmp_path: Path) -> None:
    model = _tiny_model(0.0)  # no update and no dropout: training-mode loss == inference loss of the whole set
    x, y, _, _ = _blobs(False)
    outcome = _loop(model, tmp_path / "run", flip_val=False, max_epochs=1, batch_size=24)
    proba = np.asarray(model.predict_on_batch(x))
    assert outcome.history["loss"].iloc[0] == pytest.approx(cross_entropy(proba, y), rel=1e-5)
    assert outcome.history["accuracy"].iloc[0] == pytest.approx(float((proba.argmax(axis=1) == y).mean()))


def test_early_stopping_restores_best_epoch(tmp_path: Path) -> None:
    model = _tiny_model(0.05)
    # validation labels are the flipped training labels: the better the fit, the worse the validation loss
    outcome = _loop(model, tmp_path / "run", flip_val=True, max_epochs=30, patience=3)
    history = outcome.history
    assert outcome.stopped == "early_stopping"
    best = int(history["val_loss"].idxmin()) + 1
    assert outcome.best_epoch == best
    assert outcome.epochs_done == best + 3 < 30
    assert history["val_loss"].iloc[-1] > history["val_loss"].min()
    _, _, x_val, y_val = _blobs(True)
    restored = cross_entropy(np.asarray(model.predict_on_batch(x_val)), y_val)
    assert restored == pytest.approx(history["val_loss"].min(), rel=1e-5)
    # a rerun of an early-stopped run trains no more
    again = _loop(_tiny_model(0.05), tmp_path / "run", flip_val=True, max_epochs=30, patience=3)
    assert again.epochs_now == 0 and again.epochs_done == outcome.epochs_done


def test_resume_continues_from_checkpoint(tmp_path: Path) -> None:
    first_model = _tiny_model(0.01)
    first = _loop(first_model, tmp_path / "run", flip_val=False, max_epochs=2)
    assert (first.epochs_done, first.stopped) == (2, "max_epochs")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == sorted(
        ["state.json", state["checkpoint"], state["best_weights"]]
    )
    resumed_model = _tiny_model(0.01)
    resumed = _loop(resumed_model, tmp_path / "run", flip_val=False, max_epochs=4)
    assert (resumed.epochs_done, resumed.epochs_now) == (4, 2)
    pd.testing.assert_frame_equal(
        resumed.history.iloc[:2].drop(columns="seconds"), first.history.drop(columns="seconds")
    )
    assert int(resumed_model.optimizer.iterations) == 4 * 4  # 64 rows / 16 per batch, 4 epochs in all
    # an uninterrupted run of 4 epochs gives the same history (batches are a function of the epoch)
    straight = _loop(_tiny_model(0.01), tmp_path / "straight", flip_val=False, max_epochs=4)
    np.testing.assert_allclose(straight.history["loss"], resumed.history["loss"], rtol=1e-4)
    assert load_history(tmp_path / "run")["epoch"].tolist() == [1, 2, 3, 4]


def test_other_configuration_and_time_budget(tmp_path: Path) -> None:
    x, y, x_val, y_val = _blobs(False)
    model = _tiny_model(0.01)
    _loop(model, tmp_path / "run", flip_val=False, max_epochs=1)

    def rerun(identity: dict, restart: bool = False, **settings: object):
        return train_loop(
            model,
            lambda rows, epoch: (x[rows], y[rows]),
            len(x),
            lambda: model.predict_on_batch(x_val),
            y_val,
            tmp_path / "run",
            identity,
            LoopSettings(batch_size=16, **settings),
            restart=restart,
            verbose=False,
        )

    with pytest.raises(FinetuneError, match="another configuration"):
        rerun({"test": 2}, max_epochs=3)
    assert rerun({"test": 2}, restart=True, max_epochs=1).epochs_done == 1
    with pytest.raises(FinetuneError, match="no epoch finished"):
        rerun({"test": 3}, restart=True, max_epochs=3, max_minutes=1e-9)
    # with a finished epoch on disk, a budget too small for another one stops cleanly
    rerun({"test": 4}, restart=True, max_epochs=1)
    outcome = rerun({"test": 4}, max_epochs=5, max_minutes=1e-9)
    assert (outcome.stopped, outcome.epochs_done) == ("time_budget", 1)


def test_batches_and_augmentation_are_deterministic() -> None:
    batches = epoch_batches(10, 4, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(10, 4, epoch=0), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(10, 4, epoch=1), strict=True))
    stream = np.concatenate([np.concatenate(epoch_batches(10, 4, e, steps_per_epoch=1)) for e in range(5)])
    assert len(stream) == 20 and set(stream[:12].tolist()) == set(range(10))  # positions 0-9 are one full pass
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    a = augment_batch(images, np.random.default_rng(5))
    b = augment_batch(images, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == images.shape and np.array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 255
    plain = augment_batch(images, np.random.default_rng(5), Augmentation(flip=False, max_shift=0, brightness=0))
    assert np.array_equal(plain, images.astype(np.float32))


# --------------------------------------------------------------------------------------------------------------
# end to end on images (EfficientNet-Lite0, random weights)
# --------------------------------------------------------------------------------------------------------------


def _train_loss(classifier, x: np.ndarray, y: np.ndarray) -> float:
    return cross_entropy(np.asarray(classifier.predict_on_batch(x)), y)


@pytest.mark.slow
def test_model1_trains_from_cache_and_saves_feature_models(tmp_path: Path) -> None:
    """ResNet50V2 with random weights (random EfficientNet-Lite0 features vanish, ~1e-12, so they cannot learn)."""
    import keras

    from cbir.features.extractor import FeatureExtractor

    backbone = "resnet50v2"
    root = _color_collection(tmp_path / "colors")
    # eager steps: building the train-step graph would cost more than these few steps (the loop tests use graphs)
    cfg = FinetuneConfig(
        backbone=backbone, model=1, weights=None, lr=1e-3, batch_size=6, max_epochs=2, run_eagerly=True
    )
    result = finetune(root, cfg, verbose=False)
    assert result.classes == ["blue", "green", "red"] and len(result.history) == 2
    assert result.report.loc["accuracy", "support"] == 6
    assert set(result.feature_models) == {"pool", "dense256"}
    for name in ("history.json", "report.csv", "metrics.json", "classifier.keras", "state.json"):
        assert (result.run_dir / name).is_file()
    assert result.run_dir.name == "resnet50v2-model1"

    cache_dir = result.run_dir.parent / "cache"
    spec = get_backbone(backbone)
    x_all = spec.preprocess(np.asarray(np.load(next(cache_dir.glob("images-224x224-*.npy"))), dtype=np.float32))
    acts = np.load(next(cache_dir.glob("acts-*.npy")), mmap_mode="r")
    assert acts.dtype == np.float16 and acts.shape == (18, 7, 7, 1024)
    # the cache follows catalog order: training_set/{blue,green,red}/*, then validation_set/..., as sorted paths
    labels = {"blue": 0, "green": 1, "red": 2}
    y_all = np.array([labels[p.parent.name] for p in sorted(root.rglob("*.png"), key=str)])
    train, val = slice(0, 12), slice(12, 18)

    # cached-activation training == un-cached model on the same weights (float16 cache: small tolerance)
    trained = keras.models.load_model(result.classifier_path, compile=False)
    uncached = np.asarray(trained.predict_on_batch(x_all[val]))
    assert cross_entropy(uncached, y_all[val]) == pytest.approx(result.test_loss, abs=2e-3)
    frozen, tail = split_model(trained, backbone)
    exact = np.asarray(frozen.predict_on_batch(x_all[val]))
    np.testing.assert_allclose(acts[val], exact, rtol=2e-3, atol=1e-3 * np.abs(exact).max())
    cached = np.asarray(tail.predict_on_batch(np.asarray(acts[val], dtype=np.float32)))
    np.testing.assert_allclose(cached, uncached, atol=2e-3)
    assert np.array_equal(cached.argmax(axis=1), uncached.argmax(axis=1))

    # the training loss (inference mode, so no dropout noise) went down from the untrained weights; the tails are
    # evaluated on the cache, which the lines above showed equals the whole model
    _, initial_tail = split_model(build_classifier(build_backbone(backbone, None)[0], 3), backbone)
    x_train = np.asarray(acts[train], dtype=np.float32)
    before, after = _train_loss(initial_tail, x_train, y_all[train]), _train_loss(tail, x_train, y_all[train])
    assert after < before - 0.05, (before, after)

    # the feature models plug into the feature extractor like any weights
    images = [Image.open(p).convert("RGB") for p in sorted(root.rglob("*.png"), key=str)[:2]]
    pool = FeatureExtractor(backbone, weights=str(result.feature_models["pool"])).transform(images)
    dense = FeatureExtractor(backbone, weights=str(result.feature_models["dense256"])).transform(images)
    assert pool.shape == (2, 2048) and dense.shape == (2, 256)
    reference = keras.Model(trained.input, trained.get_layer("ft_dense_256").output)
    np.testing.assert_allclose(dense, np.asarray(reference.predict_on_batch(x_all[:2])), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_model2_resumes_with_augmentation(tmp_path: Path) -> None:
    root = _color_collection(tmp_path / "colors", n_train=3, n_val=1)
    cfg = FinetuneConfig(
        backbone="efficientnet_lite0",
        model=2,
        weights=None,
        lr=1e-4,
        batch_size=9,
        max_epochs=1,
        input_size=(64, 64),
        run_eagerly=True,
    )
    first = finetune(root, cfg, verbose=False)
    assert (first.epochs_done, first.stopped) == (1, "max_epochs")
    assert first.metrics["first_trainable"] is None  # everything trains
    cfg.max_epochs = 2
    second = finetune(root, cfg, verbose=False)
    assert (second.epochs_done, len(second.history)) == (2, 2)
    pd.testing.assert_frame_equal(second.history.iloc[:1], first.history)
    assert (second.run_dir / "model2-pool.keras").is_file() and (second.run_dir / "model2-dense256.keras").is_file()
    cfg.lr = 1e-3
    with pytest.raises(FinetuneError, match="lr"):  # refused before anything is built
        finetune(root, cfg, verbose=False)


def test_no_validation_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "c"
    for name in ("a", "b"):
        (root / "training_set" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), COLORS["red"]).save(root / "training_set" / name / "x.png")
    with pytest.raises(FinetuneError, match="validation"):
        finetune(root, FinetuneConfig(backbone="efficientnet_lite0", weights=None), verbose=False)


@pytest.mark.slow
@pytest.mark.integration
def test_real_openclipart_model1(openclipart_small: Path) -> None:
    """Real images, real ImageNet weights: a few epochs of Model 1 lower the training loss."""
    import keras

    if not available_backbones().get("efficientnet_lite0"):
        pytest.skip("EfficientNet-Lite0 ImageNet weights not installed")
    cfg = FinetuneConfig(
        backbone="efficientnet_lite0", model=1, weights="imagenet", lr=1e-3, batch_size=32, max_epochs=4
    )
    result = finetune(openclipart_small, cfg, verbose=False)
    cache_dir = result.run_dir.parent / "cache"
    acts = np.load(next(cache_dir.glob("acts-*.npy")), mmap_mode="r")
    rows = json.loads((result.run_dir / "metrics.json").read_text())
    assert rows["n_train"] > 0 and len(result.classes) >= 5
    trained = keras.models.load_model(result.classifier_path, compile=False)
    _, tail = split_model(trained, "efficientnet_lite0")
    backbone0, _ = build_backbone("efficientnet_lite0", "imagenet")
    _, tail0 = split_model(build_classifier(backbone0, len(result.classes)), "efficientnet_lite0")
    from cbir.data.collection import scan_collection
    from cbir.features.finetune import labelled_rows

    table = labelled_rows(scan_collection(openclipart_small))
    train = (table["role"] == "index").to_numpy()
    y = np.array([result.classes.index(c) for c in table.loc[train, "label"]])
    x = np.asarray(acts[train], dtype=np.float32)
    assert _train_loss(tail, x, y) < _train_loss(tail0, x, y)
    assert result.test_accuracy > 1.0 / len(result.classes)  # better than chance on unseen images


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------


def test_cli_parses_and_prints_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    import cbir.features.finetune
    from cbir.cli.finetune import add_finetune_parser, config_from_args
    from cbir.features.finetune import FinetuneResult

    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "finetune",
            "--backbone",
            "resnet50v2",
            "--model",
            "2",
            "--weights",
            "none",
            "--lr",
            "1e-4",
            "--max-epochs",
            "5",
            "--max-minutes",
            "2.5",
            "--batch-size",
            "8",
            "--collection",
            str(tmp_path),
            "--restart",
            "--quiet",
        ]
    )
    cfg = config_from_args(args)
    assert (
        cfg.backbone,
        cfg.model,
        cfg.weights,
        cfg.lr,
        cfg.max_epochs,
        cfg.max_minutes,
        cfg.batch_size,
        cfg.patience,
    ) == ("resnet50v2", 2, None, 1e-4, 5, 2.5, 8, 10)
    assert config_from_args(parser.parse_args(["finetune"])).lr == 1e-6  # the paper's learning rate by default
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--model", "3"])

    seen = {}

    def fake(collection: Path, cfg: FinetuneConfig, restart: bool, verbose: bool, progress: bool) -> FinetuneResult:
        seen.update(collection=collection, restart=restart, progress=progress)
        report = classification_report([0, 1, 1], [0, 1, 0], ["cats", "dogs"])
        return FinetuneResult(
            run_dir=tmp_path,
            history=pd.DataFrame(),
            report=report,
            test_loss=0.5,
            test_accuracy=2 / 3,
            classes=["cats", "dogs"],
            best_epoch=3,
            epochs_done=5,
            stopped="max_epochs",
            seconds_per_epoch=1.5,
            classifier_path=tmp_path / "c.keras",
            feature_models={"pool": tmp_path / "p.keras", "dense256": tmp_path / "d.keras"},
            metrics={},
        )

    monkeypatch.setattr(cbir.features.finetune, "finetune", fake)
    assert args.func(args) == 0
    assert seen == {"collection": tmp_path, "restart": True, "progress": False}
    out = capsys.readouterr().out
    assert "dogs" in out and "weighted avg" in out and "acc_test" in out and "0.67" in out
    assert f"--weights {tmp_path / 'p.keras'}" in out
