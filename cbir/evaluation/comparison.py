"""Model comparison: feature sets × (exact scan, LSH, the reference indexes) × (with, without distractors) on the
validation queries, and the distance distributions of the paper's Section 4.1.

:func:`compare` is the one loop; it takes the sweep and evaluation functions as arguments so that the app can hand
it its cached ones (shared with the tuning page) while the tests and scripts use the plain ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cbir.core import config as cbir_config
from cbir.core.names import INDEX_LABELS, METRICS, REFERENCE_KINDS
from cbir.core.storage import kept_on_disk, read_kept
from cbir.evaluation.distances import distance_table, pairwise_distance_sample
from cbir.evaluation.evaluate import (
    MAX_EVAL_QUERIES,
    MEASURE_COLUMNS,
    EvaluationResult,
    EvaluationSplit,
    split_collection,
)
from cbir.evaluation.hubness import hubness_summary, top_hubs
from cbir.evaluation.tuning import (
    REFERENCE_POLYTOPE_BITS,
    REFERENCE_POLYTOPE_TABLES,
    SWEEP_ON_REQUEST,
    default_lsh_config,
    evaluate_for,
    evaluate_pair_for,
    recommended_config,
    recommended_for,
    reference_configs,
    split_for,
    width_sample,
)
from cbir.features.extractor import FeatureExtractor
from cbir.features.sources import FeatureSet
from cbir.features.workspace import (
    base_version,
    complete_feature_sets,
    load_feature_set,
    weights_kind,
    with_versions,
)
from cbir.indexes.registry import DEFAULT_K, IndexConfig
from cbir.indexes.scan import SequentialScan

Progress = Callable[[str, int, int], None]  # (what, done, total)
SweepFn = Callable[[str, int, str], pd.DataFrame]  # (path, version, metric) -> sweep table with distractors
EvaluateFn = Callable[[str, int, IndexConfig, bool], EvaluationResult]  # (path, version, config, with_distractors)
# (path, version, config) -> (with, without the distractors): one index built, the distractors added to it
PairFn = Callable[[str, int, IndexConfig], tuple[EvaluationResult, EvaluationResult]]

COMPARISON_COLUMNS = [
    "feature_set",
    "backbone",
    "weights",
    "index",
    "config",
    "metric",
    "distractors",
    *MEASURE_COLUMNS,
    "n_all_queries",
    "query_ms",
    "single_query_ms",
]
PER_CLASS_COLUMNS = ["feature_set", "index", "distractors", "class", "n_queries", "map"]


@dataclass(frozen=True)
class ComparisonJob:
    """One cell of the comparison: a feature set (label, path, version) × index config × distractor setting."""

    label: str
    path: str
    version: int
    config: IndexConfig
    with_distractors: bool


@dataclass
class Comparison:
    """``table``: one row per job (:data:`COMPARISON_COLUMNS`); ``per_class``: :data:`PER_CLASS_COLUMNS`."""

    table: pd.DataFrame
    per_class: pd.DataFrame


def comparison_configs(
    feature_set: FeatureSet,
    metric: str = "euclidean",
    sweep: pd.DataFrame | None = None,
    references: bool | None = None,
    recommended: IndexConfig | None = None,
    kinds: Sequence[str] | None = None,
) -> list[IndexConfig]:
    """Exact scan, LSH at the configuration recommended by ``sweep`` (when given and one fits the budget), else at
    ``recommended`` (when given: :func:`cbir.evaluation.tuning.recommended_for`), else at
    :func:`cbir.evaluation.tuning.default_lsh_config`, and with ``references`` the reference indexes at their default
    settings: FAISS HNSW, and up to :data:`cbir.evaluation.tuning.SWEEP_ON_REQUEST` indexed objects also FAISS IVF-Flat,
    hnswlib and cross-polytope LSH (their builds take minutes at a million objects, where the tuning page runs them
    on request only). ``references=None``: only up to that size (HNSW's graph alone takes ~13 minutes at 1M on two
    cores, twice: with and without the distractors). ``kinds``: only these of the reference indexes (a page that
    draws them one by one)."""
    lsh = recommended
    n_indexed = int((feature_set.roles != "query").sum())
    if sweep is not None:
        lsh = recommended_config(sweep, n_indexed)
    configs = [
        IndexConfig("scan", metric),  # type: ignore[arg-type]
        lsh or default_lsh_config(width_sample(feature_set), metric),
    ]
    if references is None:
        references = n_indexed <= SWEEP_ON_REQUEST
    if not references:
        return configs
    allowed = REFERENCE_KINDS if n_indexed <= SWEEP_ON_REQUEST else ("hnsw",)
    return configs + [reference_config(kind, metric) for kind in allowed if kinds is None or kind in kinds]


def reference_config(kind: str, metric: str = "euclidean") -> IndexConfig:
    """The comparison page's setting of a reference index: ``kind``'s defaults, cross-polytope at the tuning page's
    reference setting (L, bits; IndexConfig's defaults are E2LSH's) with its probes and shortlist chosen at fit for
    the registry's default target recall (:data:`cbir.indexes.registry.DEFAULT_TARGET_RECALL`)."""
    if kind != "cross_polytope":
        return IndexConfig(kind, metric)  # type: ignore[arg-type]
    return IndexConfig(
        "cross_polytope",
        metric,  # type: ignore[arg-type]
        n_tables=REFERENCE_POLYTOPE_TABLES,
        bits=REFERENCE_POLYTOPE_BITS,
    )


