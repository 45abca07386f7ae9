"""cbir: content-based image retrieval workbench (deep CNN features + numba E2LSH)."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up banner (CPU instruction sets, oneDNN) is noise for users of the CLI and app.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
