"""The paper's evaluation: mAP@k of k-NN queries, recall@k against the exact scan, visited objects, and the
hyper-parameter sweep (the only one: the CLI, the report and the pages all run :func:`sweep_split`).

An :class:`EvaluationResult` is one index on one split; :meth:`EvaluationResult.row` is its row in every results
table. The exact scan's answers, the reference of recall, are computed once per split, metric and k.

Data layout shared by every function here:

* ``features`` (n, d) float32, one row per image of the collection;
* ``labels`` (n,) object/str/int array: the class of each row; ``None``, NaN, ``""`` and ``-1`` mark
  unlabelled rows (distractors), which are never relevant to any query;
* ``roles`` (n,) strings in {"index", "query", "distractor"}: "index" rows are indexed, "query" rows are the
  queries, "distractor" rows are indexed only when ``with_distractors`` (their labels are ignored).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cbir.core.errors import ConfigError
from cbir.core.metrics import _as_series, _unlabelled_mask, average_precision_batch, recall_at_k
from cbir.core.names import score_name
from cbir.core.storage import atomic_output
from cbir.indexes.base import PROGRESS_SECONDS, BaseIndex
from cbir.indexes.polytope import bits_for
from cbir.indexes.registry import KINDS, kind_spec
from cbir.indexes.scan import SequentialScan
from cbir.indexes.warmup import warm_up

# (stage, done, total) of a long evaluation step: stage "building the index" (rows added), "searching" or "exact
# scan" (queries answered); called about every PROGRESS_SECONDS, so that a page's progress bar keeps moving
StageProgress = Callable[[str, int, int], None]
# Collections with more validation queries than this are evaluated on a fixed random sample of them (seeded by
# QUERY_SAMPLE_SEED): at 1M objects, 1,000 exact-scan queries take about a minute on two cores, and mAP and recall
# over 1,000 queries are within about ±0.02 of the full figures.
MAX_EVAL_QUERIES = 1000
QUERY_SAMPLE_SEED = 0

ROLES = ("index", "query", "distractor")
# the index setting of a result row (NaN / NA for the LSH parameters of an exact scan)
SETTING_COLUMNS = [
    "index",
    "n_tables",
    "n_projections",
    "bucket_width",
    "bits",
    "probes",
    "target_recall",
    "ef_search",
    "n_probe",
    "metric",
]
# what was measured for an index setting: quality, work and the sizes it was measured on
MEASURE_COLUMNS = [
    "map",
    "recall",
    "mean_score",
    "score_name",
    "mean_visited",
    "visited_fraction",
    "n_indexed",
    "n_queries",
]
# every column of EvaluationResult.row(), in order; the tables below are selections of it
ROW_COLUMNS = [
    *SETTING_COLUMNS,
    "k",
    *MEASURE_COLUMNS,
    "fit_seconds",
    "search_seconds",
    "query_ms",
    "single_query_ms",
]


# ----------------------------------------------------------------------------------------------------------
# Splitting a collection into index and queries
# ----------------------------------------------------------------------------------------------------------


class ExactAnswer(NamedTuple):
    """The exact scan's answers to a split's queries and what they cost (the scan's own evaluation reuses them)."""

    scores: np.ndarray  # (n_queries, k) float32
    ids: np.ndarray  # (n_queries, k) int64
    fit_seconds: float
    search_seconds: float


def _read_exact(file: Path, n_queries: int, k: int) -> ExactAnswer | None:
    try:
        with np.load(file, allow_pickle=False) as saved:
            answer = ExactAnswer(
                saved["scores"], saved["ids"], float(saved["fit_seconds"]), float(saved["search_seconds"])
            )
    except (OSError, ValueError, KeyError):
        return None
    return answer if answer.ids.shape == (n_queries, k) else None


def _write_exact(file: Path, answer: ExactAnswer) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(file, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **answer._asdict())


def search_in_chunks(
    index: BaseIndex, queries: np.ndarray, k: int, progress: StageProgress | None = None, stage: str = "searching"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``index.search(queries, k)`` and the seconds it took; with ``progress``, in chunks of queries sized to take
    about :data:`PROGRESS_SECONDS` each, calling ``progress(stage, answered, total)`` after each chunk."""
    if progress is None:
        started = time.perf_counter()
        scores, ids, visited = index.search(queries, k)
        return scores, ids, visited, time.perf_counter() - started
    parts, seconds, start, chunk = [], 0.0, 0, 4
    progress(stage, 0, len(queries))
    while start < len(queries) or not parts:
        started = time.perf_counter()
        parts.append(index.search(queries[start : start + chunk], k))
        elapsed = time.perf_counter() - started
        seconds += elapsed
        start += chunk
        progress(stage, min(start, len(queries)), len(queries))
        chunk = int(np.clip(chunk * PROGRESS_SECONDS / max(elapsed, 1e-4), 1, 2 * chunk + 64))
    scores, ids, visited = (np.concatenate([part[i] for part in parts]) for i in range(3))
    return scores, ids, visited, seconds


def sample_rows(rows: np.ndarray, max_rows: int | None, seed: int = QUERY_SAMPLE_SEED) -> np.ndarray:
    """``rows`` when there are at most ``max_rows`` of them (or ``max_rows`` is None), else a fixed random sample of
    ``max_rows`` of them (seeded, in ascending order)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))


