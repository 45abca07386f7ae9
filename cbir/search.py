"""Query by image over a feature set: :class:`IndexConfig` names an index, :class:`SearchEngine` embeds a query with
the feature set's own model and answers it with a :class:`QueryAnswer` (the results as a table, timings, visited).

Every row of the collection is searchable (a user looks for any image; a collection image finds itself first).
One :class:`SearchEngine` per feature set is shared by all the app's sessions, so its index cache is locked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from cbir import config
from cbir.backbones import WeightsNotFoundError
from cbir.errors import ConfigError
from cbir.index import BaseIndex, LSHIndex, SequentialScan
from cbir.names import INDEX_KINDS, METRICS, IndexKind, Metric, score_name
from cbir.peers import DEFAULT_EF_SEARCH, DEFAULT_LINKS, HNSWIndex
from cbir.query import QueryImage, decode_query
from cbir.workspace import load_feature_set, weights_kind

if TYPE_CHECKING:
    import os

    from cbir.evaluation import StageProgress
    from cbir.features import FeatureExtractor, FeatureSet

DEFAULT_K = 10
# The paper's best web-app index (Section 7): g=7 tables, h=2 projections; w comes from the data.
DEFAULT_TABLES = 7
DEFAULT_PROJECTIONS = 2


@dataclass(frozen=True)
class IndexConfig:
    """One index setting (hashable: a cache key). The LSH fields (g, h, w, probes, seed) matter for ``kind="lsh"``
    only, ``ef_search`` for the reference index ``kind="hnsw"`` (:class:`cbir.peers.HNSWIndex`) only."""

    kind: IndexKind = "scan"
    metric: Metric = "euclidean"
    n_tables: int = DEFAULT_TABLES
    n_projections: int = DEFAULT_PROJECTIONS
    bucket_width: float = 1.0
    probes: int = 0
    seed: int = 0
    ef_search: int = DEFAULT_EF_SEARCH

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {self.metric!r}")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> IndexConfig:
        """The setting of a results-table row (:meth:`cbir.evaluation.EvaluationResult.row`, a sweep row)."""
        if row["index"] == "scan":
            return cls("scan", row["metric"])
        if row["index"] == "hnsw":
            return cls("hnsw", row["metric"], ef_search=int(row["ef_search"]))
        return cls(
            "lsh",
            row["metric"],
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
        return LSHIndex(
            self.n_tables,
            self.n_projections,
            self.bucket_width,
            metric=self.metric,
            seed=self.seed,
            probes=self.probes,
        )

    @property
    def score_name(self) -> str:
        return score_name(self.metric)

    @property
    def label(self) -> str:
        if self.kind == "scan":
            return f"exact scan ({self.metric})"
        if self.kind == "hnsw":
            return f"HNSW (faiss) M={DEFAULT_LINKS} ef={self.ef_search} ({self.metric})"
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
        self, feature_set: FeatureSet, extractor: FeatureExtractor | None = None, max_indexes: int = 8
    ) -> None:
        if len(feature_set.features) == 0:
            raise ConfigError("the feature set is empty")
        self.feature_set = feature_set
        self._extractor = extractor
        self._indexes: dict[IndexConfig, BaseIndex] = {}
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
        return len(self.feature_set.features)

    def index(self, config: IndexConfig, progress: StageProgress | None = None) -> BaseIndex:
        """The fitted index of ``config`` over all rows (built once, least recently built evicted first);
        ``progress(stage, done, total)`` while it is built (see :meth:`cbir.index.BaseIndex.fit`)."""
        with self._lock:
            index = self._indexes.get(config)
            if index is None:
                while len(self._indexes) >= self.max_indexes:
                    self._indexes.pop(next(iter(self._indexes)))
                index = self._indexes[config] = config.build().fit(self.feature_set.features, progress=progress)
            return index

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
        index = self.index(config)
        started = time.perf_counter()
        scores, ids, visited = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k)
        search_seconds = time.perf_counter() - started
        found = ids[0] >= 0
        rows = ids[0][found]
        catalog = self.feature_set.catalog.iloc[rows]
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
        n_visited = int(visited[0])
        return QueryAnswer(
            results=results,
            score_name=config.score_name,
            seconds=search_seconds,
            embed_seconds=0.0,
            search_seconds=search_seconds,
            visited=n_visited,
            visited_fraction=n_visited / self.n_objects,
            n_objects=self.n_objects,
            index_label=config.label,
        )


def search_engine_for(path: str, version: int, extractor: FeatureExtractor | None = None) -> SearchEngine:
    """A :class:`SearchEngine` over the feature set at ``path`` (``version``: its file version, a cache key part;
    extractor from its meta unless given), with the exact scan built and run once so that the first query's time is
    not numba's start-up."""
    search = SearchEngine(load_feature_set(path, version), extractor)
    search.query_vector(search.feature_set.features[0])
    return search
