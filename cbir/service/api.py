"""The HTTP API of ``python -m cbir serve``: query by image over one collection's feature sets, answered as JSON.

- ``POST /search``: an upload (multipart field ``image``) or an image of the collection (``path``, relative to the
  collection) → the ``k`` most similar images of the collection (each with its path, label, score and rank), the
  query's timings (embed, search, total, in ms) and the objects the index visited. The index setting is given as
  query parameters: ``index`` (a kind of :data:`cbir.indexes.registry.KINDS`), ``metric`` and the kind's settings,
  named as :class:`cbir.indexes.registry.IndexConfig` names them (LSH settings left out take the feature set's
  data-driven defaults, as on the Search page).
- ``GET /health``, ``GET /feature-sets``, ``GET /indexes``; ``GET /images/{path}`` serves an image of the collection
  (only files inside it: the path is resolved, symlinks included, and must stay in the collection folder).
- ``GET /docs``: the OpenAPI documentation (served from the installed swagger-ui-py files, so it works offline).

One :class:`SearchService` per server serves one :class:`cbir.service.search.SearchEngine` per feature set: the
process's shared one (:func:`cbir.service.search.shared_engine`, the Search page's), used by all requests (it is
thread-safe), warmed by :func:`cbir.service.search.warm_start` before the server answers; it loads fresh saved indexes
(``python -m cbir index build``) instead of building them.
Uploads go the Search page's way (:func:`cbir.data.query.decode_query`, then :meth:`SearchEngine.query`); an image of
the collection is searched by its stored features (:meth:`SearchEngine.query_vector`), the page's way when no model
is loaded. The endpoints are plain functions: FastAPI runs them in its thread pool, so a search (CPU-bound) never
holds up the event loop, and ``/health`` answers while searches run.

Bad input is a :class:`cbir.core.errors.CbirError` (the message the Search page shows) and becomes a 4xx answer
``{"error": message}``: 400 for an unusable image or setting, 404 for a path or feature set the collection does not
have, 413 for a body over the upload limit, 422 for a parameter of the wrong type. Anything else is a bug: a 500 with
its traceback in the server's log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir.core import config
from cbir.core.errors import CbirError, ConfigError
from cbir.core.names import INDEX_KINDS, INDEX_LABELS, METRICS
from cbir.data.collection import collection_id
from cbir.data.images import IMAGE_EXTENSIONS, ImageDecodeError
from cbir.data.query import MAX_UPLOAD_BYTES, decode_query, too_big
from cbir.features.query_model import ExtractorSpec
from cbir.features.workspace import base_version, complete_feature_sets, file_version, list_indexes, load_feature_set
from cbir.indexes.registry import DEFAULT_K, KINDS, IndexConfig
from cbir.service.search import (
    QueryAnswer,
    SearchEngine,
    WarmStart,
    default_config,
    extractor_spec,
    shared_engine,
    shared_extractor,
    warm_start,
)

MAX_K = 1000  # results per query: a bigger k is refused (the arrays of a search are k wide)
# a multipart body carries the file plus its envelope; past BODY_LIMIT the upload is refused (413) after the rest of
# the body is read and dropped (a client writing its body would not see the answer otherwise), up to DRAIN_LIMIT
BODY_LIMIT = MAX_UPLOAD_BYTES + 2**20
DRAIN_LIMIT = 8 * BODY_LIMIT
# the settings a request may give, and their bounds: beyond them an index would take minutes to build or search
SETTING_BOUNDS: dict[str, tuple[float, float]] = {
    "n_tables": (1, 64),
    "n_projections": (1, 32),
    "bucket_width": (1e-6, 1e6),
    "probes": (0, 64),
    "seed": (0, 2**31 - 1),
    "ef_search": (1, 4096),
    "n_probe": (1, 4096),
    "bits": (1, 32),
}
LSH_DEFAULT_FIELDS = ("n_tables", "n_projections", "bucket_width")  # the Search page's defaults for LSH
REQUEST_THREADS = 128  # requests run at once (FastAPI's thread pool; anyio's default is 40)
PREBUILT_KINDS = ("lsh", "hnsw")  # built when the server starts: the Search page's index choices beside the scan
FEATURE_SETS_TTL_S = 10.0  # how long the list of feature sets is reused before the folder is read again


class NotFoundError(CbirError, LookupError):
    """A path, image or feature set that the collection does not have (HTTP 404)."""


def http_status(error: CbirError) -> int:
    """The HTTP status of a user-facing error."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ImageDecodeError) and str(error).startswith("the file is too big"):
        return 413
    return 400