@dataclass(frozen=True)
class EvaluationSplit:
    """Index/query rows of a collection with integer-coded labels, prepared once for many evaluations.

    The indexed rows are read from ``features`` on first use (:meth:`indexed_vectors`), not when the split is made:
    at 1M rows that copy takes seconds, and an evaluation answered from the exact scan's stored answers (the
    tuning page's first figure) never needs it."""

    features: np.ndarray = field(compare=False, repr=False)  # (n, d) the collection's rows (a memory map: a store)
    query_vectors: np.ndarray  # (n_queries, d) float32
    index_label_codes: np.ndarray  # (n_indexed,) int64, -1 = never relevant
    query_label_codes: np.ndarray  # (n_queries,) int64
    n_relevant: np.ndarray  # (n_queries,) int64: R of each query
    class_names: np.ndarray  # class name of each code
    index_rows: np.ndarray  # positions of indexed rows in the collection
    query_rows: np.ndarray  # positions of query rows in the collection (the sample, when sampled)
    n_queries_total: int = -1  # query rows of the collection (-1: all of them are in the split)
    # a folder where the exact scan's answers are kept across processes (None: only in memory)
    cache_dir: Path | None = field(default=None, compare=False)
    # (metric, k) -> the exact scan's answers: computed once, shared by every evaluation
    _exact: dict[tuple[str, int], ExactAnswer] = field(default_factory=dict, compare=False, repr=False)
    # the indexed rows once read (indexed_vectors), and the lock that makes two readers share one copy
    _gathered: list[np.ndarray] = field(default_factory=list, compare=False, repr=False)
    _gather_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def n_indexed(self) -> int:
        return len(self.index_rows)

    @property
    def index_vectors(self) -> np.ndarray:
        """(n_indexed, d) float32, C-contiguous: the indexed rows (:meth:`indexed_vectors`)."""
        return self.indexed_vectors()

    def indexed_vectors(self, progress: StageProgress | None = None) -> np.ndarray:
        """The indexed rows as one (n_indexed, d) float32 C-contiguous array, copied from :attr:`features` on the
        first call (``progress("reading the rows", done, total)`` as it goes) and kept; a concurrent caller waits
        for that copy instead of making a second one."""
        with self._gather_lock:
            if not self._gathered:
                self._gathered.append(_gather(self.features, self.index_rows, progress))
            return self._gathered[0]

    @property
    def n_queries(self) -> int:
        return len(self.query_vectors)

    @property
    def n_all_queries(self) -> int:
        """The query rows of the collection (more than :attr:`n_queries` when the split holds a sample)."""
        return self.n_queries if self.n_queries_total < 0 else self.n_queries_total

    @property
    def sampled(self) -> bool:
        """Whether the split's queries are a random sample of the collection's."""
        return self.n_all_queries > self.n_queries

    def exact_ids(self, metric: str, k: int, progress: StageProgress | None = None) -> np.ndarray:
        """(n_queries, k) int64: the exact scan's top-k ids of every query under ``metric`` (-1 pads a short list),
        the reference of recall@k (see :meth:`exact_answer`)."""
        return self.exact_answer(metric, k, progress).ids

    def exact_answer(self, metric: str, k: int, progress: StageProgress | None = None) -> ExactAnswer:
        """The exact scan's answers to the split's queries: computed on first use (``progress("exact scan", done,
        total)`` while it runs), kept on the split and, with :attr:`cache_dir`, in a file there that later
        processes read instead of scanning again."""
        key = (metric, int(k))
        if key not in self._exact:
            file = None if self.cache_dir is None else self.cache_dir / f"exact-{metric}-k{int(k)}.npz"
            answer = _read_exact(file, self.n_queries, int(k)) if file is not None else None
            if answer is None:
                vectors = self.indexed_vectors(progress)
                warm_up(progress)  # the times below measure the scan, not the JIT
                index = SequentialScan(metric)  # type: ignore[arg-type]
                started = time.perf_counter()
                index.fit(vectors)
                fit_seconds = time.perf_counter() - started
                scores, ids, _, seconds = search_in_chunks(index, self.query_vectors, int(k), progress, "exact scan")
                answer = ExactAnswer(scores, ids, fit_seconds, seconds)
                if file is not None:
                    _write_exact(file, answer)
            self._exact[key] = answer
        return self._exact[key]

    def average_precision(self, ids: np.ndarray) -> np.ndarray:
        """AP@k of every query from its result ids: ``ids`` (n_queries, k) int positions in the indexed rows, best
        first, -1 for padding. Returns (n_queries,) float64 (see :func:`average_precision_batch`)."""
        returned = ids >= 0
        result_codes = np.where(returned, self.index_label_codes[np.where(returned, ids, 0)], -1)
        relevant = returned & (result_codes == self.query_label_codes[:, None]) & (result_codes >= 0)
        return average_precision_batch(relevant, self.n_relevant)