def comparison_jobs(
    items: Sequence[tuple[str, str, int, Sequence[IndexConfig]]], distractor_settings: Sequence[bool] = (True, False)
) -> list[ComparisonJob]:
    """Jobs for ``(label, path, version, configs)`` items × distractor settings; "without distractors" is skipped
    for a collection that has none (it would index the same objects as "with")."""
    jobs = []
    for label, path, version, configs in items:
        has_distractors = bool((load_feature_set(path, version).roles == "distractor").any())
        for config in configs:
            for with_distractors in distractor_settings:
                if not with_distractors and not has_distractors and True in distractor_settings:
                    continue
                jobs.append(ComparisonJob(label, path, version, config, with_distractors))
    return jobs


def large_feature_sets(feature_sets: Sequence[tuple[str, str, int]]) -> list[str]:
    """Labels of the ``(label, path, version)`` feature sets with more than
    :data:`cbir.evaluation.tuning.SWEEP_ON_REQUEST`
    rows, whose background sweep takes too long to run unasked."""
    return [
        label
        for label, path, version in feature_sets
        if len(load_feature_set(path, version).features) > SWEEP_ON_REQUEST
    ]


def comparison_table(jobs: Sequence[ComparisonJob], results: Sequence[EvaluationResult]) -> Comparison:
    """Assemble evaluated jobs into the comparison table and the long per-class table."""
    rows, per_class = [], []
    for job, result in zip(jobs, results, strict=True):
        meta = load_feature_set(job.path, job.version).meta
        index_name = INDEX_LABELS[job.config.kind]
        distractors = "with" if job.with_distractors else "without"
        row = result.row()
        rows.append(
            {
                **row,
                "feature_set": job.label,
                "backbone": meta.get("backbone"),
                "weights": weights_kind(str(meta.get("weights_id", ""))),
                "index": index_name,
                "config": job.config.label,
                "distractors": distractors,
                "n_all_queries": result.n_all_queries if result.sampled else result.n_queries,
            }
        )
        per_class.append(result.per_class.assign(feature_set=job.label, index=index_name, distractors=distractors))
    table = pd.DataFrame(rows).reindex(columns=COMPARISON_COLUMNS)
    per_class_table = (
        pd.concat(per_class, ignore_index=True)[PER_CLASS_COLUMNS]
        if per_class
        else pd.DataFrame(columns=PER_CLASS_COLUMNS)
    )
    return Comparison(table=table, per_class=per_class_table)


def _kept_folder() -> Path:
    return cbir_config.artifacts_dir() / "cache" / "comparisons"


def _kept_key(
    feature_sets: Sequence[tuple[str, str, int]],
    metric: str,
    recommended: bool,
    k: int,
    distractor_settings: Sequence[bool],
    references: bool | None,
    kinds: Sequence[str] | None = None,
) -> str:
    """What a kept comparison depends on: the feature sets' versions and every setting (``kinds``: a part's)."""
    part = "" if kinds is None else f"|{tuple(kinds)}"
    return (
        f"{[(label, str(Path(path).resolve()), version) for label, path, version in feature_sets]}|{metric}|"
        f"{recommended}|{k}|{tuple(distractor_settings)}|{references}|{MAX_EVAL_QUERIES}|"
        f"{[c.label for c in reference_configs(metric)]}|{COMPARISON_COLUMNS}|added distractors{part}"
    )


