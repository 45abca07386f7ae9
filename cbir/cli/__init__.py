"""Layer 5: the command line, ``python -m cbir``."""
