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

import gc
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from cbir.core import config as cbir_config
from cbir.core import foreground
from cbir.core.errors import CbirError, ConfigError
from cbir.core.storage import ArtifactError
from cbir.data.query import RESULT_TILE_SIDE, TILE_CACHE_SIZE, QueryImage, decode_query, keep_tiles, tiles_jpeg
from cbir.features import lite
from cbir.features.query_model import ExtractorSpec, extractor_spec, make_extractor, one_thread_per_op
from cbir.features.saved_indexes import load_fresh
from cbir.features.sources import FeatureSet, FeatureSetVersion, feature_source
from cbir.features.store import catalog_keys, read_manifest, read_rows, read_table, removed_rows
from cbir.features.workspace import file_version, load_feature_set
from cbir.indexes import threads
from cbir.indexes.base import BaseIndex
from cbir.indexes.registry import DEFAULT_K, IndexConfig

if TYPE_CHECKING:
    import os

    from cbir.evaluation.evaluate import StageProgress
    from cbir.features.extractor import FeatureExtractor

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


@dataclass(frozen=True)
class EmbeddedQuery:
    """A decoded query image and its features: the part of a query before the search
    (:meth:`SearchEngine.embed_query`)."""

    image: QueryImage
    vector: np.ndarray  # (1, dim) float32
    embed_seconds: float  # the model's time (the decoding left out, as in QueryAnswer.embed_seconds)


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
        # the feature set's version whose row numbers the engine's match (a saved index of it can answer); None once
        # a removal left tombstones in the engine's rows, or for a feature set given without its path
        self._saved_version = self._version_of_rows(len(feature_set.features))
        self.sources: dict[IndexConfig, str] = {}  # per fitted setting: "loaded" (saved index) or "built"
        self.stale: dict[IndexConfig, str] = {}  # per setting whose saved index could not answer: why
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

    def _version_of_rows(self, n_rows: int) -> FeatureSetVersion | None:
        """The version of the feature set at :attr:`path` if it has ``n_rows`` live rows and no removal was applied
        to the engine (its rows are then the feature set's, in order), else ``None``."""
        if self.path is None or len(self._removed):
            return None
        try:
            version = FeatureSetVersion.of(self.path)
        except (ArtifactError, OSError):
            return None
        return version if version.n_rows == n_rows else None

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
        if not feature_source(self.path).can_grow:  # a joblib artifact never changes in place
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
            self._saved_version = self._version_of_rows(len(features))
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
                index = self._load_saved(config)
                if index is None:
                    index = config.build().fit(self.feature_set.features, progress=progress)
                    if len(self._removed):
                        index.remove(self._removed)
                    self.sources[config] = "built"
                self._indexes[config] = index
            return index, self.feature_set.catalog

    def _load_saved(self, config: IndexConfig) -> BaseIndex | None:
        """The saved index of ``config`` (:mod:`cbir.features.saved_indexes`) when it was built from the engine's
        current rows; a stale one is never served (the reason is kept in :attr:`stale`, the index is built)."""
        if self._saved_version is None:
            return None
        assert self.path is not None
        index, reason = load_fresh(self.path, config, self._saved_version)
        if reason is not None:
            self.stale[config] = reason
        if index is not None:
            self.sources[config] = "loaded"
            self.stale.pop(config, None)
        return index

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

    def embed_query(self, source: bytes | str | os.PathLike[str] | Image.Image | QueryImage) -> EmbeddedQuery:
        """Decode (see :func:`cbir.data.query.decode_query`) and embed; raises
        :class:`cbir.data.images.ImageDecodeError` for bad input."""
        query = source if isinstance(source, QueryImage) else decode_query(source)
        started = time.perf_counter()
        vector = self.embed(query.image)
        return EmbeddedQuery(query, vector, time.perf_counter() - started)

    def query(
        self,
        source: bytes | str | os.PathLike[str] | Image.Image | QueryImage | EmbeddedQuery,
        config: IndexConfig = IndexConfig(),
        k: int = DEFAULT_K,
    ) -> QueryAnswer:
        """Decode, embed (:meth:`embed_query`, unless ``source`` is already embedded) and search; raises
        :class:`cbir.data.images.ImageDecodeError` for bad input."""
        embedded = source if isinstance(source, EmbeddedQuery) else self.embed_query(source)
        answer = self.query_vector(embedded.vector, config, k)
        answer.embed_seconds = embedded.embed_seconds
        answer.seconds += embedded.embed_seconds
        answer.notes = [*embedded.image.notes, *answer.notes]
        return answer

    def query_vector(self, vector: np.ndarray, config: IndexConfig = IndexConfig(), k: int = DEFAULT_K) -> QueryAnswer:
        """Search with already computed features ``vector``: (dim,) or (1, dim) float32."""
        self.refresh()
        index, catalog = self._snapshot(config)
        started = time.perf_counter()
        with threads.single_query():  # one query: one thread, no pool to wake (cbir.indexes.threads)
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
            notes=[f"{self.stale[config]}: built in memory instead"] if config in self.stale else [],
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


