"""Configuration read from environment variables (documented in README.md), at call time.

Every path the project reads or writes is resolved here, so there is one obvious place to look; nothing in
``cbir`` reads or sets the environment when it is imported. The entry points (``python -m cbir``, ``app.py``)
call :func:`quiet_native_libraries` first.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
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


def quiet_native_libraries() -> None:
    """Settings of the native libraries for the CLI and the app (an explicit environment value wins): no TensorFlow
    C++ start-up banner, and OpenBLAS threads that sleep at once after a call. Only effective before TensorFlow,
    respectively numpy, are loaded."""
    # TensorFlow's C++ start-up banner (CPU instruction sets, oneDNN) is noise for users of the CLI and app.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # OpenBLAS keeps its threads spinning after each call; the LSH search follows a BLAS projection with a numba
    # parallel kernel, and the spinning threads would take the cores from it (measured: 125 → 80 ms per batch).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
