"""Index tuning on a feature set: evaluate one :class:`~cbir.indexes.registry.IndexConfig` on the validation queries,
sweep a
grid of LSH settings around the data-driven bucket width beside the reference points (FAISS HNSW and IVF-Flat,
hnswlib, cross-polytope LSH), recommend the best LSH setting under a visit budget, and pick the fastest index that
reaches a recall.

The computations are :mod:`cbir.evaluation.evaluate`'s; this module speaks in feature sets (by path and file version, so
that the app can cache by plain arguments) and in :class:`~cbir.indexes.registry.IndexConfig`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.core import config as cbir_config
from cbir.core.errors import ConfigError
from cbir.core.names import REFERENCE_KINDS
from cbir.core.storage import atomic_output, kept_on_disk
from cbir.evaluation.evaluate import (
    MAX_EVAL_QUERIES,
    QUERY_SAMPLE_SEED,
    EvaluationResult,
    EvaluationSplit,
    StageProgress,
    evaluate_split,
    split_collection,
)
from cbir.evaluation.sweep import SWEEP_COLUMNS, budgeted_sweep, pareto_frontier, recommend, sweep_split
from cbir.features.sources import SPLIT_COLUMNS, FeatureSet
from cbir.features.workspace import load_feature_set
from cbir.indexes.registry import (
    DEFAULT_K,
    DEFAULT_POLYTOPE_BITS,
    DEFAULT_PROJECTIONS,
    DEFAULT_TABLES,
    FIXED_POLYTOPE_BITS,
    IndexConfig,
)
from cbir.indexes.widths import DEFAULT_WIDTH_FACTORS, default_width, round_sig, width_grid

Progress = Callable[[int, int], None]
# Budget for the recommended LSH configuration: at most this share of the indexed objects visited per query.
RECOMMEND_BUDGET_FRACTION = 0.2
RECOMMEND_WORKERS = 2  # settings the budgeted search fits and searches at once (its kernels release the GIL)
# The background sweep of the tuning page: g and h values (w: DEFAULT_WIDTH_FACTORS × the default width), chosen so
# that the page's default setting g=7, h=2, default w is one of its points.
DEFAULT_GRID_TABLES = (1, 2, 4, 7, 10)
DEFAULT_GRID_PROJECTIONS = (1, 2, 4, 8)
# Above this many indexed objects the tuning page runs the background sweep only when asked (at 1M it takes hours)
SWEEP_ON_REQUEST = 250_000
# The reference points beside the sweep (cbir.core.names.REFERENCE_KINDS), each family fitted once and searched at each
# of its search-time settings: FAISS HNSW at these efSearch values (recall from ~0.8 to ~1 on real features), FAISS
# IVF-Flat (about 4·sqrt(n) lists) at these nprobe, hnswlib at these ef, and cross-polytope LSH on PCA-48 with the
# uint8 shortlist (cbir.indexes.registry.UINT8_RERANK of codes of UINT8_SCORE_DIM axes, as benchmarks/ann.py) at the
# README's best setting on the real features (L=8 tables): first as the app builds it, its bits per table, probes and
# shortlist chosen at fit for the registry's target recall (DEFAULT_TARGET_RECALL), then with 10 bits and these probes T
# (one more fit: its PCA, a 1280 x 1280 eigendecomposition, is most of its cost) and R = UINT8_RERANK, its recall curve.
REFERENCE_EF = (16, 32, 64, 128, 256)
REFERENCE_N_PROBE = (1, 4, 16, 64)
REFERENCE_HNSWLIB_EF = (16, 32, 128)
REFERENCE_POLYTOPE_TABLES, REFERENCE_POLYTOPE_BITS = 8, DEFAULT_POLYTOPE_BITS
REFERENCE_POLYTOPE_PROBES = (2, 8, 16)


def reference_configs(metric: str = "euclidean") -> list[IndexConfig]:
    """The reference settings of :func:`reference_sweep`, in order (those sharing a
    :attr:`~cbir.indexes.registry.IndexConfig.fit_key` are consecutive: one fitted index serves them)."""
    polytope = IndexConfig(
        "cross_polytope",
        metric,  # type: ignore[arg-type]
        n_tables=REFERENCE_POLYTOPE_TABLES,
        bits=REFERENCE_POLYTOPE_BITS,
    )
    return [
        *(IndexConfig("hnsw", metric, ef_search=ef) for ef in REFERENCE_EF),  # type: ignore[arg-type]
        *(IndexConfig("ivf_flat", metric, n_probe=n_probe) for n_probe in REFERENCE_N_PROBE),  # type: ignore[arg-type]
        *(IndexConfig("hnswlib", metric, ef_search=ef) for ef in REFERENCE_HNSWLIB_EF),  # type: ignore[arg-type]
        polytope,  # bits, T and R chosen at fit (the registry's default target recall)
        *(
            replace(polytope, bits=FIXED_POLYTOPE_BITS, probes=probes, target_recall=0.0)
            for probes in REFERENCE_POLYTOPE_PROBES
        ),
    ]


# Rows of the default background sweep (sweep_for): the exact scan, the LSH grid, the reference points
DEFAULT_SWEEP_SIZE = (
    1 + len(DEFAULT_GRID_TABLES) * len(DEFAULT_GRID_PROJECTIONS) * len(DEFAULT_WIDTH_FACTORS) + len(reference_configs())
)


WIDTH_SAMPLE_SIZE = 512  # cbir.evaluation.evaluate.default_bucket_width's sample_size


def searchable_features(feature_set: FeatureSet) -> np.ndarray:
    """(n_indexed, d) float32: the rows an index holds in the evaluation (index split + distractors), what default
    widths come from."""
    return feature_set.features[_searchable(feature_set)]


def _searchable(feature_set: FeatureSet) -> np.ndarray:
    """(n,) bool: the rows that are not queries (compared on the catalog's column: a store's strings as they are)."""
    return feature_set.catalog["role"].ne("query").to_numpy(dtype=bool)


def _split_collection(feature_set: FeatureSet, with_distractors: bool, **options: Any) -> EvaluationSplit:
    """:func:`cbir.evaluation.evaluate.split_collection` of a feature set, given its catalog's label and role columns as
    they are (no million Python strings made of a store's)."""
    catalog = feature_set.catalog
    return split_collection(feature_set.features, catalog["label"], catalog["role"], with_distractors, **options)


def width_sample(feature_set: FeatureSet, seed: int = 0) -> np.ndarray:
    """The searchable rows that :func:`cbir.evaluation.evaluate.default_width` draws its sample from, and only those
    (float32):
    ``default_width(width_sample(fs)) == default_width(searchable_features(fs))`` (the median distance does not
    depend on the rows' order) without copying a million rows first."""
    rows = np.flatnonzero(_searchable(feature_set))
    size = min(WIDTH_SAMPLE_SIZE, len(rows))
    picked = rows[np.random.default_rng(seed).choice(len(rows), size=size, replace=False)]
    return np.asarray(feature_set.features[np.sort(picked)], dtype=np.float32)


def default_lsh_config(features: np.ndarray, metric: str = "euclidean") -> IndexConfig:
    """The paper's web-app setting g=7, h=2 with the data-driven w (the paper's w=6 was for its features)."""
    return IndexConfig("lsh", metric, DEFAULT_TABLES, DEFAULT_PROJECTIONS, default_width(features, metric))  # type: ignore[arg-type]


def width_range(default: float) -> tuple[float, float, float]:
    """Slider bounds ``(low, high, step)`` for w around its default: 1/10× to 4×, 100 steps."""
    low, high = round_sig(default / 10), round_sig(default * 4)
    return low, high, round_sig((high - low) / 100, 2)


def default_grid(features: np.ndarray, metric: str = "euclidean") -> dict[str, list[float]]:
    """The background sweep: g ∈ :data:`DEFAULT_GRID_TABLES`, h ∈ :data:`DEFAULT_GRID_PROJECTIONS`, w ∈
    :func:`cbir.evaluation.evaluate.width_grid` of the default width."""
    return {
        "n_tables": list(DEFAULT_GRID_TABLES),
        "n_projections": list(DEFAULT_GRID_PROJECTIONS),
        "bucket_width": width_grid(default_width(features, metric), DEFAULT_WIDTH_FACTORS),
    }


def evaluation_split(feature_set: FeatureSet, with_distractors: bool = True) -> EvaluationSplit:
    """The index/query split of a feature set (:func:`cbir.evaluation.evaluate.split_collection`)."""
    return _split_collection(feature_set, with_distractors)


def exact_cache_dir(path: str, version: int, with_distractors: bool, max_queries: int | None) -> Path:
    """Where the exact scan's answers on the (sampled) queries of a feature set are kept across processes:
    ``<artifacts>/cache/exact/<digest of the feature set, its version and the split>``."""
    key = f"{Path(path).resolve()}|{version}|{with_distractors}|{max_queries}|{QUERY_SAMPLE_SEED}"
    return cbir_config.artifacts_dir() / "cache" / "exact" / hashlib.sha1(key.encode()).hexdigest()[:16]


# split_for's memo: a split copies the indexed rows once an index is built on it (1 GB at 1M × 256), so only the
# last few are kept
_SPLITS: dict[tuple[str, int, bool, int | None], EvaluationSplit] = {}
_SPLITS_KEPT = 4
_SPLITS_LOCK = threading.Lock()


def split_for(
    path: str,
    version: int,
    with_distractors: bool = True,
    max_queries: int | None = MAX_EVAL_QUERIES,
) -> EvaluationSplit:
    """The index/query split of the feature set at ``path``, memoised: every evaluation of it shares the split and
    so its exact-scan answers (the recall reference), computed once per metric and k and kept on disk
    (:func:`exact_cache_dir`). Its queries are a fixed random sample of ``max_queries`` when the collection has
    more (:attr:`EvaluationSplit.sampled`). The indexed rows are copied when an index is first built on the split
    (with the ``progress`` of that evaluation), never for answers the exact scan stored; a second caller of the same
    split waits for the first one instead of copying again."""
    key = (str(path), int(version), bool(with_distractors), max_queries)
    with _SPLITS_LOCK:
        split = _SPLITS.get(key)
        if split is None:
            feature_set = load_feature_set(path, version, SPLIT_COLUMNS)
            split = _split_collection(
                feature_set,
                with_distractors,
                max_queries=max_queries,
                cache_dir=exact_cache_dir(path, version, with_distractors, max_queries),
            )
            while len(_SPLITS) >= _SPLITS_KEPT:
                _SPLITS.pop(next(iter(_SPLITS)))
            _SPLITS[key] = split
        return split


def clear_splits() -> None:
    """Forget the memoised splits (their exact answers stay on disk)."""
    with _SPLITS_LOCK:
        _SPLITS.clear()


def evaluate_config(
    feature_set: FeatureSet,
    config: IndexConfig,
    k: int = DEFAULT_K,
    with_distractors: bool = True,
    split: EvaluationSplit | None = None,
) -> EvaluationResult:
    """Fit the index of ``config`` on the index split and run every validation query: mAP@k, recall@k against the
    exact scan, per-class mAP, visited objects, latency."""
    split = split if split is not None else evaluation_split(feature_set, with_distractors)
    return evaluate_split(config.build(), split, k=k)


def evaluate_for(
    path: str,
    version: int,
    config: IndexConfig,
    with_distractors: bool = True,
    k: int = DEFAULT_K,
    progress: StageProgress | None = None,
) -> EvaluationResult:
    """:func:`evaluate_config` of the feature set at ``path`` (on its memoised, possibly sampled split);
    ``progress(stage, done, total)`` as it builds, searches and (once) runs the exact scan."""
    split = split_for(path, version, with_distractors)
    return evaluate_split(config.build(), split, k=k, progress=progress)


def evaluate_pair_for(
    path: str,
    version: int,
    config: IndexConfig,
    k: int = DEFAULT_K,
    progress: StageProgress | None = None,
) -> tuple[EvaluationResult, EvaluationResult]:
    """``config`` evaluated with and without the distractors (:func:`evaluate_for` of each), its index built once:
    on the rows without the distractors, evaluated, then the distractors added to it (``add``: HNSW builds by
    insertion anyway, IVF keeps its trained centroids) and evaluated again; the "with" result's ``fit_seconds`` is
    the build's plus the addition's. Its figures differ slightly from an index built on all the rows at once (recall
    and mAP within ~0.01 on the default set). Two builds when the distractors are not the last indexed rows (images
    added in place after them): the added index's ids would not be the split's."""
    with_split, without_split = split_for(path, version, True), split_for(path, version, False)
    n = without_split.n_indexed
    if not np.array_equal(with_split.index_rows[:n], without_split.index_rows) or n == with_split.n_indexed:
        both = [evaluate_for(path, version, config, distractors, k, progress) for distractors in (True, False)]
        return both[0], both[1]
    index = config.build()
    without = evaluate_split(index, without_split, k=k, progress=progress)
    started = time.perf_counter()
    index.add(with_split.indexed_vectors(progress)[n:])
    added = time.perf_counter() - started
    with_ = evaluate_split(index, with_split, k=k, refit=False, progress=progress)
    return replace(with_, fit_seconds=without.fit_seconds + added), without


def sweep_table(
    split: EvaluationSplit,
    metric: str = "euclidean",
    grid: Mapping[str, Sequence[float]] | None = None,
    k: int = DEFAULT_K,
    probes: Sequence[int] = (0,),
    progress: Progress | None = None,
    detail: StageProgress | None = None,
    references: Sequence[IndexConfig] | None = None,
) -> pd.DataFrame:
    """The exact scan and every LSH setting of ``grid`` (default :func:`default_grid` of the indexed rows) ×
    ``probes``, by :func:`cbir.evaluation.evaluate.sweep_split`, then the reference points (:func:`reference_sweep` of
    ``references``, default :func:`reference_configs`): :data:`cbir.evaluation.evaluate.SWEEP_COLUMNS` plus ``pareto``
    (on
    the mAP-vs-visited frontier), ``recall_pareto`` (on the recall-vs-visited frontier) and ``label``.
    ``progress(rows done, rows in all)`` after each row, ``detail`` (:func:`cbir.evaluation.evaluate.evaluate_split`'s)
    within each."""
    grid = grid if grid is not None else default_grid(split.index_vectors, metric)
    references = list(references) if references is not None else reference_configs(metric)
    n_rows = 1 + len(probes) * int(np.prod([len(list(values)) for values in grid.values()]))
    total = n_rows + len(references)

    def step(done: int, _: int) -> None:
        if progress is not None:
            progress(done, total)

    step(0, total)
    table = sweep_split(split, grid, metric, k, probes, progress=step, include_scan=True, detail=detail)
    reference = reference_sweep(split, references, k, progress=lambda done: step(n_rows + done, total), detail=detail)
    table = pd.concat([table, reference], ignore_index=True) if len(reference) else table
    # the frontiers are the scan's and E2LSH's own; the reference points are shown beside them, not folded in
    own = ~table["index"].isin(REFERENCE_KINDS)
    table["pareto"] = pareto_frontier(table[own]).reindex(table.index, fill_value=False)
    table["recall_pareto"] = pareto_frontier(table[own], y="recall").reindex(table.index, fill_value=False)
    table["label"] = [IndexConfig.from_row(row).label for _, row in table.iterrows()]
    return table


def reference_sweep(
    split: EvaluationSplit,
    configs: Sequence[IndexConfig] | None = None,
    k: int = DEFAULT_K,
    progress: Callable[[int], None] | None = None,
    detail: StageProgress | None = None,
) -> pd.DataFrame:
    """The reference points (default :func:`reference_configs` of euclidean): each family fitted once on the split
    (consecutive ``configs`` with the same :attr:`~cbir.indexes.registry.IndexConfig.fit_key` share one fitted index,
    retuned by :meth:`~cbir.indexes.registry.IndexConfig.tune`) and evaluated at each setting: rows of
    :data:`cbir.evaluation.evaluate.SWEEP_COLUMNS` (``fit_seconds``: the family's one fit), to set beside the LSH sweep.
    ``progress(rows done)`` after each row, ``detail`` within."""
    configs = list(configs) if configs is not None else reference_configs()
    rows = []
    index, fitted, fit_seconds = None, None, 0.0
    for config in configs:
        refit = config.fit_key != fitted
        if refit:
            index, fitted = config.build(), config.fit_key
        assert index is not None
        config.tune(index)
        result = evaluate_split(index, split, k=k, refit=refit, progress=detail)
        if refit:
            fit_seconds = result.fit_seconds
        rows.append({**result.row(), "fit_seconds": fit_seconds})
        if progress is not None:
            progress(len(rows))
    table = pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)
    return table.astype({name: "Int64" for name in ("n_tables", "bits", "probes", "ef_search", "n_probe")})


