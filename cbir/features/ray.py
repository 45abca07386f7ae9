"""Feature extraction on Ray Data: the same batches, cache, checkpoints and store as the in-process pipeline.

:func:`ray_engine` plugs into :func:`cbir.features.extractor.extract_collection` (``engine=``), which keeps the
per-image
cache, the resume checkpoints, the rejected-file report and the writing of the feature store; Ray Data only
computes. The paths to compute are cut into chunks of ``extractor.batch_size`` exactly as
:meth:`cbir.features.extractor.FeatureExtractor.iter_batches` cuts them, one dataset row per chunk, and embedded by a
pool of
actors (``map_batches`` with a callable class, one model per actor). Where the images are decoded is the choice of
``decode``:

- ``"actor"`` (the default without GPUs): each actor reads, decodes and embeds its rows with the in-process
  pipeline itself (decode threads overlapping its model, :data:`ROWS_PER_CALL` chunks per call), on
  ``cpus_per_actor`` CPUs. No pixels go through Ray's object store; on a 2-core machine it runs as fast as the
  in-process pipeline once started (``benchmarks/extract.py``, README "Feature extraction").
- ``"tasks"`` (the default with GPUs): Ray Data decodes the chunks in CPU tasks (``map_batches`` with a function)
  and the actors, one CPU and ``gpus_per_actor`` GPUs each, only embed: the GPU never waits for a decoder.

Because each model sees the same batches as in-process, the features are the same (bitwise on the same machine and
TensorFlow build).

``python -m cbir extract --engine ray`` starts Ray locally (``ray.init(num_cpus=...)``, all cores by default);
``--address ray://host:10001`` or ``auto`` uses a running cluster, whose workers get the ``cbir`` package shipped
with the job (``py_modules``) and must have the same requirements and weights files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cbir.core.errors import CbirError
from cbir.data.images import decode_or_reason, resize_for_model
from cbir.features.extractor import Batches, FeatureExtractor


class RayExtractError(CbirError, RuntimeError):
    """Ray is missing or its cluster cannot be reached; ``str(err)`` says the fix."""


def _start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a local Ray; ``True`` when this call started it (so it stops it)."""
    try:
        import ray
    except ImportError as exc:
        raise RayExtractError("Ray is not installed; install it with: pip install 'ray[data]'") from exc
    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(("CBIR_", "KERAS_", "TF_CPP"))}
    runtime_env: dict[str, Any] = {"env_vars": env}
    if address is not None:  # remote workers get the package with the job; local ones import it from here
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]  # the cbir package
    else:
        root = str(Path(__file__).resolve().parents[2])  # the folder holding cbir/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            runtime_env=runtime_env,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayExtractError(f"cannot start or reach Ray at {address or 'a local instance'}: {exc}") from exc
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset execution plans in the CLI's output
    return True


def decode_chunks(batch: dict[str, np.ndarray], input_size: tuple[int, int], batch_size: int) -> dict[str, Any]:
    """Ray task: decode the images of each chunk (row) → ``pixels`` (rows, batch_size, H, W, 3) uint8, the usable
    images first and zero padding after (resized images hold whole numbers 0..255, so uint8 loses nothing and moves
    a quarter of the bytes), ``good`` (JSON list of their paths) and ``rejected`` (JSON ``{path: reason}``)."""
    prepare = partial(resize_for_model, size=input_size)
    width, height = input_size
    pixels = np.zeros((len(batch["paths"]), batch_size, height, width, 3), dtype=np.uint8)
    good, rejected = [], []
    for row, paths_json in enumerate(batch["paths"]):
        ok, bad = [], {}
        for path in json.loads(paths_json):
            decoded = decode_or_reason(path, prepare)
            if isinstance(decoded, str):
                bad[path] = decoded
            else:
                pixels[row, len(ok)] = decoded
                ok.append(path)
        good.append(json.dumps(ok))
        rejected.append(json.dumps(bad))
    return {"chunk": batch["chunk"], "pixels": pixels, "good": np.array(good), "rejected": np.array(rejected)}


