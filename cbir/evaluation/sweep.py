"""The hyper-parameter sweep (the only one: the CLI, the report and the pages all run :func:`sweep_split`), the
Pareto frontier of mAP against objects visited, and the budgeted recommendation."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from cbir.core.errors import ConfigError
from cbir.evaluation.evaluate import (
    SETTING_COLUMNS,
    EvaluationResult,
    EvaluationSplit,
    StageProgress,
    evaluate_split,
    row_params,
    score_answers,
    split_collection,
)
from cbir.indexes.base import BaseIndex
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.scan import CandidateRanking, SequentialScan
from cbir.indexes.widths import default_width

SWEEP_COLUMNS = [
    *SETTING_COLUMNS,
    "map",
    "recall",
    "mean_score",
    "mean_visited",
    "visited_fraction",
    "fit_seconds",
    "search_seconds",
    "query_ms",
    "single_query_ms",
]
_GRID_ALIASES = {"g": "n_tables", "h": "n_projections", "w": "bucket_width"}
# budgeted_sweep ranks candidates from every query's keys against every row (CandidateRanking: ~12 bytes a pair while
# it is made, 8 kept) up to this many query x row pairs (the default collection: 2.5 million); above, it searches
RANKED_PAIRS = 20_000_000


def _as_values(values: Iterable[Any], name: str) -> list[Any]:
    values = [values] if np.isscalar(values) else list(values)
    if not values:
        raise ConfigError(f"grid[{name!r}] is empty")
    return values


def sweep(
    features: np.ndarray,
    labels: Sequence[Any],
    roles: Sequence[str],
    grid: Mapping[str, Sequence[float]],
    metric: str = "euclidean",
    k: int = 10,
    with_distractors: bool = True,
    probes: Sequence[int] = (0,),
    seed: int = 0,
    progress: Callable[[int, int], Any] | None = None,
    include_scan: bool = False,
) -> pd.DataFrame:
    """:func:`sweep_split` of the collection ``features`` (n, d) float32, ``labels`` (n,), ``roles`` (n,) split by
    :func:`split_collection`."""
    split = split_collection(features, labels, roles, with_distractors)
    return sweep_split(split, grid, metric, k, probes, seed, progress, include_scan)


def evaluate_settings(
    index: BaseIndex,
    split: EvaluationSplit,
    setting: str,
    values: Iterable[int],
    k: int = 10,
    detail: StageProgress | None = None,
) -> Iterator[EvaluationResult]:
    """:func:`evaluate_split` of one index at each value of a query-time ``setting`` (``probes``, ``ef_search``:
    an attribute that needs no refit): fitted once, for the first value; every result reports that fit's time."""
    fit_seconds = None
    for value in values:
        setattr(index, setting, int(value))
        result = evaluate_split(index, split, k=k, refit=fit_seconds is None, progress=detail)
        if fit_seconds is None:
            fit_seconds = result.fit_seconds
        else:  # later settings reuse the fitted index; report the fit it cost
            result = replace(result, fit_seconds=fit_seconds)
        yield result


