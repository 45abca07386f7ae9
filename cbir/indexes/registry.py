"""The registry of index kinds and :class:`IndexConfig`, one index setting.

Each kind declares once, in :data:`KINDS`, how it is built from a setting, which setting field is its search-time
knob (and the attribute of a fitted index that holds it), which fields a results-table row gives, and its label.
:class:`IndexConfig` (a cache key: frozen, hashable), the CLI, the pages and the plots ask the registry instead of
switching on the kind, so a new kind is one :class:`KindSpec` here and its name in :mod:`cbir.core.names`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cbir.core.errors import ConfigError
from cbir.core.names import INDEX_KINDS, INDEX_LABELS, METRICS, IndexKind, Metric, score_name
from cbir.indexes.base import BaseIndex
from cbir.indexes.blocks import BlockPolytopeIndex
from cbir.indexes.lsh import LSHIndex
from cbir.indexes.polytope import hashes_for_bits
from cbir.indexes.reference import (
    DEFAULT_EF_SEARCH,
    DEFAULT_LINKS,
    DEFAULT_N_PROBE,
    HNSWIndex,
    HnswlibIndex,
    IVFFlatIndex,
)
from cbir.indexes.scan import SequentialScan

DEFAULT_K = 10
# The paper's best web-app index (Section 7): g=7 tables, h=2 projections; w comes from the data.
DEFAULT_TABLES = 7
DEFAULT_PROJECTIONS = 2
# The uint8 shortlist (score_dim of the bucket indexes) as benchmarks/ann.py runs it: candidates scored on uint8 codes
# of this many principal axes (at most the features' dimension), the best this many of them ranked exactly. On the
# real features R=30 of 128-axis codes keeps the recall of R=100 of 48 float32 coordinates, faster (README, "uint8").
UINT8_SCORE_DIM = 128
UINT8_RERANK = 30
# Cross-polytope LSH as the app runs it: hashed on 48 PCA coordinates, with the uint8 shortlist (benchmarks/ann.py's
# best family on the real features; README, "Approximate search")
POLYTOPE_REDUCE_DIM = 48
# bits per table: 0 (the default) chooses them at fit with the target recall (BlockPolytopeIndex.choose_bits: the
# cheapest of log2(n) - 2, - 3, - 4), FIXED_POLYTOPE_BITS without one; any other value is kept as given
DEFAULT_POLYTOPE_BITS = 0
FIXED_POLYTOPE_BITS = 10
# Cross-polytope LSH chooses its probes T and shortlist R at fit, for this recall@10 on indexed rows searched as
# queries (BlockPolytopeIndex's target_recall: a rule, not a setting picked by hand per data set; README, issue 20);
# IndexConfig(target_recall=0) searches with the given probes and UINT8_RERANK instead
DEFAULT_TARGET_RECALL = 0.9


@dataclass(frozen=True)
class IndexConfig:
    """One index setting (hashable: a cache key). Which fields matter depends on ``kind``: E2LSH (``"lsh"``) g, h, w,
    probes, seed; the reference indexes (:mod:`cbir.indexes.reference`) FAISS HNSW (``"hnsw"``) and hnswlib
    (``"hnswlib"``)
    ``ef_search``, FAISS IVF-Flat (``"ivf_flat"``) ``n_probe``; cross-polytope LSH (``"cross_polytope"``,
    :class:`cbir.indexes.blocks.BlockPolytopeIndex` on :data:`POLYTOPE_REDUCE_DIM` PCA coordinates with a shortlist of
    :data:`UINT8_RERANK` scored on uint8 codes of :data:`UINT8_SCORE_DIM` axes, the README's best setting)
    ``n_tables`` (L), ``bits`` per table (0, the default: chosen at fit with ``target_recall``, else
    :data:`FIXED_POLYTOPE_BITS`), ``target_recall`` (default :data:`DEFAULT_TARGET_RECALL`: the probes and the
    shortlist chosen at fit for that recall@10, ``probes`` then being only a record of the choice; 0: search with
    ``probes`` and a shortlist of :data:`UINT8_RERANK`), probes, seed."""

    kind: IndexKind = "scan"
    metric: Metric = "euclidean"
    n_tables: int = DEFAULT_TABLES
    n_projections: int = DEFAULT_PROJECTIONS
    bucket_width: float = 1.0
    probes: int = 0
    seed: int = 0
    ef_search: int = DEFAULT_EF_SEARCH
    n_probe: int = DEFAULT_N_PROBE
    bits: int = DEFAULT_POLYTOPE_BITS
    target_recall: float = DEFAULT_TARGET_RECALL

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if not 0.0 <= self.target_recall <= 1.0:
            raise ConfigError(f"target_recall must be in [0, 1] (0: none), got {self.target_recall}")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> IndexConfig:
        """The setting of a results-table row (:meth:`cbir.evaluation.evaluate.EvaluationResult.row`, a sweep row):
        the fields its kind declares (:attr:`KindSpec.row_fields`), cast to the field types."""
        spec = kind_spec(row["index"])
        return cls(row["index"], row["metric"], **{name: _FIELD_TYPES[name](row[name]) for name in spec.row_fields})

    @property
    def spec(self) -> KindSpec:
        return KINDS[self.kind]

    def build(self) -> BaseIndex:
        """A new, unfitted index."""
        return self.spec.build(self)

    @property
    def fit_key(self) -> IndexConfig:
        """This setting without its search-time knobs (HNSW's ef, IVF's nprobe, LSH's probes): settings with the
        same key share one fitted index, set to each by :meth:`tune`."""
        return replace(self, **_KNOB_DEFAULTS)

    def tune(self, index: BaseIndex) -> None:
        """Set the search-time knob of this setting on a fitted ``index`` of :attr:`fit_key`'s setting."""
        spec = self.spec
        if spec.knob is not None:
            setattr(index, spec.knob_attribute or spec.knob, getattr(self, spec.knob))

    @property
    def score_name(self) -> str:
        return score_name(self.metric)

    @property
    def label(self) -> str:
        return f"{self.spec.describe(self)} ({self.metric})"


@dataclass(frozen=True)
class KindSpec:
    """What the rest of cbir needs to know about one index kind.

    ``knob``: the :class:`IndexConfig` field that is set on a fitted index at search time (None: no knob), held by
    the index's attribute ``knob_attribute`` (default: the same name). ``row_fields``: the fields a results row
    gives for this kind. ``describe``: the setting in words, without the metric."""

    build: Callable[[IndexConfig], BaseIndex]
    describe: Callable[[IndexConfig], str]
    row_fields: tuple[str, ...] = ()
    knob: str | None = None
    knob_attribute: str | None = None
    seeded: bool = False  # whether the setting's seed changes the index (random projections, rotations)


def _build_polytope(config: IndexConfig) -> BaseIndex:
    """Cross-polytope LSH with the uint8 codes kept in bucket order (:class:`cbir.indexes.blocks.BlockPolytopeIndex`:
    the same buckets, probes and shortlist as :class:`cbir.indexes.polytope.CrossPolytopeIndex`, each probed bucket
    scored as one contiguous block; README, "Approximate search")."""
    hashes, last_dim = hashes_for_bits(POLYTOPE_REDUCE_DIM, config.bits or FIXED_POLYTOPE_BITS)
    return BlockPolytopeIndex(
        config.n_tables,
        hashes,
        last_dim,
        metric=config.metric,
        seed=config.seed,
        probes=config.probes,
        reduce_dim=POLYTOPE_REDUCE_DIM,
        rerank=UINT8_RERANK,
        score_dim=UINT8_SCORE_DIM,  # capped at the features' dimension by the PCA
        target_recall=config.target_recall or None,
        choose_bits=bool(config.target_recall) and not config.bits,
    )


def _describe_polytope(config: IndexConfig) -> str:
    """E.g. "cross-polytope LSH PCA-48 L=8 b=10 T=8 R=30 of uint8 PCA-128", or with the rule "... L=8 b, T, R
    chosen at fit for recall@10 0.9 of ..." (what it chose: a results row's ``bits`` and ``probes``, the fitted
    index's ``setting``, e.g. "b8 T3 R25 chosen for recall@10 0.9")."""
    bits = config.bits or FIXED_POLYTOPE_BITS
    if config.target_recall:
        chosen = "b, T, R" if not config.bits else f"b={bits} T, R"
        setting = f"{chosen} chosen at fit for recall@10 {config.target_recall:g}"
    else:
        setting = f"b={bits} T={config.probes} R={UINT8_RERANK}"
    return (
        f"{INDEX_LABELS['cross_polytope']} PCA-{POLYTOPE_REDUCE_DIM} L={config.n_tables} {setting} "
        f"of uint8 PCA-{UINT8_SCORE_DIM}"
    )


def _describe_lsh(config: IndexConfig) -> str:
    probes = f", probes={config.probes}" if config.probes else ""
    return f"LSH g={config.n_tables} h={config.n_projections} w={config.bucket_width:.3g}{probes}"


KINDS: dict[str, KindSpec] = {
    "scan": KindSpec(
        build=lambda c: SequentialScan(c.metric),
        describe=lambda c: "exact scan",
    ),
    "lsh": KindSpec(
        build=lambda c: LSHIndex(
            c.n_tables, c.n_projections, c.bucket_width, metric=c.metric, seed=c.seed, probes=c.probes
        ),
        describe=_describe_lsh,
        row_fields=("n_tables", "n_projections", "bucket_width", "probes"),
        knob="probes",
        seeded=True,
    ),
    "hnsw": KindSpec(
        build=lambda c: HNSWIndex(c.metric, ef_search=c.ef_search),
        describe=lambda c: f"{INDEX_LABELS['hnsw']} M={DEFAULT_LINKS} ef={c.ef_search}",
        row_fields=("ef_search",),
        knob="ef_search",
    ),
    "hnswlib": KindSpec(
        build=lambda c: HnswlibIndex(c.metric, ef=c.ef_search),
        describe=lambda c: f"{INDEX_LABELS['hnswlib']} M={DEFAULT_LINKS} ef={c.ef_search}",
        row_fields=("ef_search",),
        knob="ef_search",
        knob_attribute="ef",
    ),
    "ivf_flat": KindSpec(
        build=lambda c: IVFFlatIndex(c.metric, n_probe=c.n_probe),
        describe=lambda c: f"{INDEX_LABELS['ivf_flat']} nprobe={c.n_probe}",
        row_fields=("n_probe",),
        knob="n_probe",
    ),
    "cross_polytope": KindSpec(
        build=_build_polytope,
        describe=_describe_polytope,
        row_fields=("n_tables", "probes", "bits", "target_recall"),
        knob="probes",
        seeded=True,
    ),
}
assert set(KINDS) == set(INDEX_KINDS), "every index kind of cbir.core.names is registered here"

_FIELDS = {f.name: f for f in dataclasses.fields(IndexConfig)}
_FIELD_TYPES: dict[str, Callable[[Any], Any]] = {
    name: float if f.type in ("float", float) else int for name, f in _FIELDS.items() if name not in ("kind", "metric")
}
# every kind's knob at its default: what fit_key resets
_KNOB_DEFAULTS = {spec.knob: _FIELDS[spec.knob].default for spec in KINDS.values() if spec.knob is not None}


def kind_spec(kind: str) -> KindSpec:
    """The registered :class:`KindSpec` of ``kind``; a :class:`ConfigError` naming the kinds otherwise."""
    if kind not in KINDS:
        raise ConfigError(f"index kind must be one of {tuple(KINDS)}, got {kind!r}")
    return KINDS[kind]