def fastest_config(sweep: pd.DataFrame, target_recall: float) -> pd.Series:
    """The row of ``sweep`` (:func:`sweep_table`: the scan, every LSH setting, the reference points) that answers
    fastest among those returning at least ``target_recall`` of the exact top-k; the exact scan (recall 1) always
    qualifies. ``IndexConfig.from_row`` of it is the index to search with. Fastest one query at a time
    (``single_query_ms``), the way the Search page searches; by the batch time (``query_ms``) only in a table
    without that column."""
    if not 0.0 <= target_recall <= 1.0:
        raise ConfigError(f"target recall must be in [0, 1], got {target_recall}")
    reach = sweep[sweep["recall"] >= target_recall - 1e-12]
    if reach.empty:
        raise ConfigError("the sweep has no setting at that recall (it lacks the exact scan row)")
    by = "single_query_ms" if "single_query_ms" in reach and reach["single_query_ms"].notna().all() else "query_ms"
    return reach.sort_values([by, "mean_visited"], kind="stable").iloc[0]


def sweep_for(
    path: str,
    version: int,
    metric: str = "euclidean",
    with_distractors: bool = True,
    k: int = DEFAULT_K,
    progress: Progress | None = None,
    detail: StageProgress | None = None,
    kept_as: int | None = None,
) -> pd.DataFrame:
    """:func:`sweep_table` of the feature set at ``path`` (on its memoised, possibly sampled split) over
    :func:`default_grid` of its searchable rows (with the distractors whatever ``with_distractors``, so the grid
    holds the sliders' default setting), computed once and kept on disk (:func:`sweep_cache_file`; a ``computed``
    column says when: its times are those measured then, all in that one run). ``kept_as``: the version it is kept
    under instead of ``version`` (the app passes :func:`cbir.features.workspace.base_version`, so that an image added
    or removed in place, which moves its figures by about that image's share, does not make it be computed again)."""
    file = sweep_cache_file(path, version if kept_as is None else kept_as, metric, with_distractors, k)
    if file.is_file():
        try:
            kept = pd.read_parquet(file)
            if set(SWEEP_COLUMNS) <= set(kept.columns):  # one written before a column was added: computed again
                return kept
        except (OSError, ValueError):  # unreadable (a disk error, a format change): computed again below
            pass
    grid = default_grid(width_sample(load_feature_set(path, version, SPLIT_COLUMNS)), metric)
    split = split_for(path, version, with_distractors)
    table = sweep_table(split, metric, grid, k=k, progress=progress, detail=detail)
    table["computed"] = pd.Timestamp.now(tz="UTC").floor("s")
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(file) as temporary:
        table.to_parquet(temporary, index=False)
    return pd.read_parquet(file)  # the same columns and dtypes as a later process reads


