"""Figures kept on disk: a :mod:`cbir.app.plots` builder wrapped by :func:`kept` builds each figure once per input
and keeps its plotly JSON under ``<artifacts>/cache/figures``; a restarted server reads it back instead of building
it again (plotly express: ~1 s for the comparison page's six figures on two busy cores, against ~0.1 s to read
their JSON back).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.io as pio

from cbir.core import config
from cbir.core.storage import kept_on_disk

FigureBuilder = Callable[..., go.Figure]


def digest(value: Any) -> str:
    """A digest of a builder's argument: a DataFrame by its content (values, index, columns and dtypes), a mapping
    or a sequence by its items, anything else by its ``repr``."""
    h = hashlib.sha1()
    _feed(h, value)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, pd.DataFrame):
        h.update(repr((list(value.columns), [str(t) for t in value.dtypes], value.shape)).encode())
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
        h.update(b"}")
    elif isinstance(value, list | tuple):
        h.update(b"[")
        for item in value:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(repr(value).encode())
        h.update(b"|")


def kept(build: FigureBuilder) -> FigureBuilder:
    """``build`` whose figures are kept on disk as plotly JSON, keyed by the builder, plotly's version and a
    :func:`digest` of the arguments: the same input read back from disk by any later process gives the same
    figure."""

    @functools.wraps(build)
    def kept_build(*args: Any, **kwargs: Any) -> go.Figure:
        key = f"{build.__module__}.{build.__qualname__}|{plotly.__version__}|{digest([args, kwargs])}"
        folder = config.artifacts_dir() / "cache" / "figures"
        return pio.from_json(kept_on_disk(folder, key, lambda: build(*args, **kwargs).to_json()))

    return kept_build
