"""cbir: content-based image retrieval workbench (deep CNN features + numba E2LSH)."""

__version__ = "0.1.0"