def kept_comparison(
    feature_sets: Sequence[tuple[str, str, int]],
    metric: str = "euclidean",
    recommended: bool = True,
    k: int = DEFAULT_K,
    distractor_settings: Sequence[bool] = (True, False),
    references: bool | None = None,
) -> Comparison | None:
    """The comparison :func:`compare` with ``keep`` has kept on disk for these arguments, or ``None`` (nothing is
    computed): a page that draws the table in parts skips the parts when the whole is there."""
    key = _kept_key(feature_sets, metric, recommended, k, distractor_settings, references)
    return read_kept(_kept_folder(), key)  # type: ignore[no-any-return]


def _labelled(progress: Progress, what: str) -> Callable[[int, int], None]:
    """``progress`` as a ``(done, total)`` callback that says ``what``."""
    return lambda done, total: progress(what, done, total)


def compare(
    feature_sets: Sequence[tuple[str, str, int]],
    metric: str = "euclidean",
    recommended: bool = True,
    k: int = DEFAULT_K,
    distractor_settings: Sequence[bool] = (True, False),
    progress: Progress | None = None,
    sweep: SweepFn | None = None,
    evaluate: EvaluateFn | None = None,
    references: bool | None = None,
    keep: bool = False,
    kinds: Sequence[str] | None = None,
    evaluate_pair: PairFn | None = None,
) -> Comparison:
    """Evaluate every ``(label, path, version)`` feature set with the exact scan, LSH and (``references``: see
    :func:`comparison_configs`) the reference indexes, with and without its distractors.

    LSH runs at the setting :func:`cbir.evaluation.tuning.recommended_config` picks from the feature set's background
    sweep when ``recommended`` (else at the default setting): from ``sweep(path, version, metric)`` when given, else
    :func:`cbir.evaluation.tuning.recommended_for` (the same setting, read from the sweep when it is on disk, found
    without the sweep's costliest settings when it is not). ``evaluate(path, version, config, with_distractors)``
    defaults to :func:`cbir.evaluation.tuning.evaluate_for` at ``k``; the app passes its cached version. A reference
    index compared with and without the distractors is built once (``evaluate_pair(path, version, config)``, default
    :func:`cbir.evaluation.tuning.evaluate_pair_for`: the distractors added to the index built without them).
    ``kinds``: only these reference indexes (a part of the comparison, for a page that draws it as it grows).
    ``progress(what, done, total)`` within the recommendation, after it and after each evaluation. ``keep``: the
    result is kept on disk (``<artifacts>/cache/comparisons``, keyed by the feature sets' versions and every
    setting) and read back by later calls and processes.
    """

    def default_evaluate(path: str, version: int, config: IndexConfig, with_distractors: bool) -> EvaluationResult:
        return evaluate_for(path, version, config, with_distractors, k)

    def default_pair(path: str, version: int, config: IndexConfig) -> tuple[EvaluationResult, EvaluationResult]:
        return evaluate_pair_for(path, version, config, k)

    if keep:  # the whole comparison measured in one run, kept on disk: a later server draws it at once
        return kept_on_disk(
            _kept_folder(), _kept_key(feature_sets, metric, recommended, k, distractor_settings, references, kinds),
            lambda: compare(feature_sets, metric, recommended, k, distractor_settings, progress, sweep, evaluate,
                            references, kinds=kinds, evaluate_pair=evaluate_pair),
        )  # fmt: skip
    evaluate = evaluate or default_evaluate
    items = []
    for done, (label, path, version) in enumerate(feature_sets, start=1):
        table, lsh = None, None
        if recommended and sweep is not None:
            table = sweep(path, version, metric)
        elif recommended:  # the sweep's recommendation without the sweep (read from it when it is on disk)
            settings = _labelled(progress, f"Recommended LSH setting ({label}): settings") if progress else None
            lsh = recommended_for(path, version, metric, k, kept_as=base_version(path), progress=settings)
        if progress is not None and recommended:
            progress("Recommended LSH settings", done, len(feature_sets))
        configs = comparison_configs(load_feature_set(path, version), metric, table, references, lsh, kinds)
        items.append((label, path, version, configs))
    jobs = comparison_jobs(items, distractor_settings)
    return comparison_table(jobs, evaluate_jobs(jobs, evaluate, evaluate_pair or default_pair, progress))


def default_feature_sets(collection: str | Path | None = None) -> tuple[tuple[str, str, int], ...]:
    """``(label, path, version)`` of every complete feature set of ``collection`` (default: the configured one),
    newest first: what the comparison page compares when it opens (its "Feature sets" default)."""
    return with_versions(complete_feature_sets(collection))


