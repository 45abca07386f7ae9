"""Feature extraction on Ray Data: the same batches, cache, checkpoints and store as the in-process pipeline.

:func:`ray_engine` plugs into :func:`cbir.features.extract_collection` (``engine=``), which keeps the per-image
cache, the resume checkpoints, the rejected-file report and the writing of the feature store; Ray Data only
computes. The paths to compute are cut into chunks of ``extractor.batch_size`` exactly as
:meth:`cbir.features.FeatureExtractor.iter_batches` cuts them, one dataset row per chunk; Ray Data decodes the
chunks in tasks (``map_batches`` with a function) and embeds them in a pool of actors (``map_batches`` with a
callable class, one model per actor), streaming, so decoding overlaps the models. Because each model sees the same
batches as in-process, the features are the same (bitwise on the same machine and TensorFlow build).

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
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.features import Batches, FeatureExtractor
from cbir.images import decode_or_reason, resize_for_model


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
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parent)]
    else:
        root = str(Path(__file__).resolve().parent.parent)
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
    """Ray actor: one model, built once; each row's usable images → ``features`` (rows, batch_size, dim) float32
    (zero padded), predicted as one batch, exactly as the in-process pipeline predicts that chunk."""

    def __init__(self, backbone: str, weights: Any, batch_size: int, seed: int) -> None:
        self.extractor = FeatureExtractor(backbone, weights, batch_size=batch_size, seed=seed)
        self.weights_id = self.extractor.weights_id  # builds the model now

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows, size = batch["pixels"].shape[:2]
        features = np.zeros((rows, size, self.extractor.dim), dtype=np.float32)
        for row, good in enumerate(batch["good"]):
            n = len(json.loads(good))
            if n:
                features[row, :n] = self.extractor.predict_arrays(batch["pixels"][row, :n].astype(np.float32))
        return {
            "chunk": batch["chunk"],
            "features": features,
            "good": batch["good"],
            "rejected": batch["rejected"],
            "weights_id": np.array([self.weights_id] * rows),
        }


def ray_batches(
    extractor: FeatureExtractor,
    paths: list[str],
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int = 1,
    decode_cpus: float = 0.5,
    gpus_per_actor: float = 0,
) -> Batches:
    """Yield ``(ok_paths, features, rejected)`` per chunk of ``extractor.batch_size`` paths, like
    :meth:`FeatureExtractor.iter_batches`, computed by Ray Data (chunks may arrive out of order). ``actors``:
    model replicas (one CPU each, and ``gpus_per_actor`` GPUs on a cluster that has them); ``decode_cpus``: the CPUs
    each decoding task reserves."""
    if not paths:
        return
    import ray

    started = _start_ray(address, num_cpus)
    try:
        _check_resources(float(ray.cluster_resources().get("CPU", 0)), actors, decode_cpus)
        ray.data.DataContext.get_current().enable_progress_bars = False
        size = extractor.batch_size
        chunks = [
            {"chunk": i, "paths": json.dumps(list(paths[start : start + size]))}
            for i, start in enumerate(range(0, len(paths), size))
        ]
        dataset = (
            ray.data.from_items(chunks, override_num_blocks=len(chunks))
            .map_batches(
                decode_chunks,
                batch_size=1,
                num_cpus=decode_cpus,
                fn_kwargs={"input_size": extractor.spec.input_size, "batch_size": size},
            )
            .map_batches(
                Embedder,
                batch_size=1,
                num_cpus=1,
                num_gpus=gpus_per_actor,
                compute=ray.data.ActorPoolStrategy(size=actors),
                fn_constructor_kwargs={
                    "backbone": extractor.backbone,
                    "weights": extractor.weights,
                    "batch_size": size,
                    "seed": extractor.seed,
                },
            )
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


def _check_resources(cpus: float, actors: int, decode_cpus: float) -> None:
    """Each model actor holds one CPU for the whole run, and decoding needs ``decode_cpus`` more: with fewer
    CPUs the decode tasks never get scheduled and the run would wait forever."""
    if actors < 1:
        raise RayExtractError(f"actors must be >= 1, got {actors}")
    if actors + decode_cpus > cpus:
        raise RayExtractError(
            f"{actors} model actor(s) hold {actors} CPU(s) and decoding needs {decode_cpus:g} more, but this Ray has "
            f"{cpus:g} CPU(s): use --actors {max(1, int(cpus - decode_cpus))} or more CPUs"
        )


def ray_engine(
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int = 1,
    decode_cpus: float = 0.5,
    gpus_per_actor: float = 0,
) -> Callable[[FeatureExtractor, list[str]], Iterator[Any]]:
    """The ``engine`` argument of :func:`cbir.features.extract_collection` that computes on Ray Data (the
    arguments: :func:`ray_batches`)."""
    return partial(
        ray_batches,
        address=address,
        num_cpus=num_cpus,
        actors=actors,
        decode_cpus=decode_cpus,
        gpus_per_actor=gpus_per_actor,
    )