class Embedder:
    """Ray actor: one model, built once; each row's usable images (decoded by :func:`decode_chunks`) →
    ``features`` (rows, batch_size, dim) float32 (zero padded), predicted as one batch, exactly as the in-process
    pipeline predicts that chunk."""

    def __init__(self, backbone: str, weights: Any, batch_size: int, seed: int, workers: int = 2) -> None:
        self.extractor = FeatureExtractor(backbone, weights, batch_size=batch_size, seed=seed, workers=workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        features = self._features(len(batch["chunk"]))
        for row, good in enumerate(batch["good"]):
            n = len(json.loads(good))
            if n:
                features[row, :n] = self.extractor.predict_arrays(batch["pixels"][row, :n].astype(np.float32))
        return self._output(batch["chunk"], features, list(batch["good"]), list(batch["rejected"]))

    def _features(self, rows: int) -> np.ndarray:
        return np.zeros((rows, self.extractor.batch_size, self.extractor.dim), dtype=np.float32)

    def _output(self, chunk: np.ndarray, features: np.ndarray, good: list[str], rejected: list[str]) -> dict[str, Any]:
        weights_id = self.extractor.weights_id
        return {
            "chunk": chunk,
            "features": features,
            "good": np.array(good),
            "rejected": np.array(rejected),
            "weights_id": np.array([weights_id] * len(chunk)),
        }


class DecodingEmbedder(Embedder):
    """Ray actor that also reads and decodes: its rows' paths go through
    :meth:`cbir.features.extractor.FeatureExtractor.iter_batches`, the in-process pipeline (decode threads overlapping
    the
    model), whose batches are the rows' chunks again, so the features are those of the in-process run."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        chunks = [json.loads(paths) for paths in batch["paths"]]
        # the one short chunk (the last of the run) goes last, so that iter_batches cuts the rows back out exactly
        order = sorted(range(len(chunks)), key=lambda row: len(chunks[row]) < self.extractor.batch_size)
        paths = [path for row in order for path in chunks[row]]
        features = self._features(len(chunks))
        good, rejected = [""] * len(chunks), [""] * len(chunks)
        for row, (ok, computed, bad) in zip(order, self.extractor.iter_batches(paths), strict=True):
            assert len(ok) + len(bad) == len(chunks[row]), "a batch is not its chunk"
            if ok:
                features[row, : len(ok)] = computed
            good[row], rejected[row] = json.dumps(ok), json.dumps(bad)
        return self._output(batch["chunk"], features, good, rejected)


ROWS_PER_CALL = 4  # chunks a decoding actor gets per call: its decode threads run ahead within the call
Decode = Literal["actor", "tasks"]


def ray_batches(
    extractor: FeatureExtractor,
    paths: list[str],
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int = 1,
    decode: Decode | None = None,
    cpus_per_actor: float | None = None,
    decode_cpus: float = 0.5,
    gpus_per_actor: float = 0,
) -> Batches:
    """Yield ``(ok_paths, features, rejected)`` per chunk of ``extractor.batch_size`` paths, like
    :meth:`FeatureExtractor.iter_batches`, computed by Ray Data (chunks may arrive out of order).

    ``actors``: model replicas, ``cpus_per_actor`` CPUs (default: a local Ray's CPUs shared among the actors with
    ``decode="actor"``, else 1) and ``gpus_per_actor`` GPUs each. ``decode`` (see the module docstring): ``"actor"``
    or ``"tasks"`` (default: ``"tasks"`` when the actors have GPUs), whose decoding tasks reserve ``decode_cpus``
    CPUs each."""
    if not paths:
        return
    import ray

    decode = decode or ("tasks" if gpus_per_actor > 0 else "actor")
    started = _start_ray(address, num_cpus)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus_per_actor is None:
            cpus_per_actor = max(1.0, cpus // max(actors, 1)) if decode == "actor" and address is None else 1.0
        _check_resources(cpus, actors, cpus_per_actor, decode_cpus if decode == "tasks" else 0.0)
        ray.data.DataContext.get_current().enable_progress_bars = False
        size = extractor.batch_size
        chunks = [
            {"chunk": i, "paths": json.dumps(list(paths[start : start + size]))}
            for i, start in enumerate(range(0, len(paths), size))
        ]
        dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks))
        if decode == "tasks":
            dataset = dataset.map_batches(
                decode_chunks,
                batch_size=1,
                num_cpus=decode_cpus,
                fn_kwargs={"input_size": extractor.spec.input_size, "batch_size": size},
            )
        dataset = dataset.map_batches(
            Embedder if decode == "tasks" else DecodingEmbedder,
            batch_size=1 if decode == "tasks" else ROWS_PER_CALL,
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "backbone": extractor.backbone,
                "weights": extractor.weights,
                "batch_size": size,
                "seed": extractor.seed,
                "workers": extractor.workers,
            },
        )
        for batch in dataset.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
            if str(batch["weights_id"][0]) != extractor.weights_id:
                raise RayExtractError(
                    f"a Ray worker built weights {batch['weights_id'][0]}, not {extractor.weights_id}: "
                    "give every worker the same weights files"
                )
            good = json.loads(str(batch["good"][0]))
            features = batch["features"][0, : len(good)] if good else None
            yield good, features, json.loads(str(batch["rejected"][0]))
    finally:
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()


def _check_resources(cpus: float, actors: int, cpus_per_actor: float, decode_cpus: float) -> None:
    """The model actors hold their CPUs for the whole run, and decoding tasks (when there are some) need
    ``decode_cpus`` more: with fewer CPUs an actor or the decode tasks never get scheduled and the run would wait
    forever."""
    if actors < 1:
        raise RayExtractError(f"actors must be >= 1, got {actors}")
    if actors * cpus_per_actor + decode_cpus > cpus:
        fits = max(1, int((cpus - decode_cpus) // cpus_per_actor))
        raise RayExtractError(
            f"{actors} model actor(s) of {cpus_per_actor:g} CPU(s) each"
            + (f" and decoding tasks of {decode_cpus:g} CPU" if decode_cpus else "")
            + f" need more than this Ray's {cpus:g} CPU(s): use --actors {fits} or more CPUs"
        )


def ray_engine(
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int = 1,
    decode: Decode | None = None,
    cpus_per_actor: float | None = None,
    decode_cpus: float = 0.5,
    gpus_per_actor: float = 0,
) -> Callable[[FeatureExtractor, list[str]], Iterator[Any]]:
    """The ``engine`` argument of :func:`cbir.features.extractor.extract_collection` that computes on Ray Data (the
    arguments: :func:`ray_batches`)."""
    return partial(
        ray_batches,
        address=address,
        num_cpus=num_cpus,
        actors=actors,
        decode=decode,
        cpus_per_actor=cpus_per_actor,
        decode_cpus=decode_cpus,
        gpus_per_actor=gpus_per_actor,
    )
