"""A query's forward pass through TensorFlow Lite's XNNPACK kernels (issue 21).

A server embeds one image at a time. TensorFlow's graph runtime took 31 ms for it on one thread of this machine
(EfficientNet-Lite0, the median of 40 real photos), and 61 ms beside a Python thread that kept the interpreter lock
busy, as the Search page's script run does at times while an upload's query is embedded (:mod:`cbir.service.early`).
The same model converted to TensorFlow Lite and run by its XNNPACK kernels took 15 and 36 ms, with features equal to
2e-6 of the largest (``python benchmarks/query_model.py`` prints both side by side).

:func:`use_for_queries` gives a :class:`~cbir.features.extractor.FeatureExtractor` such a forward pass for its
single images (batches keep TensorFlow's graph, which is faster for them): converted once (~5 s) and kept under
``artifacts/weights/lite/``, read back by later servers in milliseconds, and used only when its features of a probe
image equal the model's to :data:`TOLERANCE`. Where it cannot be had (no interpreter installed, a model the
converter refuses, features that differ, ``CBIR_QUERY_RUNTIME=keras``), the extractor keeps TensorFlow's graph and
the reason is returned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.core import config
from cbir.core.storage import atomic_write_bytes

if TYPE_CHECKING:
    from cbir.features.extractor import FeatureExtractor

_log = logging.getLogger(__name__)

RUNTIME_ENV = "CBIR_QUERY_RUNTIME"  # "keras": queries keep TensorFlow's graph (to measure one against the other)
TOLERANCE = 1e-4  # largest difference allowed between the two runtimes' features, relative to the largest feature
LITE_RUNTIME = "TensorFlow Lite (XNNPACK)"  # what use_for_queries() says when single queries run on it
INTERPRETERS = 2  # kept per model: one query per core at a time (an interpreter runs one call at a time)


class LiteForward:
    """The forward pass of a TensorFlow Lite model (its flatbuffer ``content``) on one thread per call, XNNPACK's
    kernels: ``forward(batch)`` maps (1, H, W, 3) float32 preprocessed pixels to (1, dim) float32 features.
    Thread-safe: it keeps ``interpreters`` interpreters and each call takes one (or waits for one)."""

    def __init__(self, content: bytes, interpreters: int = INTERPRETERS) -> None:
        interpreter_class = _interpreter_class()
        if interpreter_class is None:
            raise ImportError("no TensorFlow Lite interpreter is installed (ai_edge_litert or tf.lite)")
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        for _ in range(max(1, interpreters)):
            with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice, once per interpreter
                warnings.simplefilter("ignore")
                interpreter = interpreter_class(model_content=content, num_threads=1)
            interpreter.allocate_tensors()
            self._idle.put(interpreter)
        probe = self._idle.get()
        self._input = probe.get_input_details()[0]
        outputs = probe.get_output_details()
        self._idle.put(probe)
        if len(outputs) != 1:
            raise ValueError(f"the model has {len(outputs)} outputs, not one")
        self._output = outputs[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape != self.input_shape:
            raise ValueError(f"expected a batch of shape {self.input_shape}, got {batch.shape}")
        interpreter = self._idle.get()
        try:
            interpreter.set_tensor(self._input["index"], batch)
            interpreter.invoke()  # releases the interpreter lock: other threads' Python runs meanwhile
            out = interpreter.get_tensor(self._output["index"])
        finally:
            self._idle.put(interpreter)
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


def _interpreter_class() -> Any:
    """LiteRT's interpreter (``ai_edge_litert``, where installed), else the one TensorFlow ships (``tf.lite``)."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter
    except (ImportError, AttributeError):
        return None


def convert(model: Any, input_shape: tuple[int, ...]) -> bytes:
    """A Keras model (TensorFlow backend) as a TensorFlow Lite flatbuffer taking a batch of ``input_shape``, its
    weights frozen in (float32, no quantisation: the same features)."""
    import tensorflow as tf

    forward = tf.function(lambda inputs: model(inputs, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    holder = tf.Module()  # what the converter reads the weights from (Keras 3 wraps each tf.Variable)
    holder.variables_of_the_model = [getattr(v, "value", v) for v in model.variables]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable_obj=holder)
    return converter.convert()


def cache_file(extractor: FeatureExtractor, folder: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted model of ``extractor`` is kept: named by its backbone, weights, input size and the
    TensorFlow version that converted it."""
    import tensorflow as tf

    height, width = extractor.spec.input_size
    key = f"{extractor.backbone}|{extractor.weights_id}|{height}x{width}|{tf.__version__}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    # beside the converted EfficientNet weights (artifacts/weights/), which test servers share with the real folder
    base = Path(folder) if folder is not None else config.artifacts_dir() / "weights" / "lite"
    return base / f"{extractor.backbone}-{digest}.tflite"


def use_for_queries(extractor: FeatureExtractor, folder: str | os.PathLike[str] | None = None) -> str:
    """Have ``extractor`` embed single images with TensorFlow Lite (see the module's doc); returns what it runs
    them with now: :data:`LITE_RUNTIME`, or ``"TensorFlow (<reason>)"``."""
    if os.environ.get(RUNTIME_ENV, "").strip().lower() == "keras":
        return f"TensorFlow ({RUNTIME_ENV}=keras)"
    if extractor.single_forward is not None:
        return LITE_RUNTIME
    if _interpreter_class() is None:
        return "TensorFlow (no TensorFlow Lite interpreter installed)"
    height, width = extractor.spec.input_size
    probe = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    expected = extractor.graph_arrays(probe)  # what the collection was embedded with
    file = cache_file(extractor, folder)
    forward = _kept(file, extractor, probe, expected)
    if forward is None:
        try:
            content = convert(extractor._ensure_model(), (1, height, width, 3))
            forward = LiteForward(content)
            difference = _difference(forward, extractor, probe, expected)
        except Exception as exc:  # a model the converter or the interpreter refuses: TensorFlow's graph stays
            _log.warning("queries keep TensorFlow's graph: the model could not be converted (%r)", exc)
            return f"TensorFlow (the model could not be converted: {exc})"
        if difference > TOLERANCE:
            return f"TensorFlow (TensorFlow Lite's features differ by {difference:.1e})"
        try:
            atomic_write_bytes(file, content)
        except OSError as exc:  # used all the same; the next server converts again
            _log.warning("the TensorFlow Lite model could not be kept in %s (%r)", file, exc)
    extractor.single_forward = forward
    return LITE_RUNTIME


def _kept(file: Path, extractor: FeatureExtractor, probe: np.ndarray, expected: np.ndarray) -> LiteForward | None:
    """The converted model kept in ``file``, if it is there, loads and gives the same features (else ``None``: a
    half-written or foreign file is converted again)."""
    if not file.is_file():
        return None
    try:
        forward = LiteForward(file.read_bytes())
    except Exception as exc:
        _log.warning("the kept TensorFlow Lite model %s cannot be loaded (%r): converting again", file, exc)
        return None
    if _difference(forward, extractor, probe, expected) > TOLERANCE:
        return None
    return forward


def _difference(forward: LiteForward, extractor: FeatureExtractor, probe: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference between ``forward``'s features of ``probe`` and ``expected``, relative to the largest."""
    got = forward(extractor.spec.preprocess(probe))
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