def keep_default_comparison(
    collection: str | Path | None = None, progress: Progress | None = None
) -> tuple[tuple[str, str, int], ...]:
    """Compute ahead what the comparison page's first view shows and keep it on disk where the page reads it: the
    comparison of :func:`default_feature_sets` with the first metric (euclidean), LSH at its recommended setting and
    the reference indexes (:func:`compare` with ``keep``), each set's distance analysis and its hubness over the
    validation queries (the photos' figures need the model: on request). ``python -m cbir extract`` runs it, so the
    page opened after the setup reads everything (its 10 s goal) instead of computing 10-20 s in front of a person.
    Nothing when a set has more than :data:`cbir.evaluation.tuning.SWEEP_ON_REQUEST` rows (the page starts on the
    default LSH setting without the references there, and their builds take minutes) or when there is none; what is
    kept already is read, not computed again. Returns the feature sets done."""
    feature_sets = default_feature_sets(collection)
    if not feature_sets or large_feature_sets(feature_sets):
        return ()
    compare(feature_sets, METRICS[0], True, progress=progress, references=True, keep=True)
    for _, path, version in feature_sets:
        distance_analysis_for(path, version, keep=True)
        hubness_analysis_for(path, version, METRICS[0], keep=True)
    return feature_sets


def evaluate_jobs(
    jobs: Sequence[ComparisonJob], evaluate: EvaluateFn, evaluate_pair: PairFn, progress: Progress | None = None
) -> list[EvaluationResult]:
    """Each job's result, in order: ``evaluate`` each, but ``evaluate_pair`` once for a reference index's "with"
    job followed by its "without" one (one index built for both); ``progress("Comparison", done, total)``."""
    results: list[EvaluationResult] = []
    while len(results) < len(jobs):
        job = jobs[len(results)]
        after = jobs[len(results) + 1] if len(results) + 1 < len(jobs) else None
        paired = (job.path, job.version, job.config, False)
        if (
            job.config.kind in REFERENCE_KINDS
            and job.with_distractors
            and after is not None
            and ((after.path, after.version, after.config, after.with_distractors) == paired)
        ):
            results.extend(evaluate_pair(job.path, job.version, job.config))
        else:
            results.append(evaluate(job.path, job.version, job.config, job.with_distractors))
        if progress is not None:
            progress("Comparison", len(results), len(jobs))
    return results


# ----------------------------------------------------------------------------------------------------------
# Distance analysis (Section 4.1)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DistanceAnalysis:
    """Section 4.1 for one feature set (index split): ``table`` overall + per class means, ``sample`` pairs."""

    table: pd.DataFrame
    sample: pd.DataFrame


def distance_analysis(feature_set: FeatureSet, n_pairs: int = 20000, max_samples: int = 2000) -> DistanceAnalysis:
    """Mean euclidean distance / cosine similarity (overall, per class) and a random pair sample for histograms,
    on the index split like the paper's training-set analysis."""
    index = feature_set.roles == "index"
    labels = np.where(index, feature_set.labels, None)  # the other rows ignored; the features are not copied
    return DistanceAnalysis(
        table=distance_table(feature_set.features, labels, max_samples=max_samples),
        sample=pairwise_distance_sample(feature_set.features, n_pairs=n_pairs, rows=np.flatnonzero(index)),
    )


def distance_analysis_for(path: str, version: int, keep: bool = False) -> DistanceAnalysis:
    """:func:`distance_analysis` of the feature set at ``path``; with ``keep``, kept on disk across processes
    (``<artifacts>/cache/distances``, keyed by the feature set's version)."""
    if keep:
        folder = cbir_config.artifacts_dir() / "cache" / "distances"
        return kept_on_disk(folder, f"{Path(path).resolve()}|{version}", lambda: distance_analysis_for(path, version))
    return distance_analysis(load_feature_set(path, version))


def distance_summary(analyses: Mapping[str, DistanceAnalysis]) -> pd.DataFrame:
    """The distance tables of several feature sets stacked, with a ``feature_set`` column first."""
    frames = [analysis.table.assign(feature_set=name) for name, analysis in analyses.items()]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["feature_set", *[c for c in table.columns if c != "feature_set"]]]