# ----------------------------------------------------------------------------------------------------------
# One engine per feature set in the process, warmed in the background when a server starts
# ----------------------------------------------------------------------------------------------------------

_log = logging.getLogger(__name__)
MAX_SHARED_ENGINES = 3  # feature sets whose engine a process keeps (the app's cache held as many)
_shared_lock = threading.RLock()
_shared_engines: dict[tuple[str, int, ExtractorSpec | None], SearchEngine] = {}
_shared_extractors: dict[ExtractorSpec, FeatureExtractor] = {}


def shared_extractor(spec: ExtractorSpec) -> FeatureExtractor:
    """The process's model of ``spec`` (built once, warmed by one inference): the app's pages and the API share it.
    The first one sets TensorFlow's ops on one thread each when it can (:func:`one_thread_per_op`: single queries)."""
    with _shared_lock:
        if spec not in _shared_extractors:
            if not _shared_extractors:
                one_thread_per_op()
            _shared_extractors[spec] = make_extractor(spec)
        return _shared_extractors[spec]


def shared_engine(path: str, version: int, spec: ExtractorSpec | None = None) -> SearchEngine:
    """The process's :class:`SearchEngine` of the feature set at ``path`` (``version``: a cache key part, see
    :func:`search_engine_for`), with the model of ``spec`` (None: no model, search by stored features only); at most
    :data:`MAX_SHARED_ENGINES` are kept (the oldest is dropped first). Thread-safe: two callers get one engine."""
    key = (str(path), version, spec)
    with _shared_lock:
        if key not in _shared_engines:
            extractor = None if spec is None else shared_extractor(spec)
            while len(_shared_engines) >= MAX_SHARED_ENGINES:
                _shared_engines.pop(next(iter(_shared_engines)))
            _shared_engines[key] = search_engine_for(str(path), version, extractor)
        return _shared_engines[key]


@dataclass
class WarmStart:
    """What :func:`warm_start` did: the feature set, the settings it answered once, the seconds it took, and the
    error that stopped it (a user's problem: no feature set, no model), if any."""

    path: str | None = None
    configs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    yielded: float = 0.0  # seconds waited between its steps for the pages' runs (in the background only)
    tiles: int = 0  # result tiles made, not read back from disk (the app's warm start: :func:`_warm_tiles`)
    query_runtime: str = ""  # what embeds a single query (:func:`cbir.features.lite.use_for_queries`)


def warm_start(
    path: str | None = None,
    configs: Sequence[IndexConfig] = (),
    background: bool = True,
    tile_side: int | None = None,
) -> tuple[WarmStart, threading.Thread | None]:
    """Get a server ready for its first query: load the numba kernels (from numba's on-disk cache: ``cache=True``),
    batch and single-query twins alike; the feature set at ``path`` (default: the default collection's newest), its
    model (one inference traces the graph; single queries then run on TensorFlow Lite where it gives the same
    features: :func:`cbir.features.lite.use_for_queries`), its engine (:func:`shared_engine`), and answer one query
    with the scan, each of ``configs`` and each fresh saved index of the feature set
    (:mod:`cbir.features.saved_indexes`: loaded from disk); with ``tile_side``, the result tile of every image
    (:func:`_warm_tiles`). In a daemon thread when ``background`` (the app and the API start it and go on), which
    waits between its steps while a page's run is under way (:func:`cbir.core.foreground.yield_to_pages`: on two
    cores a page opened as the server starts is not drawn behind TensorFlow's import); returns the report
    (``report.done`` is set at the end) and the thread."""
    report = WarmStart(path=path)

    def pause() -> None:
        if background:  # at most YIELD_LIMIT_S in all: a long computation on a page must not starve it
            report.yielded += foreground.yield_to_pages(max(0.0, foreground.YIELD_LIMIT_S - report.yielded))

    def run() -> None:
        started = time.perf_counter()
        try:
            _warm(report, list(configs), tile_side, pause)
            # what is loaded now (TensorFlow, the model, the engine: millions of objects that live as long as the
            # server) is left out of every later collection: a full collection walked them all, 0.3-1 s each, and
            # a page's rerun allocates enough to run a few (measured: the Search page's upload waited 1-2 s for them)
            gc.freeze()
        except CbirError as exc:  # nothing to warm (no feature set yet, no model): the first query will say why
            report.error = str(exc)
        except Exception as exc:  # a bug, logged with its traceback; the server goes on (its queries do the work)
            _log.exception("the warm start stopped")
            report.error = f"warm start failed: {exc!r}"
        finally:
            report.seconds = time.perf_counter() - started
            report.done.set()

    if not background:
        run()
        return report, None
    thread = threading.Thread(target=run, name="cbir-warm-start", daemon=True)
    thread.start()
    return report, thread