def sweep_cache_file(path: str, version: int, metric: str, with_distractors: bool, k: int = DEFAULT_K) -> Path:
    """Where :func:`sweep_for` keeps the background sweep of a feature set across processes (it takes seconds on the
    default collection, hours at a million objects): ``<artifacts>/cache/sweeps/<digest>.parquet``, keyed by the
    feature set, its file version (a re-extraction or an added or removed image makes a new one), the metric, the
    distractor setting, k, the query sample and the grid's and reference points' settings."""
    settings = (
        DEFAULT_GRID_TABLES, DEFAULT_GRID_PROJECTIONS, DEFAULT_WIDTH_FACTORS, [c.label for c in reference_configs()],
        MAX_EVAL_QUERIES, QUERY_SAMPLE_SEED, SWEEP_COLUMNS,
    )  # fmt: skip
    key = f"{Path(path).resolve()}|{version}|{metric}|{with_distractors}|{k}|{settings}"
    return cbir_config.artifacts_dir() / "cache" / "sweeps" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.parquet"


def recommended_config(
    sweep: pd.DataFrame, n_indexed: int, budget_fraction: float = RECOMMEND_BUDGET_FRACTION
) -> IndexConfig | None:
    """The best-mAP LSH configuration of a sweep visiting at most ``budget_fraction`` of the indexed objects;
    ``None`` when none fits."""
    lsh = sweep[sweep["index"] == "lsh"]
    try:
        best = recommend(lsh, budget_fraction * n_indexed)
    except ValueError:
        return None
    return IndexConfig.from_row(best)


