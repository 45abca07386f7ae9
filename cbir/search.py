"""Query by image over a feature set: :class:`IndexConfig` names an index, :class:`SearchEngine` embeds a query with
the feature set's own model and answers it with a :class:`QueryAnswer` (the results as a table, timings, visited).

Every row of the collection is searchable (a user looks for any image; a collection image finds itself first).
One :class:`SearchEngine` per feature set is shared by all the app's sessions, so its index cache is locked.

The engine follows its feature store as it grows and shrinks (:mod:`cbir.growth`, from this process or another):
before each query it compares the store's commit point with the one it last read, and on a change it reads the new
catalog, fetches the features of the new rows only, and updates every fitted index in place (``add`` appends to the
scan matrix and the LSH buckets, ``remove`` tombstones); an index is updated on a copy that replaces it, so a search
running meanwhile finishes on the state it started with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from cbir import config
from cbir.backbones import WeightsNotFoundError
from cbir.errors import ConfigError
from cbir.index import BaseIndex, LSHIndex, SequentialScan
from cbir.names import INDEX_KINDS, INDEX_LABELS, METRICS, IndexKind, Metric, score_name
from cbir.peers import DEFAULT_EF_SEARCH, DEFAULT_LINKS, DEFAULT_N_PROBE, HNSWIndex, HnswlibIndex, IVFFlatIndex
from cbir.polytope import CrossPolytopeIndex, hashes_for_bits
from cbir.query import QueryImage, decode_query
from cbir.workspace import file_version, load_feature_set, weights_kind

if TYPE_CHECKING:
    import os

    from cbir.evaluation import StageProgress
    from cbir.features import FeatureExtractor, FeatureSet

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
DEFAULT_POLYTOPE_BITS = 10


@dataclass(frozen=True)
class IndexConfig:
    """One index setting (hashable: a cache key). Which fields matter depends on ``kind``: E2LSH (``"lsh"``) g, h, w,
    probes, seed; the reference indexes (:mod:`cbir.peers`) FAISS HNSW (``"hnsw"``) and hnswlib (``"hnswlib"``)
    ``ef_search``, FAISS IVF-Flat (``"ivf_flat"``) ``n_probe``; cross-polytope LSH (``"cross_polytope"``,
    :class:`cbir.polytope.CrossPolytopeIndex` on :data:`POLYTOPE_REDUCE_DIM` PCA coordinates with a shortlist of
    :data:`UINT8_RERANK` scored on uint8 codes of :data:`UINT8_SCORE_DIM` axes, the README's best setting)
    ``n_tables`` (L), ``bits`` per table, probes, seed."""

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

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> IndexConfig:
        """The setting of a results-table row (:meth:`cbir.evaluation.EvaluationResult.row`, a sweep row)."""
        kind, metric = row["index"], row["metric"]
        if kind == "scan":
            return cls("scan", metric)
        if kind in ("hnsw", "hnswlib"):
            return cls(kind, metric, ef_search=int(row["ef_search"]))
        if kind == "ivf_flat":
            return cls("ivf_flat", metric, n_probe=int(row["n_probe"]))
        if kind == "cross_polytope":
            return cls(kind, metric, n_tables=int(row["n_tables"]), probes=int(row["probes"]), bits=int(row["bits"]))
        return cls(
            "lsh",
            metric,
            int(row["n_tables"]),
            int(row["n_projections"]),
            float(row["bucket_width"]),
            int(row["probes"]),
        )

    def build(self) -> BaseIndex:
        """A new, unfitted index."""
        if self.kind == "scan":
            return SequentialScan(self.metric)
        if self.kind == "hnsw":
            return HNSWIndex(self.metric, ef_search=self.ef_search)
        if self.kind == "hnswlib":
            return HnswlibIndex(self.metric, ef=self.ef_search)
        if self.kind == "ivf_flat":
            return IVFFlatIndex(self.metric, n_probe=self.n_probe)
        if self.kind == "cross_polytope":
            hashes, last_dim = hashes_for_bits(POLYTOPE_REDUCE_DIM, self.bits)
            return CrossPolytopeIndex(
                self.n_tables,
                hashes,
                last_dim,
                metric=self.metric,
                seed=self.seed,
                probes=self.probes,
                reduce_dim=POLYTOPE_REDUCE_DIM,
                rerank=UINT8_RERANK,
                score_dim=UINT8_SCORE_DIM,  # capped at the features' dimension by the PCA
            )
        return LSHIndex(
            self.n_tables,
            self.n_projections,
            self.bucket_width,
            metric=self.metric,
            seed=self.seed,
            probes=self.probes,
        )

    @property
    def fit_key(self) -> IndexConfig:
        """This setting without its search-time knobs (HNSW's ef, IVF's nprobe, LSH's probes): settings with the
        same key share one fitted index, set to each by :meth:`tune`."""
        return replace(self, ef_search=DEFAULT_EF_SEARCH, n_probe=DEFAULT_N_PROBE, probes=0)

    def tune(self, index: BaseIndex) -> None:
        """Set the search-time knobs of this setting on a fitted ``index`` of :attr:`fit_key`'s setting."""
        if self.kind == "hnsw":
            index.ef_search = self.ef_search  # type: ignore[attr-defined]
        elif self.kind == "hnswlib":
            index.ef = self.ef_search  # type: ignore[attr-defined]
        elif self.kind == "ivf_flat":
            index.n_probe = self.n_probe  # type: ignore[attr-defined]
        elif self.kind in ("lsh", "cross_polytope"):
            index.probes = self.probes  # type: ignore[attr-defined]

    @property
    def score_name(self) -> str:
        return score_name(self.metric)

    @property
    def label(self) -> str:
        if self.kind == "scan":
            return f"exact scan ({self.metric})"
        if self.kind in ("hnsw", "hnswlib"):
            return f"{INDEX_LABELS[self.kind]} M={DEFAULT_LINKS} ef={self.ef_search} ({self.metric})"
        if self.kind == "ivf_flat":
            return f"{INDEX_LABELS[self.kind]} nprobe={self.n_probe} ({self.metric})"
        if self.kind == "cross_polytope":
            return (
                f"{INDEX_LABELS[self.kind]} PCA-{POLYTOPE_REDUCE_DIM} L={self.n_tables} b={self.bits} "
                f"T={self.probes} R={UINT8_RERANK} of uint8 PCA-{UINT8_SCORE_DIM} ({self.metric})"
            )
        probes = f", probes={self.probes}" if self.probes else ""
        return f"LSH g={self.n_tables} h={self.n_projections} w={self.bucket_width:.3g}{probes} ({self.metric})"


# ----------------------------------------------------------------------------------------------------------
# The model a query is embedded with
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractorSpec:
    """How to rebuild the model that computed a feature set (hashable: the extractor cache key)."""

    backbone: str
    weights: str | None
    seed: int = 0


def extractor_spec(meta: Mapping[str, Any]) -> ExtractorSpec:
    """The backbone and weights a query must be embedded with to be comparable to the feature set ``meta``.

    ``meta["weights_path"]`` wins when present; ``random-seedN`` ids mean random weights with seed N; ImageNet ids
    use the local ImageNet weights; other ids (fine-tuned models) are looked up among the weights files under
    ``<artifacts>/finetune`` and the weights folder by their identity. Raises
    :class:`cbir.backbones.WeightsNotFoundError` otherwise.
    """
    from cbir.backbones import get_backbone, resolve_weights, weights_identity

    backbone = str(meta.get("backbone"))
    spec = get_backbone(backbone)
    weights_id = str(meta.get("weights_id", ""))
    path = meta.get("weights_path")
    if path and Path(path).is_file():
        return ExtractorSpec(backbone, str(path))
    if weights_id.startswith("random-seed"):
        return ExtractorSpec(backbone, None, int(weights_id.removeprefix("random-seed") or 0))
    if weights_kind(weights_id) == "ImageNet":
        return ExtractorSpec(backbone, "imagenet")
    folders = [config.artifacts_dir() / "finetune", config.artifacts_dir() / "weights", config.weights_dir()]
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for candidate in sorted(folder.rglob("*")):
            if (
                candidate.suffix in (".keras", ".h5")
                and candidate.is_file()
                and weights_identity(str(candidate)) == weights_id
            ):
                return ExtractorSpec(backbone, str(candidate))
    known = resolve_weights(spec, "imagenet")
    raise WeightsNotFoundError(
        f"cannot find the weights {weights_id!r} that computed this {backbone} feature set "
        f"(looked under {', '.join(str(f) for f in folders if f is not None)}; the ImageNet weights "
        f"are {known}). Pick another feature set or re-extract it."
    )


def make_extractor(spec: ExtractorSpec, warm_up: bool = True) -> FeatureExtractor:
    """Build the feature extractor of ``spec``; ``warm_up`` runs one image so the first user query is not the
    one paying for graph tracing."""
    from cbir.features import FeatureExtractor

    extractor = FeatureExtractor(spec.backbone, spec.weights, batch_size=1, seed=spec.seed)
    if warm_up:
        extractor.transform([Image.new("RGB", (32, 32), "white")])
    return extractor


# ----------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------


@dataclass
class QueryAnswer:
    """The app's answer to one query. ``results``: rank, id, path, relpath, label, role, score (best first; fewer
    than k rows when the LSH candidates ran out). ``id`` is the row in the feature set."""

    results: pd.DataFrame
    score_name: str
    seconds: float
    embed_seconds: float
    search_seconds: float
    visited: int
    visited_fraction: float
    n_objects: int
    index_label: str
    notes: list[str] = field(default_factory=list)


class SearchEngine:
    """Query-by-image over a feature set: every row of the collection is searchable.

    ``extractor`` must embed images like the feature set's (same backbone and weights); by default it is built
    from the feature set's meta (:func:`extractor_spec`). Fitted indexes are kept per :class:`IndexConfig`, at most
    ``max_indexes`` of them (the least recently built is evicted first). Safe to share between threads (the app's
    sessions): the index cache is changed under a lock.
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        extractor: FeatureExtractor | None = None,
        max_indexes: int = 8,
        path: str | os.PathLike[str] | None = None,
        version: int | None = None,
    ) -> None:
        if len(feature_set.features) == 0:
            raise ConfigError("the feature set is empty")
        self.feature_set = feature_set
        self._extractor = extractor
        self._indexes: dict[IndexConfig, BaseIndex] = {}
        # following the store (see the module docstring): its path, the commit point read last, the engine's rows
        # that are removed, and the engine row of every live image by cache key
        self.path = None if path is None else str(path)
        self._version = version if version is not None or path is None else file_version(path)
        self._removed = np.zeros(0, dtype=np.int64)
        self.generations = 0  # changes applied since the engine was built
        # one lock for the index cache and the lazily built extractor: a second session asking for the index being
        # built waits for it instead of building it again (a build takes well under a second on the app's sizes)
        self._lock = threading.Lock()
        self.max_indexes = max_indexes
        meta_id = feature_set.meta.get("weights_id")
        self.warning: str | None = None
        if extractor is not None and meta_id is not None and extractor.weights_id != meta_id:
            self.warning = (
                f"The query is embedded with weights {extractor.weights_id} but the collection's "
                f"features were computed with {meta_id}; results may be off."
            )

    @property
    def extractor(self) -> FeatureExtractor:
        with self._lock:
            if self._extractor is None:
                self._extractor = make_extractor(extractor_spec(self.feature_set.meta), warm_up=False)
            return self._extractor

    @property
    def n_objects(self) -> int:
        """Searchable images (removed ones left out)."""
        return len(self.feature_set.features) - len(self._removed)

    @property
    def catalog(self) -> pd.DataFrame:
        """The catalog of the searchable images (removed ones left out; ``id`` column: the engine row)."""
        catalog = self.feature_set.catalog
        table = catalog.assign(id=np.arange(len(catalog)))
        return table.drop(index=table.index[self._removed]) if len(self._removed) else table

    def refresh(self) -> bool:
        """Apply the changes committed to the feature store since it was read last (cheap when there are none: one
        ``stat``); returns whether something changed. Called before every query."""
        if self.path is None or file_version(self.path) == self._version:
            return False
        from cbir.feature_store import is_store, read_manifest, read_rows, read_table, removed_rows
        from cbir.features import FeatureSet, catalog_keys
        from cbir.storage import ArtifactError

        if not is_store(self.path):
            return False
        with self._lock:
            version = file_version(self.path)
            if version == self._version:
                return False
            try:
                manifest = read_manifest(self.path)
                if not manifest["meta"].get("complete") or manifest.get("catalog") is None:
                    return False  # an extraction is running: keep answering from what is loaded
                catalog = read_table(self.path, manifest["catalog"], [])
            except ArtifactError:
                return False
            gone_in_store = set(removed_rows(manifest).tolist())
            store_keys = {key: row for row, key in enumerate(catalog_keys(catalog)) if row not in gone_in_store}
            old = self.feature_set
            dead = set(self._removed.tolist())
            engine_keys = {key: row for row, key in enumerate(catalog_keys(old.catalog)) if row not in dead}
            new_rows = np.asarray([row for key, row in store_keys.items() if key not in engine_keys], dtype=np.int64)
            removed = np.asarray([row for key, row in engine_keys.items() if key not in store_keys], dtype=np.int64)
            features = old.features
            if len(new_rows):
                added = read_rows(self.path, manifest, new_rows).astype(features.dtype, copy=False)
                features = np.concatenate([features, added])
                old_catalog = old.catalog.reset_index(drop=True)
                new_catalog = catalog.iloc[new_rows].reindex(columns=old_catalog.columns)
                catalog = pd.concat([old_catalog, new_catalog], ignore_index=True)
            else:
                catalog = old.catalog
            for config, index in list(self._indexes.items()):
                updated = index.copy()
                if len(new_rows):
                    updated.add(added)
                if len(removed):
                    updated.remove(removed)
                self._indexes[config] = updated
            self.feature_set = FeatureSet(features, catalog, old.report, {**old.meta, **manifest["meta"]})
            self._removed = np.union1d(self._removed, removed)
            self._version = version
            self.generations += 1
            return True

    def index(self, config: IndexConfig, progress: StageProgress | None = None) -> BaseIndex:
        """The fitted index of ``config`` over all rows (built once, least recently built evicted first);
        ``progress(stage, done, total)`` while it is built (see :meth:`cbir.index.BaseIndex.fit`)."""
        return self._snapshot(config, progress)[0]

    def _snapshot(self, config: IndexConfig, progress: StageProgress | None = None) -> tuple[BaseIndex, pd.DataFrame]:
        """The index of ``config`` and the catalog its ids refer to, taken together (a refresh replaces both)."""
        with self._lock:
            index = self._indexes.get(config)
            if index is None:
                while len(self._indexes) >= self.max_indexes:
                    self._indexes.pop(next(iter(self._indexes)))
                index = config.build().fit(self.feature_set.features, progress=progress)
                if len(self._removed):
                    index.remove(self._removed)
                self._indexes[config] = index
            return index, self.feature_set.catalog

    def has_index(self, config: IndexConfig) -> bool:
        """Whether the index of ``config`` is built already (a query with it answers at once)."""
        return config in self._indexes

    def embed(self, image: Image.Image) -> np.ndarray:
        """(1, dim) float32 features of one RGB image."""
        return self.extractor.transform([image])

    def query(
        self,
        source: bytes | str | os.PathLike[str] | Image.Image | QueryImage,
        config: IndexConfig = IndexConfig(),
        k: int = DEFAULT_K,
    ) -> QueryAnswer:
        """Decode (see :func:`cbir.query.decode_query`), embed and search; raises
        :class:`cbir.images.ImageDecodeError` for bad input."""
        query = source if isinstance(source, QueryImage) else decode_query(source)
        started = time.perf_counter()
        vector = self.embed(query.image)
        embed_seconds = time.perf_counter() - started
        answer = self.query_vector(vector, config, k)
        answer.embed_seconds = embed_seconds
        answer.seconds += embed_seconds
        answer.notes = list(query.notes)
        return answer

    def query_vector(self, vector: np.ndarray, config: IndexConfig = IndexConfig(), k: int = DEFAULT_K) -> QueryAnswer:
        """Search with already computed features ``vector``: (dim,) or (1, dim) float32."""
        self.refresh()
        index, catalog = self._snapshot(config)
        started = time.perf_counter()
        scores, ids, visited = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k)
        search_seconds = time.perf_counter() - started
        found = ids[0] >= 0
        rows = ids[0][found]
        catalog = catalog.iloc[rows]
        results = pd.DataFrame(
            {
                "rank": np.arange(1, len(rows) + 1),
                "id": rows,
                "path": catalog["path"].to_numpy(),
                "relpath": catalog["relpath"].to_numpy(),
                "label": catalog["label"].fillna("(distractor)").to_numpy(),
                "role": catalog["role"].to_numpy(),
                "score": scores[0][found].astype(np.float64),
            }
        )
        n_visited = int(visited[0])  # NOT_COUNTED (-1) from an index that does not count them (hnswlib)
        return QueryAnswer(
            results=results,
            score_name=config.score_name,
            seconds=search_seconds,
            embed_seconds=0.0,
            search_seconds=search_seconds,
            visited=n_visited,
            visited_fraction=n_visited / max(index.n_objects - index.n_removed, 1) if n_visited >= 0 else float("nan"),
            n_objects=index.n_objects - index.n_removed,
            index_label=config.label,
        )


def search_engine_for(path: str, version: int, extractor: FeatureExtractor | None = None) -> SearchEngine:
    """A :class:`SearchEngine` over the feature set at ``path`` (``version``: its file version, a cache key part;
    extractor from its meta unless given), with the exact scan built and run once so that the first query's time is
    not numba's start-up."""
    del version  # only a cache key: the engine follows the store's later changes itself (SearchEngine.refresh)
    loaded_version = file_version(path)
    search = SearchEngine(load_feature_set(path, loaded_version), extractor, path=path, version=loaded_version)
    search.query_vector(search.feature_set.features[0])
    return search