def check_k(k: int) -> int:
    """``k`` if 1 ≤ k ≤ :data:`MAX_K`, else a :class:`ConfigError`."""
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def index_config(
    kind: str,
    metric: str,
    settings: Mapping[str, float | None],
    lsh_defaults: Callable[[str], IndexConfig] | None = None,
) -> IndexConfig:
    """The :class:`IndexConfig` of a request: ``settings`` (``None``: not given) within :data:`SETTING_BOUNDS`, the
    rest at the kind's defaults (for LSH ``lsh_defaults(metric)``'s g, h and w). The index is constructed (not
    fitted) to check the setting: a :class:`ConfigError` names what is wrong."""
    base = IndexConfig(kind, metric)  # ConfigError for an unknown kind or metric, naming the known ones
    given = {name: value for name, value in settings.items() if value is not None}
    for name, value in given.items():
        low, high = SETTING_BOUNDS[name]
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    if kind == "lsh" and lsh_defaults is not None:
        defaults = lsh_defaults(metric)
        base = replace(base, **{name: getattr(defaults, name) for name in LSH_DEFAULT_FIELDS})
    config = replace(base, **given)
    try:
        config.build()
    except ValueError as exc:  # an index's own argument check (e.g. cross-polytope bits)
        raise ConfigError(str(exc)) from exc
    return config


@dataclass(frozen=True)
class FeatureSetEntry:
    """A feature set the API serves: ``id`` (its path under the collection's features folder), label, path."""

    id: str
    label: str
    path: str


@dataclass
class LoadedEngine:
    """A shared engine; ``model_error`` says why uploads cannot be searched (no model), else ``None``."""

    engine: SearchEngine
    model_error: str | None
    relpaths: tuple[int, dict[str, int]] = (-1, {})  # (engine generation, relpath → catalog position)

    def row_of(self, relpath: str) -> int:
        """The engine row of the collection image ``relpath``; :class:`NotFoundError` when it has none."""
        generation, rows = self.relpaths
        if generation != self.engine.generations:
            catalog = self.engine.catalog
            rows = dict(zip(catalog["relpath"].astype(str), catalog["id"].astype(int), strict=True))
            self.relpaths = (self.engine.generations, rows)
        if relpath not in rows:
            raise NotFoundError(f"{relpath!r} is not an image of the collection (give its path relative to it)")
        return rows[relpath]


