"""Configuration read from environment variables (documented in README.md), at call time.

Every path the project reads or writes is resolved here, so there is one obvious place to look; nothing in
``cbir`` reads or sets the environment when it is imported. The entry points (``python -m cbir``, ``app.py``)
call :func:`quiet_native_libraries` first.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # cbir/core/config.py -> the checkout
SHARED_DIR = PROJECT_ROOT.parent / "shared"


def _env_path(name: str, default: Path | None) -> Path | None:
    value = os.environ.get(name, "").strip()
    if value:
        return Path(value).expanduser().resolve()
    return default


def artifacts_dir() -> Path:
    """Root of generated outputs (features, indexes, models): ``CBIR_ARTIFACTS`` or ``./artifacts``."""
    path = _env_path("CBIR_ARTIFACTS", PROJECT_ROOT / "artifacts")
    assert path is not None
    return path


def weights_dir() -> Path | None:
    """Local folder of pretrained weights under Keras' file names: ``CBIR_WEIGHTS_DIR`` or ``../shared/weights``."""
    return _env_path("CBIR_WEIGHTS_DIR", SHARED_DIR / "weights")


def shared_data_dir() -> Path | None:
    """Where the paper's real data sits when sourced: ``CBIR_DATA_DIR`` or ``../shared/data``."""
    return _env_path("CBIR_DATA_DIR", SHARED_DIR / "data")


def default_collection() -> Path:
    """The collection the app and CLI use when none is given: ``CBIR_COLLECTION`` or the Open Clip Art build."""
    path = _env_path("CBIR_COLLECTION", artifacts_dir() / "collections" / "openclipart")
    assert path is not None
    return path


def openclipart_dir() -> Path:
    """Debian's ``openclipart-png`` drawings, the default collection's source: ``CBIR_OPENCLIPART_DIR`` or
    ``/usr/share/openclipart/png`` (read at each call, so a changed environment is honoured)."""
    path = _env_path("CBIR_OPENCLIPART_DIR", Path("/usr/share/openclipart/png"))
    assert path is not None
    return path


def fingerprint_cache_path() -> Path:
    """Cache of image fingerprints (collection hygiene: duplicates, blanks), keyed by file path, size and mtime."""
    return artifacts_dir() / "hygiene" / "fingerprints.json"


def keras_cache_dir() -> Path:
    """Keras' own download cache (``KERAS_HOME`` or ``~/.keras``) holds ``models/<file>``."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


# Lines TensorFlow's native libraries print on stderr when they load, whatever TF_CPP_MIN_LOG_LEVEL says (since
# TensorFlow 2.1x they log through absl before absl is initialised): dropped by :func:`quiet_native_libraries`.
# Anything else printed while TensorFlow loads (a real error) is passed on.
TENSORFLOW_NOISE: tuple[str, ...] = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Could not find cuda drivers on your machine",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
    "failed call to cuInit",
)
QUIET_IMPORTS = frozenset({"tensorflow"})


def is_native_noise(line: str) -> bool:
    """Whether a stderr line is one of TensorFlow's start-up messages (:data:`TENSORFLOW_NOISE`)."""
    return any(noise in line for noise in TENSORFLOW_NOISE)


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool] = is_native_noise) -> Iterator[None]:
    """Capture what is written to file descriptor 2 (by C++ code too) inside the block, then write back every line
    for which ``drop`` is false. Process-wide: another thread's stderr output during the block comes out after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line for line in capture.read().decode(errors="replace").splitlines(keepends=True) if not drop(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs a module's own loader inside :func:`filtered_stderr`, then turns its Python-side loggers to errors."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with filtered_stderr():
            self.loader.exec_module(module)
            # the GPU platform is probed on first use, not on import: probe it here, where the "no CUDA driver"
            # line of a CPU-only machine is filtered (on a GPU machine this finds the GPU)
            probe_devices = getattr(getattr(module, "config", None), "list_physical_devices", None)
            if probe_devices is not None:
                probe_devices("GPU")
        # TensorFlow's Python logging (absl) says "errors only" too, like TF_CPP_MIN_LOG_LEVEL for its C++ side.
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level modules in :data:`QUIET_IMPORTS` in :class:`_QuietLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in QUIET_IMPORTS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def quiet_native_libraries() -> None:
    """Settings of the native libraries for the CLI and the app (an explicit environment value wins): no TensorFlow
    start-up log lines, and OpenBLAS and OpenMP threads that sleep at once after a call. Only effective before
    TensorFlow, numpy (OpenBLAS) and libgomp (numba's first parallel kernel, FAISS) are loaded; calling it again changes
    nothing."""
    # TensorFlow's C++ start-up banner (CPU instruction sets, oneDNN) is noise for users of the CLI and app. Since
    # TensorFlow 2.1x some of it ignores this setting (absl logs before it is initialised), so the import of
    # TensorFlow itself is filtered too: its known start-up lines are dropped, errors pass.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())
    # OpenBLAS keeps its threads spinning after each call; the LSH search follows a BLAS projection with a numba
    # parallel kernel, and the spinning threads would take the cores from it (measured: 125 → 80 ms per batch).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    # OpenMP's idle workers (numba's parallel kernels, FAISS) likewise spin after each parallel region unless passive;
    # between the single queries of a server they would take the cores from the next query (cbir.indexes.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