def sweep_split(
    split: EvaluationSplit,
    grid: Mapping[str, Sequence[float]],
    metric: str = "euclidean",
    k: int = 10,
    probes: Sequence[int] = (0,),
    seed: int = 0,
    progress: Callable[[int, int], Any] | None = None,
    include_scan: bool = False,
    detail: StageProgress | None = None,
) -> pd.DataFrame:
    """Evaluate an :class:`~cbir.indexes.lsh.LSHIndex` for every combination of the grid (and of ``probes``): the one
    sweep of the project (CLI ``sweep``, ``report``, the tuning and comparison pages).

    Args:
        grid: lists of values for ``n_tables`` (alias ``g``), ``n_projections`` (``h``) and optionally
            ``bucket_width`` (``w``; default: :func:`default_width` of the indexed rows).
        probes: multi-probe settings; each is evaluated on the same fitted index (probing needs no refit).
        progress: called as ``progress(done, total)`` after each configuration.
        include_scan: add one exact-scan row first (reference mAP; LSH columns are NA).
        detail: the progress of each evaluation (see :func:`evaluate_split`), between two ``progress`` calls.

    Returns:
        One row per configuration (:meth:`EvaluationResult.row`) with columns :data:`SWEEP_COLUMNS`; ``n_tables``,
        ``n_projections`` and ``probes`` are nullable integers.
    """
    combos = _grid_settings(split, grid, metric, seed)
    probe_values = _as_values(probes, "probes")
    total = len(combos) * len(probe_values) + int(include_scan)
    rows: list[dict[str, Any]] = []

    def add_row(result: EvaluationResult) -> None:
        rows.append(result.row())
        if progress is not None:
            progress(len(rows), total)

    if include_scan:
        add_row(evaluate_split(SequentialScan(metric), split, k=k, progress=detail))  # type: ignore[arg-type]
    for n_tables, n_projections, bucket_width in combos:
        index = LSHIndex(int(n_tables), int(n_projections), float(bucket_width), metric=metric, seed=seed)  # type: ignore[arg-type]
        for result in evaluate_settings(index, split, "probes", probe_values, k=k, detail=detail):
            add_row(result)
    return _sweep_frame(rows)


def _grid_settings(
    split: EvaluationSplit, grid: Mapping[str, Sequence[float]], metric: str, seed: int
) -> list[tuple[Any, Any, Any]]:
    """The ``(n_tables, n_projections, bucket_width)`` combinations of a sweep grid (see :func:`sweep_split`), in the
    sweep's order."""
    unknown = set(grid) - set(_GRID_ALIASES) - set(_GRID_ALIASES.values())
    if unknown:
        raise ConfigError(f"unknown grid keys {sorted(unknown)}; use n_tables/g, n_projections/h, bucket_width/w")
    canonical = {_GRID_ALIASES.get(key, key): value for key, value in grid.items()}
    for name in ("n_tables", "n_projections"):
        if name not in canonical:
            raise ConfigError(f"grid needs values for {name!r}")
    widths = canonical.get("bucket_width")
    if widths is None:
        widths = [default_width(split.index_vectors, metric, seed=seed)]
    return list(
        itertools.product(
            _as_values(canonical["n_tables"], "n_tables"),
            _as_values(canonical["n_projections"], "n_projections"),
            _as_values(widths, "bucket_width"),
        )
    )