def default_embed_slots() -> int:
    """Uploads embedded at once by default: half the CPUs, at least one (one model call already runs its layers on
    every core; more calls at once only make them take turns)."""
    return max(1, (os.cpu_count() or 1) // 2)


class SearchService:
    """The state of one API server: the collection (default: :func:`cbir.core.config.default_collection`), its
    feature sets and one shared :class:`SearchEngine` per feature set (at most ``max_engines``, the least recently
    loaded dropped first). ``feature_set``: the id served by default (default: the newest). ``embed_slots``: uploads
    embedded at once (default :func:`default_embed_slots`); the others wait their turn, decoded, while queries by a
    collection image (no model) go on."""

    def __init__(
        self,
        collection: str | os.PathLike[str] | None = None,
        feature_set: str | None = None,
        max_engines: int = 3,
        embed_slots: int | None = None,
    ) -> None:
        self.collection = Path(collection) if collection is not None else config.default_collection()
        self.root = self.collection.resolve()
        self.default_feature_set = feature_set
        self.max_engines = max_engines
        self.started = time.time()
        self.embed_slots = embed_slots or default_embed_slots()
        self._embedding = threading.BoundedSemaphore(self.embed_slots)
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, int], LoadedEngine] = {}
        self._listed: tuple[float, dict[str, FeatureSetEntry]] = (-math.inf, {})
        self.warm_report: WarmStart | None = None  # what the start-up warmed (create_app's warm)

    # -- feature sets and engines -------------------------------------------------------------------------------

    def feature_sets(self) -> dict[str, FeatureSetEntry]:
        """The complete feature sets of the collection by id, newest first (read again every
        :data:`FEATURE_SETS_TTL_S` seconds)."""
        listed_at, entries = self._listed
        if time.monotonic() - listed_at > FEATURE_SETS_TTL_S:
            folder = config.artifacts_dir() / "features" / collection_id(self.collection)
            entries = {}
            for label, path in complete_feature_sets(self.collection).items():
                entry_id = Path(path).relative_to(folder).as_posix() if Path(path).is_relative_to(folder) else path
                entries[entry_id] = FeatureSetEntry(entry_id, label, path)
            self._listed = (time.monotonic(), entries)
        return entries

    def feature_set(self, feature_set: str | None = None) -> FeatureSetEntry:
        """The feature set ``feature_set`` (an id of :meth:`feature_sets`; default: the server's default)."""
        entries = self.feature_sets()
        wanted = feature_set or self.default_feature_set
        if not entries:
            raise NotFoundError(
                f"no feature set of the collection {self.collection} yet: run `python -m cbir extract` first"
            )
        if wanted is None:
            return next(iter(entries.values()))
        if wanted not in entries:
            raise NotFoundError(f"no feature set {wanted!r} for this collection; there are: {', '.join(entries)}")
        return entries[wanted]

    def engine(self, entry: FeatureSetEntry) -> LoadedEngine:
        """The engine of ``entry``: the process's shared one (:func:`cbir.service.search.shared_engine`, the Search
        page's), with the model that computed the feature set (when that model cannot be loaded, collection images
        are still searched by their stored features). A feature set written anew
        (:func:`cbir.features.workspace.base_version`) gets a new engine; images added or removed in place are
        followed by the engine itself."""
        key = (entry.path, base_version(entry.path))
        with self._lock:
            loaded = self._engines.get(key)
            if loaded is None:
                model_error = None
                try:
                    spec: ExtractorSpec | None = extractor_spec(load_feature_set(entry.path).meta)
                    shared_extractor(spec)  # type: ignore[arg-type]
                except (CbirError, FileNotFoundError) as exc:
                    spec, model_error = None, f"the model of this feature set cannot be loaded ({exc})"
                loaded = LoadedEngine(shared_engine(entry.path, key[1], spec), model_error)
                while len(self._engines) >= self.max_engines:
                    self._engines.pop(next(iter(self._engines)))
                self._engines[key] = loaded
            return loaded

    def warm(self, entry: FeatureSetEntry, kinds: tuple[str, ...] = PREBUILT_KINDS) -> WarmStart:
        """Get the server ready for its first query on ``entry`` (:func:`cbir.service.search.warm_start`, in this
        thread: the kernels, the model, the engine, one query with the scan, each of ``kinds`` at its default setting
        and each fresh saved index), so that the first query with them does not wait for a build."""
        configs = [default_config(kind, entry.path) for kind in kinds]
        report, _ = warm_start(entry.path, configs, background=False)
        self.engine(entry)
        return report

    def _lsh_defaults(self, entry: FeatureSetEntry) -> Callable[[str], IndexConfig]:
        return functools.partial(_lsh_defaults, entry.path, file_version(entry.path))

    # -- requests -----------------------------------------------------------------------------------------------

    def search(
        self,
        data: bytes | None,
        path: str | None,
        k: int,
        kind: str,
        metric: str,
        settings: Mapping[str, float | None],
        feature_set: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Answer one query (an upload's ``data`` or the collection image ``path``) as a JSON-ready dict."""
        if (data is None) == (path is None):
            raise ConfigError("give either an image (multipart field 'image') or an image of the collection ('path')")
        check_k(k)
        entry = self.feature_set(feature_set)
        loaded = self.engine(entry)
        engine = loaded.engine
        config = index_config(kind, metric, settings, self._lsh_defaults(entry))
        if data is not None:
            if len(data) > MAX_UPLOAD_BYTES:
                raise too_big(len(data))
            if loaded.model_error is not None:
                raise ConfigError(f"{loaded.model_error}: only images of the collection can be searched")
            query = decode_query(data)
            with self._embedding:
                answer = engine.query(query, config, k)
            about: dict[str, Any] = {"source": "upload", "name": name, "size": list(query.original_size)}
            about |= {"notes": list(query.notes), "warnings": list(query.warnings)}
        else:
            assert path is not None
            engine.refresh()  # images added or removed since the last query (by the app, the CLI or another server)
            row = loaded.row_of(path)
            answer = engine.query_vector(engine.feature_set.features[row], config, k)
            about = {"source": "collection", "path": path, "notes": [], "warnings": []}
        return answer_json(answer, config, entry, about, k)

    def image_file(self, relpath: str) -> Path:
        """The file of the collection image ``relpath``: resolved (symlinks too) and inside the collection folder,
        not in a hidden folder (the ``.removed/`` of :mod:`cbir.service.growth`), with an image extension; else a
        :class:`NotFoundError`."""
        missing = NotFoundError(f"{relpath!r} is not an image of the collection")
        try:
            file = (self.root / relpath).resolve()
            inside = file.relative_to(self.root)
        except (ValueError, OSError) as exc:  # outside the collection, a NUL byte, a symlink loop
            raise missing from exc
        hidden = any(part.startswith(".") for part in inside.parts)
        if hidden or file.suffix.lower() not in IMAGE_EXTENSIONS or not file.is_file():
            raise missing
        return file

    def health(self) -> dict[str, Any]:
        entries = self.feature_sets()
        loaded = [
            {"feature_set": path, "n_objects": item.engine.n_objects, "model": item.model_error is None}
            for (path, _), item in list(self._engines.items())
        ]
        return {
            "status": "ok",
            "collection": str(self.collection),
            "feature_sets": len(entries),
            "engines": loaded,
            "embed_slots": self.embed_slots,
            "warm_start": None
            if self.warm_report is None
            else {
                "seconds": round(self.warm_report.seconds, 2),
                "answered": self.warm_report.configs,
                "query_runtime": self.warm_report.query_runtime,
                "error": self.warm_report.error,
            },
            "uptime_s": round(time.time() - self.started, 1),
            "load_average": [round(value, 2) for value in os.getloadavg()],
        }

    def indexes(self) -> dict[str, Any]:
        """The index kinds a query may ask for (with their settings and defaults), the metrics, the indexes built in
        the loaded engines and those saved under the artifacts folder."""
        defaults = {f.name: f.default for f in dataclasses.fields(IndexConfig)}
        kinds = [
            {
                "kind": kind,
                "label": INDEX_LABELS[kind],
                "settings": {name: defaults[name] for name in spec.row_fields or ()},
                "search_time_setting": spec.knob,
            }
            for kind, spec in KINDS.items()
        ]
        built = [
            {
                "feature_set": path,
                "index": config.label,
                "source": item.engine.sources.get(config, "built"),  # "loaded": a saved index read from disk
            }
            for (path, _), item in list(self._engines.items())
            for config in item.engine.built_configs()
        ]
        saved = list_indexes()
        return {
            "kinds": kinds,
            "metrics": list(METRICS),
            "bounds": SETTING_BOUNDS,
            "max_k": MAX_K,
            "built": built,
            "saved": json.loads(saved.to_json(orient="records", date_format="iso")),  # whatever columns it lists
        }


@functools.lru_cache(maxsize=16)
def _lsh_defaults(path: str, version: int, metric: str) -> IndexConfig:
    """:func:`cbir.service.search.default_config` for LSH (the Search page's defaults), once per file version."""
    del version  # only a cache key
    return default_config("lsh", path, metric)


def _finite(value: float) -> float | None:
    """``value`` for JSON, ``None`` when it is not finite (JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


def answer_json(
    answer: QueryAnswer, config: IndexConfig, entry: FeatureSetEntry, query: dict[str, Any], k: int
) -> dict[str, Any]:
    """The JSON body of ``POST /search``."""
    results = [
        {
            "rank": int(row.rank),
            "path": str(row.relpath),
            "label": str(row.label),
            "role": str(row.role),
            "score": _finite(row.score),
            "image": f"/images/{quote(str(row.relpath))}",
        }
        for row in answer.results.itertuples()
    ]
    counted = answer.visited >= 0  # hnswlib does not count them
    return {
        "query": query,
        "feature_set": {"id": entry.id, "label": entry.label},
        "index": {"kind": config.kind, "label": answer.index_label, "metric": config.metric},
        "score_name": answer.score_name,
        "k": k,
        "n_objects": answer.n_objects,
        "visited": answer.visited if counted else None,
        "visited_fraction": _finite(answer.visited_fraction) if counted else None,
        "timings_ms": {
            "embed": answer.embed_seconds * 1000,
            "search": answer.search_seconds * 1000,
            "total": answer.seconds * 1000,
        },
        "notes": answer.notes,
        "results": results,
    }


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes ends in a 413 ``{"error": …}`` (the upload limit's
    message) before the form parser has spooled it; the rest of the body is read and dropped (up to
    :data:`DRAIN_LIMIT`) so that the client, still writing it, reads the answer."""

    def __init__(self, app: ASGIApp, limit: int = BODY_LIMIT) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                while message.get("more_body") and received <= DRAIN_LIMIT:
                    message = await receive()
                    received += len(message.get("body", b""))
                raise HTTPException(413, detail=str(too_big(received)))
            return message

        await self.app(scope, limited, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def _docs_assets() -> Path | None:
    """The folder of swagger-ui-py's Swagger UI files (``None`` when it is not installed: the docs use a CDN)."""
    try:
        import swagger_ui
    except ImportError:
        return None
    folder = Path(swagger_ui.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


IndexSetting = Annotated[float | None, Query()]
IntSetting = Annotated[int | None, Query()]


def create_app(service: SearchService | None = None, warm: bool = True) -> FastAPI:
    """The FastAPI application over ``service`` (default: a :class:`SearchService` of the default collection).
    ``warm``: before the server answers, :meth:`SearchService.warm` the default feature set (kernels, model, engine,
    the indexes of :data:`PREBUILT_KINDS` and the fresh saved ones)."""
    service = service or SearchService()
    assets = _docs_assets()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uploads waiting for an embedding slot hold a thread each: enough threads that the others still get one
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        if warm:  # before answering: a build holds the engine's lock, the first queries would wait on it
            with contextlib.suppress(NotFoundError):  # no feature set yet: /health answers and says so
                service.warm_report = service.warm(service.feature_set())
        yield

    app = FastAPI(
        title="cbir",
        summary="Content-based image retrieval over a collection: query by image, get the most similar images.",
        lifespan=lifespan,
        docs_url=None if assets else "/docs",
    )
    app.state.service = service
    app.add_middleware(BodyLimit)

    _add_error_handlers(app)
    if assets is not None:
        _add_offline_docs(app, assets)

    @app.post("/search", summary="The k most similar images of the collection to an upload or a collection image")
    def search(
        image: Annotated[UploadFile | None, File(description="the query image (JPEG, PNG, …, up to 20 MB)")] = None,
        path: Annotated[str | None, Query(description="or: a collection image, relative to the collection")] = None,
        k: Annotated[int, Query(description=f"results (1 to {MAX_K})")] = DEFAULT_K,
        index: Annotated[str, Query(description=f"index kind: one of {', '.join(INDEX_KINDS)}")] = "scan",
        metric: Annotated[str, Query(description=f"one of {', '.join(METRICS)}")] = "euclidean",
        feature_set: Annotated[str | None, Query(description="an id of GET /feature-sets (default: newest)")] = None,
        n_tables: IntSetting = None,
        n_projections: IntSetting = None,
        bucket_width: IndexSetting = None,
        probes: IntSetting = None,
        seed: IntSetting = None,
        ef_search: IntSetting = None,
        n_probe: IntSetting = None,
        bits: IntSetting = None,
    ) -> dict[str, Any]:
        settings = {
            "n_tables": n_tables,
            "n_projections": n_projections,
            "bucket_width": bucket_width,
            "probes": probes,
            "seed": seed,
            "ef_search": ef_search,
            "n_probe": n_probe,
            "bits": bits,
        }
        data = None if image is None else image.file.read(BODY_LIMIT + 1)
        name = None if image is None else image.filename
        return service.search(data, path or None, k, index, metric, settings, feature_set, name)

    _add_metadata_routes(app, service)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``: a user's mistake 4xx with the page's message, never a 500 for one."""

    @app.exception_handler(CbirError)
    async def _user_error(request: Request, exc: CbirError) -> JSONResponse:
        return _error(http_status(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))


def _add_offline_docs(app: FastAPI, assets: Any) -> None:
    """``/docs`` served from the packaged Swagger UI files (FastAPI's default page loads them from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="cbir API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _add_metadata_routes(app: FastAPI, service: SearchService) -> None:
    """``/health``, ``/feature-sets``, ``/indexes`` and the collection's images under ``/images``."""

    @app.get("/health", summary="Whether the server answers, and what it has loaded")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/feature-sets", summary="The collection's feature sets (the first one is the default)")
    def feature_sets() -> dict[str, Any]:
        entries = service.feature_sets()
        default = service.feature_set().id if entries else None
        return {
            "collection": str(service.collection),
            "default": default,
            "feature_sets": [dataclasses.asdict(e) | {"default": e.id == default} for e in entries.values()],
        }

    @app.get("/indexes", summary="The index kinds, their settings, and the indexes built or saved")
    def indexes() -> dict[str, Any]:
        return service.indexes()

    @app.get("/images/{relpath:path}", summary="An image of the collection (a result's 'image' link)")
    def images(relpath: str) -> FileResponse:
        return FileResponse(service.image_file(relpath))