def split_collection(
    features: np.ndarray,
    labels: Sequence[Any] | pd.Series,
    roles: Sequence[str] | pd.Series,
    with_distractors: bool = True,
    max_queries: int | None = None,
    cache_dir: Path | None = None,
) -> EvaluationSplit:
    """Validate the collection arrays and split them into indexed rows and queries (see module docstring); with
    ``max_queries``, the queries are a fixed random sample (:func:`sample_rows`) of at most that many query rows.
    ``cache_dir``: see :attr:`EvaluationSplit.cache_dir`. The query rows are copied at once, the indexed rows when
    first used (:meth:`EvaluationSplit.indexed_vectors`: a 1M-row memory map takes seconds)."""
    features = np.asanyarray(features)  # a memory map stays one: the split reads from it
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must be a non-empty 2-D array (n, d), got shape {features.shape}")
    shapes = np.shape(labels), np.shape(roles)
    if shapes[0] != (len(features),) or shapes[1] != (len(features),):
        raise ValueError(
            f"labels {shapes[0]} and roles {shapes[1]} must both have shape ({len(features)},) like features"
        )
    # pandas columns are kept as they are (a store's catalog: arrow strings, hashed without a million Python objects)
    labels, roles = _as_series(labels), _as_series(roles)
    role_codes, role_names = pd.factorize(roles, use_na_sentinel=False)
    role_names = [str(name) for name in role_names]
    unknown = sorted(set(role_names) - set(ROLES))
    if unknown:
        raise ConfigError(f"roles must be in {ROLES}, found {unknown}")
    has_role = {
        role: role_codes == role_names.index(role) if role in role_names else np.zeros(len(roles), dtype=bool)
        for role in ROLES
    }
    is_query, is_distractor = has_role["query"], has_role["distractor"]
    is_indexed = has_role["index"] | (is_distractor & with_distractors)
    if not is_query.any():
        raise ConfigError('no rows with role "query"')
    if not is_indexed.any():
        raise ConfigError('no rows to index (role "index", or "distractor" with distractors enabled)')
    unlabelled = _unlabelled_mask(labels) | is_distractor
    if (unlabelled & is_query).any():
        raise ConfigError(f"{int((unlabelled & is_query).sum())} query rows have no label; queries need a class")
    codes = np.full(len(labels), -1, dtype=np.int64)
    labelled_codes, class_names = pd.factorize(labels[~unlabelled], sort=True)
    codes[~unlabelled] = labelled_codes
    index_rows = np.flatnonzero(is_indexed)
    all_query_rows = np.flatnonzero(is_query)
    query_rows = sample_rows(all_query_rows, max_queries)
    index_codes = codes[index_rows]
    query_codes = codes[query_rows]
    class_sizes = np.bincount(index_codes[index_codes >= 0], minlength=len(class_names))
    return EvaluationSplit(
        features=features,
        query_vectors=np.ascontiguousarray(features[query_rows], dtype=np.float32),
        index_label_codes=index_codes,
        query_label_codes=query_codes,
        n_relevant=class_sizes[query_codes].astype(np.int64),
        class_names=np.asarray(class_names, dtype=object),
        index_rows=index_rows,
        query_rows=query_rows,
        n_queries_total=len(all_query_rows),
        cache_dir=cache_dir,
    )