# ----------------------------------------------------------------------------------------------------------
# Hubness (are the answers concentrated on a few objects?)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class HubnessAnalysis:
    """Hubness of the exact scan's top-k over one feature set (indexed rows incl. distractors).

    ``summary``: :func:`cbir.evaluation.hubness.hubness_summary` (``hub_share``, ``k_skewness`` over the validation
    queries;
    ``ood_hub_share``, ``ood_distinct`` over the out-of-domain photos when any were given); ``hubs``: the most
    frequent answers (:func:`cbir.evaluation.hubness.top_hubs` plus path, relpath, label); ``photo_answers``: the
    relpaths
    answered to each photo.
    """

    summary: dict[str, float]
    hubs: pd.DataFrame
    photo_answers: dict[str, list[str]]


def hubness_analysis(
    feature_set: FeatureSet,
    extractor: FeatureExtractor | None = None,
    photos: Mapping[str, Image.Image] | None = None,
    metric: str = "euclidean",
    k: int = DEFAULT_K,
    split: EvaluationSplit | None = None,
) -> HubnessAnalysis:
    """Hubness of the exact ``metric`` scan: over the validation queries (those of ``split`` when given: the
    tuning page's, whose exact answers are computed once), and over ``photos`` (embedded with ``extractor``,
    which must be the feature set's model) when both are given."""
    if split is None:
        split = split_collection(feature_set.features, feature_set.labels, feature_set.roles, with_distractors=True)
    ids = split.exact_ids(metric, k)
    indexed = feature_set.catalog.iloc[split.index_rows].reset_index(drop=True)
    photo_ids = None
    photo_answers: dict[str, list[str]] = {}
    if photos and extractor is not None:
        vectors = extractor.transform(list(photos.values()))
        photo_ids = SequentialScan(metric).fit(split.index_vectors).search(vectors, k)[1]
        photo_answers = {
            name: indexed["relpath"].iloc[row[row >= 0]].tolist() for name, row in zip(photos, photo_ids, strict=True)
        }
    hubs = top_hubs(ids, split.n_indexed)
    hubs = hubs.assign(
        path=indexed["path"].iloc[hubs["id"]].to_numpy(),
        relpath=indexed["relpath"].iloc[hubs["id"]].to_numpy(),
        label=indexed["label"].iloc[hubs["id"]].fillna("(distractor)").to_numpy(),
    )
    summary = hubness_summary(ids, split.n_indexed, out_of_domain_ids=photo_ids)
    return HubnessAnalysis(summary=summary, hubs=hubs, photo_answers=photo_answers)


def hubness_analysis_for(
    path: str,
    version: int,
    metric: str = "euclidean",
    _extractor: FeatureExtractor | None = None,
    keep: bool = False,
) -> HubnessAnalysis:
    """:func:`hubness_analysis` of the feature set at ``path``, over the sample photos of :mod:`cbir.data.samples` when
    ``_extractor`` (the feature set's model) is given and scikit-image is installed; with ``keep``, kept on disk
    across processes (``<artifacts>/cache/hubness``)."""
    from cbir.data.samples import SamplesUnavailableError, sample_photos

    if keep:
        key = _hubness_key(path, version, metric, _extractor is not None)
        return kept_on_disk(_hubness_folder(), key, lambda: hubness_analysis_for(path, version, metric, _extractor))
    photos = None
    if _extractor is not None:
        try:
            photos = sample_photos()
        except SamplesUnavailableError:
            photos = None
    split = split_for(path, version, True)  # the tuning page's split: a sample of the queries when there are many
    return hubness_analysis(load_feature_set(path, version), _extractor, photos, metric, split=split)


def _hubness_folder() -> Path:
    return cbir_config.artifacts_dir() / "cache" / "hubness"


def _hubness_key(path: str, version: int, metric: str, photos: bool) -> str:
    return f"{Path(path).resolve()}|{version}|{metric}|{photos}|{MAX_EVAL_QUERIES}"


def kept_hubness(path: str, version: int, metric: str = "euclidean", photos: bool = True) -> HubnessAnalysis | None:
    """The analysis :func:`hubness_analysis_for` with ``keep`` has kept on disk (``photos``: with the sample
    photos, computed with the model), or ``None``: a page reads it back without loading the model first."""
    return read_kept(_hubness_folder(), _hubness_key(path, version, metric, photos))  # type: ignore[no-any-return]


def hubness_summary_table(analyses: Mapping[str, HubnessAnalysis]) -> pd.DataFrame:
    """One row per feature set: ``feature_set`` and the :attr:`HubnessAnalysis.summary` figures."""
    return pd.DataFrame([{"feature_set": name, **analysis.summary} for name, analysis in analyses.items()])
