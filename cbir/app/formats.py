"""How the app writes numbers, times, paths and messages: short enough for a metric box at 1024 px (about seven
characters of value), always with the unit, the same decimals everywhere. No Streamlit here (tested without it)."""

from __future__ import annotations

import math
import re
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


_DURATION = re.compile(r"([\d,.]+) (ms|s|min)\b")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "min": 60.0}


def parse_duration(text: str) -> float | None:
    """The seconds of the first duration :func:`duration` wrote in ``text`` (None when there is none): what the load
    test and the browser tests read back from the pages' metric tiles."""
    match = _DURATION.search(text or "")
    if match is None:
        return None
    value, unit = match.groups()
    return float(value.replace(",", "")) * _UNIT_SECONDS[unit]


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


# what a person reads for the tables' column names (the pipeline's own names stay in the CSV downloads)
COLUMN_NAMES = {
    "rank": "Rank",
    "relpath": "Path",
    "label": "Class",
    "role": "Role",
    "feature_set": "Feature set",
    "index": "Index",
    "config": "Setting",
    "distractors": "Distractors",
    "n_tables": "g (tables)",
    "n_projections": "h (projections)",
    "bucket_width": "w (bucket width)",
    "probes": "Probes",
    "map": "mAP@10",
    "recall": "Recall@10",
    "mean_score": "Mean score",
    "mean_visited": "Visited / query",
    "visited_fraction": "Share visited (%)",
    "fit_seconds": "Build (s)",
    "search_seconds": "All queries (s)",
    "query_ms": "In a batch (ms)",
    "single_query_ms": "One at a time (ms)",
    "pareto": "Pareto-optimal",
    "n_indexed": "Indexed images",
    "n_queries": "Queries",
    "n_all_queries": "Validation queries",
    "recall_pareto": "Recall Pareto-optimal",
    "computed": "Computed (UTC)",
    # the distance distributions' table (cbir.evaluation.distances)
    "class": "Class",
    "n_objects": "Images",
    "n_sampled": "Sampled images",
    "mean_euclidean": "Mean euclidean distance",
    "mean_cosine": "Mean cosine similarity",
}
# printf formats of the numeric columns (by their human name): one number of decimals per kind of figure
COLUMN_FORMATS = {
    "mAP@10": "%.3f",
    "Recall@10": "%.3f",
    "Mean score": "%.3f",
    "Visited / query": "%.1f",
    "Share visited (%)": "%.1f",
    "Build (s)": "%.3f",
    "All queries (s)": "%.3f",
    "In a batch (ms)": "%.3f",
    "One at a time (ms)": "%.3f",
    "w (bucket width)": "%.2f",
    "Indexed images": "%d",
    "Queries": "%d",
    "Validation queries": "%d",
    "g (tables)": "%d",
    "h (projections)": "%d",
    "Probes": "%d",
    "Images": "%d",
    "Sampled images": "%d",
    "Mean euclidean distance": "%.3f",
    "Mean cosine similarity": "%.3f",
}


PERCENT_COLUMNS = ("visited_fraction",)  # fractions shown as percentages with one decimal


def human_columns(
    table: pd.DataFrame, names: dict[str, str] | None = None, percent: tuple[str, ...] = PERCENT_COLUMNS
) -> pd.DataFrame:
    """``table`` with the column names a person reads (:data:`COLUMN_NAMES`, then ``names``), shares as
    percentages (the ``percent`` columns, by their own names), and no "None": a text cell without a value is blank,
    a number column with a gap becomes text in its :data:`COLUMN_FORMATS` format with :data:`DASH` in the gap."""
    mapping = {**COLUMN_NAMES, **(names or {})}
    renamed = table.rename(columns=mapping)
    for column in percent:
        if column in table.columns:
            human = mapping.get(column, column)
            renamed[human] = 100.0 * pd.to_numeric(renamed[human], errors="coerce")
    for column in set(COLUMN_FORMATS) & set(renamed.columns):
        numbers = pd.to_numeric(renamed[column], errors="coerce")
        if numbers.isna().any():  # the table would print "None": the figures as text, a dash where there is none
            fmt = COLUMN_FORMATS[column]
            renamed[column] = [DASH if pd.isna(x) else fmt % (round(x) if fmt == "%d" else x) for x in numbers]
    texts = renamed.select_dtypes(include=["object", "string"]).columns
    return renamed.assign(**{column: renamed[column].where(renamed[column].notna(), "") for column in texts})


BACKBONE_NAMES = {
    "efficientnet_lite0": "EfficientNet-Lite0",
    "resnet50": "ResNet50",
    "resnet50v2": "ResNet50V2",
}


def backbone_name(backbone: str | None) -> str:
    """How a person writes the backbone ``backbone`` (its registry name otherwise)."""
    return BACKBONE_NAMES.get(str(backbone), str(backbone))


def from_root(path: str, root: str) -> str:
    """``path`` as :func:`file_first` writes it, relative to the collection ``root`` (the file and its two folders
    when it lies elsewhere)."""
    from pathlib import Path

    try:
        relpath = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:  # outside it (a copied collection's report): the file and its two folders
        relpath = "/".join(Path(path).parts[-3:])
    return file_first(relpath)
