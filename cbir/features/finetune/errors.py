"""The error of the fine-tuning package (its own module so that every other module can raise it)."""

from __future__ import annotations

from cbir.core.errors import CbirError


class FinetuneError(CbirError, RuntimeError):
    """Fine-tuning cannot proceed (no labelled data, a checkpoint from another configuration, no epoch fits)."""