def _sweep_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Result rows as a sweep table: :data:`SWEEP_COLUMNS`, the index settings as nullable integers (the scan row
    has no g/h/probes, and the others should not print as 4.0000)."""
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    return table.astype(
        {
            "n_tables": "Int64",
            "n_projections": "Int64",
            "bits": "Int64",
            "probes": "Int64",
            "ef_search": "Int64",
            "n_probe": "Int64",
            "bucket_width": float,
        }
    )


def budgeted_sweep(
    split: EvaluationSplit,
    grid: Mapping[str, Sequence[float]],
    budget: float,
    metric: str = "euclidean",
    k: int = 10,
    seed: int = 0,
    progress: Callable[[int, int], Any] | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """The LSH rows of :func:`sweep_split` (``probes=0``) that visit at most ``budget`` objects per query, with the
    same figures (the times aside), without searching the settings above the budget: each setting is fitted and the
    objects a search would visit are counted first (:meth:`~cbir.indexes.buckets.BucketIndex.candidates`, no
    distance computed), and only the settings within the budget are answered and scored: each one's answers ranked
    among its candidates from one matrix product of the queries with every row, shared by all the settings
    (:class:`~cbir.indexes.scan.CandidateRanking`: bit for bit the search's answers, without computing each
    candidate's distance again per setting). So :func:`recommend` of it is :func:`recommend` of the whole sweep's LSH
    rows at that budget, for a fraction of the sweep's time (the settings above the budget are the ones that visit,
    and so cost, the most; and no setting is timed: ``search_seconds``, ``query_ms`` and ``single_query_ms`` are
    NaN). Above :data:`RANKED_PAIRS` query x row pairs each setting within the budget is searched instead (the same
    figures; its batch time measured). ``progress(done, total)`` after each setting, in the
    grid's order. ``workers``: settings fitted and searched at once in threads (the LSH kernels and BLAS release the
    GIL; each setting's figures are the same whatever the number: only the fit times differ)."""
    combos = _grid_settings(split, grid, metric, seed)
    vectors = split.indexed_vectors()
    split.exact_answer(metric, int(k))  # computed once, before the settings share it
    ranking = None  # its (n_queries, n_indexed) keys and orders fit in memory on a collection up to RANKED_PAIRS
    if split.n_queries * split.n_indexed <= RANKED_PAIRS:
        ranking = CandidateRanking(SequentialScan(metric).fit(vectors), split.query_vectors)  # type: ignore[arg-type]

    def within_budget(setting: tuple[Any, Any, Any]) -> dict[str, Any] | None:
        n_tables, n_projections, bucket_width = setting
        index = LSHIndex(int(n_tables), int(n_projections), float(bucket_width), metric=metric, seed=seed)  # type: ignore[arg-type]
        started = time.perf_counter()
        index.fit(vectors)
        fit_seconds = time.perf_counter() - started
        candidates = index.candidates(split.query_vectors)
        visited = np.fromiter(map(len, candidates), dtype=np.int64, count=split.n_queries)
        if visited.mean() > budget:
            return None
        if ranking is None:  # a large collection: searched (its times are not what it picks by)
            result = evaluate_split(index, split, k=k, refit=False, single=False)
        else:  # the search's answers, ranked from the shared product; not timed
            scores, ids = ranking.top_k(candidates, int(k))
            nan = float("nan")
            result = score_answers(split, scores, ids, visited, metric, int(k), fit_seconds, nan, row_params(index))
        return {**result.row(), "fit_seconds": fit_seconds}

    rows: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="cbir-budgeted") if workers > 1 else None
    try:
        found = map(within_budget, combos) if pool is None else pool.map(within_budget, combos)
        for done, row in enumerate(found, start=1):  # in the grid's order
            if row is not None:
                rows.append(row)
            if progress is not None:
                progress(done, len(combos))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return _sweep_frame(rows)


def pareto_frontier(df: pd.DataFrame, x: str = "mean_visited", y: str = "map") -> pd.Series:
    """Boolean mask (aligned with ``df.index``) of the points no other point beats on both axes.

    A point is dominated when another has ``x' <= x`` and ``y' >= y`` with at least one strict (fewer visited
    objects and higher mAP are better). Identical points are all kept; rows with NaN in x or y are never on
    the frontier.
    """
    for column in (x, y):
        if column not in df.columns:
            raise ValueError(f"column {column!r} not in the sweep table (columns: {list(df.columns)})")
    xs = df[x].to_numpy(dtype=np.float64)
    ys = df[y].to_numpy(dtype=np.float64)
    valid = ~(np.isnan(xs) | np.isnan(ys))
    no_worse = (xs[None, :] <= xs[:, None]) & (ys[None, :] >= ys[:, None])
    better = (xs[None, :] < xs[:, None]) | (ys[None, :] > ys[:, None])
    dominated = (no_worse & better & valid[None, :]).any(axis=1)
    return pd.Series(valid & ~dominated, index=df.index, name="pareto")


def recommend(df: pd.DataFrame, budget: float) -> pd.Series:
    """The configuration with the best mAP among those with ``mean_visited <= budget`` (ties: fewer visited).

    Raises:
        ConfigError: when no row fits the budget (the message gives the cheapest available).
    """
    if df.empty:
        raise ConfigError("the sweep table is empty")
    fits = df[df["mean_visited"] <= budget]
    if fits.empty:
        raise ConfigError(
            f"no configuration visits at most {budget:g} objects per query; "
            f"the cheapest visits {df['mean_visited'].min():.1f}"
        )
    return fits.sort_values(["map", "mean_visited"], ascending=[False, True], kind="stable").iloc[0]
