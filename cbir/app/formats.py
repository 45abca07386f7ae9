"""How the app writes numbers, times, paths and messages: short enough for a metric box at 1024 px (about seven
characters of value), always with the unit, the same decimals everywhere. No Streamlit here (tested without it)."""

from __future__ import annotations

import math
from pathlib import PurePosixPath

import pandas as pd

DASH = "–"  # a value that does not exist (not zero, not unknown): printed instead of "None" or "nan"


def duration(seconds: float) -> str:
    """A time in at most seven characters with three significant digits: ``0.43 ms``, ``18.7 ms``, ``412 ms``,
    ``2.30 s``, ``41.2 s``; :data:`DASH` for a missing one."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return DASH
    ms = seconds * 1000.0
    if round(ms, 2) < 10:
        return f"{ms:.2f} ms"
    if round(ms, 1) < 100:
        return f"{ms:.1f} ms"
    if round(ms) < 1000:
        return f"{ms:.0f} ms"
    if round(seconds, 2) < 10:
        return f"{seconds:.2f} s"
    if round(seconds, 1) < 100:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s"


def count(n: float | None) -> str:
    """A count in at most six characters: ``5,418``, ``54,180``, ``542k``, ``1.00M``; :data:`DASH` when missing."""
    if n is None or pd.isna(n) or n < 0:
        return DASH
    n = round(float(n))
    if n < 100_000:
        return f"{n:,}"
    if n < 999_500:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.2f}M"


def share(fraction: float | None) -> str:
    """A share as a percentage with one decimal (``7.0 %``, ``100.0 %``); :data:`DASH` when missing."""
    if fraction is None or pd.isna(fraction):
        return DASH
    return f"{100.0 * fraction:.1f} %"


def file_first(relpath: str) -> str:
    """A collection path (relative to its root) with the file name first: ``coffee.png · training_set/animals``
    (a long folder is cut from the left, never the name)."""
    path = PurePosixPath(relpath)
    folder = str(path.parent)
    return path.name if folder in ("", ".") else f"{path.name} · {folder}"


def sentence(text: str) -> str:
    """``text`` with a capital first letter (messages of :mod:`cbir.service` start in lower case, as exceptions do)."""
    return text[:1].upper() + text[1:]
