"""Query by image over a feature set: :class:`IndexConfig` names an index, :class:`SearchEngine` embeds a query with
the feature set's own model and answers it with a :class:`QueryAnswer` (the results as a table, timings, visited).

Every row of the collection is searchable (a user looks for any image; a collection image finds itself first).
One :class:`SearchEngine` per feature set is shared by all the app's sessions, so its index cache is locked.

The engine follows its feature store as it grows and shrinks (:mod:`cbir.service.growth`, from this process or another):
before each query it compares the store's commit point with the one it last read, and on a change it reads the new
catalog, fetches the features of the new rows only, and updates every fitted index in place (``add`` appends to the
scan matrix and the LSH buckets, ``remove`` tombstones); an index is updated on a copy that replaces it, so a search
running meanwhile finishes on the state it started with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from cbir.core.errors import ConfigError
from cbir.data.query import QueryImage, decode_query
from cbir.features.query_model import extractor_spec, make_extractor
from cbir.features.workspace import file_version, load_feature_set
from cbir.indexes.base import BaseIndex
from cbir.indexes.registry import DEFAULT_K, IndexConfig

if TYPE_CHECKING:
    import os

    from cbir.evaluation.evaluate import StageProgress
    from cbir.features.extractor import FeatureExtractor, FeatureSet

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
        from cbir.core.storage import ArtifactError
        from cbir.features.extractor import FeatureSet
        from cbir.features.store import catalog_keys, is_store, read_manifest, read_rows, read_table, removed_rows

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
        ``progress(stage, done, total)`` while it is built (see :meth:`cbir.indexes.base.BaseIndex.fit`)."""
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

    def built_configs(self) -> list[IndexConfig]:
        """The settings whose index is built, least recently built first."""
        with self._lock:
            return list(self._indexes)

    def embed(self, image: Image.Image) -> np.ndarray:
        """(1, dim) float32 features of one RGB image."""
        return self.extractor.transform([image])

    def query(
        self,
        source: bytes | str | os.PathLike[str] | Image.Image | QueryImage,
        config: IndexConfig = IndexConfig(),
        k: int = DEFAULT_K,
    ) -> QueryAnswer:
        """Decode (see :func:`cbir.data.query.decode_query`), embed and search; raises
        :class:`cbir.data.images.ImageDecodeError` for bad input."""
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