def recommended_for(
    path: str,
    version: int,
    metric: str = "euclidean",
    k: int = DEFAULT_K,
    kept_as: int | None = None,
    progress: Progress | None = None,
) -> IndexConfig | None:
    """The LSH setting :func:`recommended_config` picks from the background sweep of the feature set at ``path``
    (the tuning page's recommendation), without computing that sweep: read from it when it is on disk
    (:func:`sweep_for`'s file, kept under ``kept_as`` like the app's), else found by
    :func:`cbir.evaluation.sweep.budgeted_sweep` over the same grid (the same setting: only the sweep's settings
    above the visit budget and its reference points are left out) and kept on disk (``<artifacts>/cache/recommended``,
    keyed like the sweep, under ``kept_as`` as well). ``progress(settings done, settings in all)`` while it searches."""
    split = split_for(path, version, True)
    file = sweep_cache_file(path, version if kept_as is None else kept_as, metric, True, k)
    if file.is_file():
        try:
            return recommended_config(pd.read_parquet(file), split.n_indexed)
        except (OSError, ValueError):  # unreadable: found again below
            pass

    def compute() -> IndexConfig | None:
        grid = default_grid(width_sample(load_feature_set(path, version, SPLIT_COLUMNS)), metric)
        budget = RECOMMEND_BUDGET_FRACTION * split.n_indexed
        rows = budgeted_sweep(split, grid, budget, metric, k, progress=progress, workers=RECOMMEND_WORKERS)
        return recommended_config(rows, split.n_indexed)

    key = f"{file.stem}|{RECOMMEND_BUDGET_FRACTION}"  # under kept_as too: an image added or removed reuses it
    return kept_on_disk(cbir_config.artifacts_dir() / "cache" / "recommended", key, compute)


def lsh_defaults_for(path: str, version: int, metric: str = "euclidean") -> IndexConfig:
    """:func:`default_lsh_config` on the indexed rows of the feature set at ``path``."""
    return default_lsh_config(width_sample(load_feature_set(path, version, SPLIT_COLUMNS)), metric)


def nearest(values: Sequence[float], target: float) -> float:
    """The element of ``values`` closest to ``target`` (the sweep grid point nearest to a slider setting)."""
    return min(values, key=lambda value: abs(float(value) - float(target)))
