"""cbir: content-based image retrieval workbench (deep CNN features + numba E2LSH)."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up banner (CPU instruction sets, oneDNN) is noise for users of the CLI and app.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenBLAS keeps its threads spinning after each call; the LSH search follows a BLAS projection with a numba
# parallel kernel, and the spinning threads would take the cores from it (measured: 125 → 80 ms per batch).
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