GATHER_CHUNK_BYTES = 8 << 20  # _gather copies this much at a time: numpy holds the GIL while it copies (and faults)


def _gather(features: np.ndarray, rows: np.ndarray, progress: StageProgress | None, chunk: int = 0) -> np.ndarray:
    """``features[rows]`` as a C-contiguous float32 array, copied ``chunk`` rows at a time (default: 8 MiB of them;
    one float32 copy, never a float16 one beside it) with ``progress("reading the rows", done, total)``."""
    chunk = chunk or max(1, GATHER_CHUNK_BYTES // (4 * features.shape[1]))
    out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = features[rows[start : start + chunk]]
        if progress is not None:
            progress("reading the rows", min(start + chunk, len(rows)), len(rows))
    return out


# ----------------------------------------------------------------------------------------------------------
# Evaluation of one index
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult:
    """Quality and cost of one index on one collection (the paper's result tables).

    ``mean_score`` is the mean over all returned results of the Euclidean distance or of the cosine
    similarity (``score_name`` says which); ``visited_fraction = mean_visited / n_indexed``; ``recall`` is the mean
    recall@k against the exact scan with the same metric on the same split (1.0 for the scan itself).
    """

    map: float
    recall: float
    mean_score: float
    score_name: str
    mean_visited: float
    visited_fraction: float
    per_class: pd.DataFrame  # columns: class, n_queries, map
    ap: np.ndarray  # (n_queries,) float64
    recall_per_query: np.ndarray  # (n_queries,) float64, recall@k against the exact scan
    fit_seconds: float
    search_seconds: float
    n_indexed: int
    n_queries: int
    k: int
    metric: str
    index_params: dict[str, Any] = field(default_factory=dict)
    n_all_queries: int = -1  # the collection's query rows when n_queries is a sample of them (-1: not sampled)
    # ms per query searched one at a time (the Search page's mode: :func:`time_single_queries`; NaN: not measured)
    single_query_ms: float = float("nan")

    @property
    def sampled(self) -> bool:
        """Whether the queries were a random sample of the collection's (:data:`MAX_EVAL_QUERIES`)."""
        return self.n_all_queries > self.n_queries

    @property
    def query_ms(self) -> float:
        """Search time per query in milliseconds, the mean over the batch of queries (one ``search`` call on all
        cores; :attr:`single_query_ms` is the time of one query searched alone)."""
        return 1000.0 * self.search_seconds / max(self.n_queries, 1)

    def row(self) -> dict[str, Any]:
        """This result as one row of a results table, columns :data:`ROW_COLUMNS`: the index setting (``index``
        "scan", "lsh", "hnsw", "ivf_flat", "hnswlib" or "cross_polytope"; E2LSH's g, h, w, probes; cross-polytope's
        L (``n_tables``), bits per table, probes (those chosen at fit with a ``target_recall``; 0: none); HNSW's
        ``ef_search`` (hnswlib's ef); IVF's ``n_probe``; ``None`` where they do not apply), then quality and cost.
        Every table (sweep, comparison, report, CLI) is made of these rows."""
        params = self.index_params
        kind = params.get("index")
        declared = kind_spec(kind).row_fields if kind in KINDS else ()  # the fields this kind's rows give
        values = {**params, "ef_search": params.get("ef_search", params.get("ef"))}
        values["target_recall"] = params.get("target_recall") or 0.0
        if "bits" in declared and params.get("reduce_dim"):
            values["bits"] = bits_for(int(params["reduce_dim"]), int(params["n_projections"]), params.get("last_dim"))
        return {
            "index": kind,
            **{name: values.get(name) if name in declared else None for name in SETTING_COLUMNS[1:-1]},
            "metric": self.metric,
            "k": self.k,
            "map": self.map,
            "recall": self.recall,
            "mean_score": self.mean_score,
            "score_name": self.score_name,
            "mean_visited": self.mean_visited,
            "visited_fraction": self.visited_fraction,
            "n_indexed": self.n_indexed,
            "n_queries": self.n_queries,
            "fit_seconds": self.fit_seconds,
            "search_seconds": self.search_seconds,
            "query_ms": self.query_ms,
            "single_query_ms": self.single_query_ms,
        }


def score_answers(
    split: EvaluationSplit,
    scores: np.ndarray,
    ids: np.ndarray,
    visited: np.ndarray,
    metric: str,
    k: int,
    fit_seconds: float,
    search_seconds: float,
    index_params: dict[str, Any],
    progress: StageProgress | None = None,
) -> EvaluationResult:
    """The :class:`EvaluationResult` of an index's answers to the split's queries: ``scores`` / ``ids`` (n_queries, k)
    as :meth:`~cbir.indexes.base.BaseIndex.search` returns them, ``visited`` (n_queries,) (-1: not counted),
    ``index_params`` (:func:`row_params`) and the times they took."""
    returned = ids >= 0
    ap = split.average_precision(ids)
    recall = recall_at_k(ids, split.exact_ids(metric, k, progress), k)
    per_class = (
        pd.DataFrame({"class": split.class_names[split.query_label_codes], "ap": ap})
        .groupby("class", sort=True)["ap"]
        .agg(n_queries="size", map="mean")
        .reset_index()
    )
    # an index that does not count its distance computations (hnswlib): visited is unknown, not zero
    mean_visited = float(visited.mean()) if (visited >= 0).all() else float("nan")
    return EvaluationResult(
        map=float(ap.mean()),
        recall=float(recall.mean()),
        mean_score=float(scores[returned].mean()) if returned.any() else float("nan"),
        score_name=score_name(metric),
        mean_visited=mean_visited,
        visited_fraction=mean_visited / split.n_indexed,
        per_class=per_class,
        ap=ap,
        recall_per_query=recall,
        fit_seconds=fit_seconds,
        search_seconds=search_seconds,
        n_indexed=split.n_indexed,
        n_queries=split.n_queries,
        k=k,
        metric=metric,
        index_params=index_params,
        n_all_queries=split.n_all_queries,
    )


# the scan's time is measured again in every process (like every other index's), on at most this many
# query x object pairs: all the queries of the default collection, a sample at a million objects
SCAN_TIMING_PAIRS = 20_000_000


def time_scan(
    index: SequentialScan, split: EvaluationSplit, k: int, progress: StageProgress | None = None
) -> tuple[float, float]:
    """``(fit_seconds, search_seconds)`` of the exact scan on the split, measured now, the way every other index is
    measured (:func:`search_in_chunks`, after the warm-up), so that its time compares with theirs: the stored answers
    carry the times of the process that computed them. At most :data:`SCAN_TIMING_PAIRS` query x object pairs are
    timed (the first queries); ``search_seconds`` is then scaled to all the queries."""
    vectors = split.indexed_vectors(progress)
    warm_up(progress)
    started = time.perf_counter()
    index.fit(vectors)
    fit_seconds = time.perf_counter() - started
    n_timed = int(np.clip(SCAN_TIMING_PAIRS // max(split.n_indexed, 1), 1, max(split.n_queries, 1)))
    _, _, _, seconds = search_in_chunks(index, split.query_vectors[:n_timed], k, progress, "timing the exact scan")
    return fit_seconds, seconds * split.n_queries / n_timed


# One query at a time, the Search page's mode (cbir.indexes.threads: numba's serial kernels, BLAS on one thread):
# timed on a fixed sample of at most SINGLE_QUERY_SAMPLE validation queries, after SINGLE_QUERY_WARMUP untimed ones,
# stopping early once SINGLE_QUERY_SECONDS are spent (an exact scan of 1M objects takes ~0.2 s a query)
SINGLE_QUERY_SAMPLE = 100
SINGLE_QUERY_WARMUP = 3
SINGLE_QUERY_SECONDS = 2.0


def time_single_queries(
    index: BaseIndex, split: EvaluationSplit, k: int, progress: StageProgress | None = None
) -> float:
    """Milliseconds per query of the fitted ``index`` searching the split's queries one at a time (one
    ``search(q[None], k)`` call each, as the Search page does: :func:`cbir.indexes.threads.queries` runs a single
    query on one thread), the mean over a fixed sample of at most :data:`SINGLE_QUERY_SAMPLE` of them (fewer when
    they take more than :data:`SINGLE_QUERY_SECONDS` in all) after :data:`SINGLE_QUERY_WARMUP` untimed ones."""
    queries = split.query_vectors[sample_rows(np.arange(split.n_queries), SINGLE_QUERY_SAMPLE)]
    stage = "timing one query at a time"
    if progress is not None:
        progress(stage, 0, len(queries))
    for query in queries[:SINGLE_QUERY_WARMUP]:
        index.search(query[None], k)
    seconds, done = 0.0, 0
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], k)
        seconds += time.perf_counter() - started
        done += 1
        if seconds > SINGLE_QUERY_SECONDS and done >= SINGLE_QUERY_WARMUP:
            break
    if progress is not None:
        progress(stage, len(queries), len(queries))
    return 1000.0 * seconds / done


def row_params(index: BaseIndex, fitted: bool = True) -> dict[str, Any]:
    """The setting of ``index`` as a result row gives it: ``index`` ("scan", "lsh", "hnsw", "ivf_flat"…), its
    constructor's parameters and, when ``fitted``, the search settings it chose at fit."""
    params = {"index": index.kind.removesuffix("_index"), **index.params}
    return {**params, **index.fitted_params} if fitted else params


def evaluate_split(
    index: BaseIndex,
    split: EvaluationSplit,
    k: int = 10,
    refit: bool = True,
    progress: StageProgress | None = None,
    single: bool = True,
) -> EvaluationResult:
    """Fit ``index`` on the split's indexed rows (unless ``refit=False``), search all queries and score them;
    ``progress(stage, done, total)`` while it builds (an index that reports it), searches and, the first time,
    runs the exact scan that recall is measured against. The exact scan itself is answered from
    :meth:`EvaluationSplit.exact_answer` (computed once per split, metric and k) and timed again now
    (:func:`time_scan`). ``single``: also time one query at a time (:func:`time_single_queries`; else
    ``single_query_ms`` is NaN: a caller that needs the figures only, not the times, skips up to ~100 searches)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")
    params = row_params(index, fitted=False)
    if type(index) is SequentialScan and refit:  # the scan is its own reference: recall 1 without a second search
        exact = split.exact_answer(index.metric, int(k), progress)  # stored answers need neither rows nor kernels
        visited = np.full(split.n_queries, split.n_indexed, dtype=np.int64)
        seconds = time_scan(index, split, int(k), progress)
        result = score_answers(split, exact.scores, exact.ids, visited, index.metric, int(k), *seconds, params)
        return replace(result, single_query_ms=time_single_queries(index, split, int(k), progress))
    fit_seconds = 0.0
    if refit:
        vectors = split.indexed_vectors(progress)
        warm_up(progress)
        started = time.perf_counter()
        index.fit(vectors, progress=progress)
        fit_seconds = time.perf_counter() - started
    elif index.n_objects != split.n_indexed:
        raise ValueError(f"index holds {index.n_objects} objects but the split indexes {split.n_indexed}")
    else:
        warm_up(progress)
    params = row_params(index)  # a row gives the settings searched with (a target recall's choice)
    scores, ids, visited, search_seconds = search_in_chunks(index, split.query_vectors, int(k), progress)
    result = score_answers(
        split, scores, ids, visited, index.metric, int(k), fit_seconds, search_seconds, params, progress
    )
    if not single:
        return result
    return replace(result, single_query_ms=time_single_queries(index, split, int(k), progress))


def evaluate(
    index: BaseIndex,
    features: np.ndarray,
    labels: Sequence[Any],
    roles: Sequence[str],
    k: int = 10,
    with_distractors: bool = True,
    metric: str | None = None,
) -> EvaluationResult:
    """Fit ``index`` on the collection's indexed rows, run every query, and report mAP@k and costs.

    Args:
        index: an unfitted (or previously fitted: it is refitted) :class:`~cbir.indexes.scan.SequentialScan` or
            :class:`~cbir.indexes.lsh.LSHIndex`.
        features: (n, d) float32; labels: (n,) classes (None for distractors); roles: (n,) "index" /
            "query" / "distractor".
        k: results per query and AP cut-off.
        with_distractors: index the "distractor" rows too (the paper's "introducing distractor" tables).
        metric: optional guard: must equal ``index.metric`` when given.

    Returns:
        :class:`EvaluationResult` (mAP, per-class mAP, mean distance/similarity, visited objects, timings).
    """
    if metric is not None and metric != index.metric:
        raise ConfigError(f"metric={metric!r} but the index was built with metric={index.metric!r}")
    return evaluate_split(index, split_collection(features, labels, roles, with_distractors), k=k)