_server_warm: WarmStart | None = None
_server_warm_lock = threading.Lock()


def server_warm_start() -> WarmStart:
    """The process's one background :func:`warm_start` of the default feature set: started by the first caller
    (``python -m cbir app`` as the server starts, before Streamlit; else the app's first session) and returned to
    every later one, so a server warms once however it was started. It makes the Search page's result tiles
    (:data:`cbir.data.query.RESULT_TILE_SIDE`) too."""
    global _server_warm
    with _server_warm_lock:
        if _server_warm is None:
            _server_warm, _thread = warm_start(tile_side=RESULT_TILE_SIDE)  # the app's: its Search page's tiles
        return _server_warm


def _warm(report: WarmStart, configs: list[IndexConfig], tile_side: int | None, pause: Callable[[], None]) -> None:
    from cbir.features.saved_indexes import saved_infos, staleness
    from cbir.features.workspace import base_version, complete_feature_sets
    from cbir.indexes.warmup import warm_up

    pause()
    warm_up()
    pause()
    if report.path is None:
        choices = complete_feature_sets()
        if not choices:
            raise ConfigError("no complete feature set to warm up")
        report.path = next(iter(choices.values()))
    path = str(report.path)
    meta = load_feature_set(path).meta
    try:
        spec: ExtractorSpec | None = extractor_spec(meta)
    except CbirError:
        spec = None  # a model that cannot be loaded: the engine searches by stored features
    engine = shared_engine(path, base_version(path), spec)
    pause()
    if spec is not None:
        # the runtime that embeds single queries (checked against the graph), then an upload's whole path once
        # on it: decode (PNG), content check, embed
        report.query_runtime = lite.use_for_queries(engine.extractor)  # kept converted, or converted (~5 s) once
        pause()
        engine.query(_warm_query_png())
        pause()
    version = engine._saved_version
    fresh = [IndexConfig(**info["config"]) for _, info in saved_infos(path) if staleness(info, version) is None]
    for config in dict.fromkeys([IndexConfig(), *configs, *fresh]):
        engine.query_vector(engine.feature_set.features[0], config)
        report.configs.append(config.label)
    if tile_side is not None:
        report.tiles = _warm_tiles(path, engine.catalog["path"].tolist(), tile_side, pause)


WARM_TILES = 2  # tiles made of a collection too large to keep all its tiles: Pillow's JPEG codecs' first use


def _warm_tiles(path: str, paths: list[str], side: int, pause: Callable[[], None]) -> int:
    """The ``side``-px result tile of each of ``paths`` (the images of the feature set at ``path``) in the process'
    tile cache, kept on disk under ``artifacts/cache/tiles/`` (:func:`cbir.data.query.keep_tiles`), so that no
    answer waits for its tiles: the first answer of a fresh app read and encoded its ten tiles, 20-170 ms on two busy
    cores (issue 21). A collection larger than the tile cache (:data:`cbir.data.query.TILE_CACHE_SIZE`) only warms
    the codecs. Returns the number of tiles made (0: all read back)."""
    if len(paths) > TILE_CACHE_SIZE:
        tiles_jpeg(paths[:WARM_TILES], side)
        return WARM_TILES
    key = hashlib.sha1(f"{Path(path).resolve()}|{side}".encode()).hexdigest()[:20]
    return keep_tiles(paths, side, cbir_config.artifacts_dir() / "cache" / "tiles" / f"{key}.joblib", pause)


def _warm_query_png() -> bytes:
    """A small PNG (a grey gradient), the warm start's stand-in for a user's upload."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize((224, 224)).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def default_config(kind: str, path: str, metric: str = "euclidean") -> IndexConfig:
    """The setting of ``kind`` the Search page starts from on the feature set at ``path``: the registry's defaults,
    and for LSH the bucket width of :func:`cbir.evaluation.tuning.lsh_defaults_for` (what the page's slider shows),
    so that an index saved with it (``python -m cbir index build``, the home page's button) is the one the page
    loads."""
    if kind != "lsh":
        return IndexConfig(kind, metric)  # type: ignore[arg-type]
    from cbir.evaluation.tuning import lsh_defaults_for

    return lsh_defaults_for(path, file_version(path), metric)
