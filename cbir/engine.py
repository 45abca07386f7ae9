"""What the Streamlit dashboard computes, without Streamlit: the pages only lay out what this module returns.

* **Workspace** — :func:`collection_status` (catalog, counts per class × split, feature sets, saved indexes) and
  :func:`build_default` (Open Clip Art collection, then EfficientNet-Lite0 features) for the home page.
* **Search** — :func:`decode_query` turns an upload into an RGB image plus notes for the user (CMYK, 16-bit,
  transparency, animation, a big JPEG decoded at reduced scale); :class:`SearchEngine` embeds the query with the
  same backbone and weights as the feature set and searches an exact scan or the LSH index over the whole
  collection (every role is searchable: a user looks for any image, a collection image finds itself first).
* **Index tuning** — :class:`IndexConfig` describes an index; :func:`evaluate_config` fits it on the index split
  and runs the validation queries (role ``query``); :func:`run_sweep` computes the background sweep grid.
* **Model comparison** — :func:`compare` evaluates feature sets × indexes × with/without distractors,
  :func:`distance_analysis` gives Section 4.1's distance distribution; ``fig_*`` build the plotly charts.

Everything expensive takes plain, hashable arguments (paths, frozen configs) so the pages can wrap it in
``st.cache_resource`` / ``st.cache_data``.
"""

from __future__ import annotations

import functools
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cbir import config
from cbir.analysis import distance_table, pairwise_distance_sample
from cbir.collection import Catalog, CollectionError, scan_collection
from cbir.errors import CbirError
from cbir.features import FeatureExtractor, FeatureSet, extract_collection, load_features
from cbir.images import MAX_JPEG_PIXELS, MAX_PIXELS, ImageDecodeError, load_image
from cbir.index import BaseIndex, LSHIndex, SequentialScan
from cbir.storage import ArtifactError

Progress = Callable[[int, int], None]
IndexKind = Literal["scan", "lsh"]
METRICS: tuple[str, ...] = ("euclidean", "cosine")
METRIC_NAMES = {"euclidean": "Euclidean distance", "cosine": "Cosine similarity"}
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_K = 10
# A second, app-side cap for uploads (the browser is capped by .streamlit/config.toml's maxUploadSize): a camera
# frame or a programmatic upload must not reach the decoder when it is absurdly large.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Big JPEG photos (phone cameras take 48–50 MP) are decoded at 1/2..1/8 scale in the DCT domain, which costs a
# fraction of the memory; anything above this many pixels is refused as load_image would refuse it.
# The paper's best web-app index (Section 7): g=7 tables, h=2 projections; w comes from the data.
DEFAULT_TABLES = 7
DEFAULT_PROJECTIONS = 2
# Budget for the recommended LSH configuration: at most this share of the indexed objects visited per query.
RECOMMEND_BUDGET_FRACTION = 0.2


class EngineError(CbirError, RuntimeError):
    """A dashboard action cannot be done; ``str(err)`` is a message for the user."""


# ----------------------------------------------------------------------------------------------------------
# Workspace: what is built
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CollectionStatus:
    """The home page's answer to "what is loaded": ``catalog`` is ``None`` when the collection is unusable."""

    root: Path
    catalog: Catalog | None
    error: str | None
    feature_sets: pd.DataFrame
    indexes: pd.DataFrame
    openclipart_installed: bool

    @property
    def ready(self) -> bool:
        """A collection and at least one complete feature set of it exist."""
        return self.catalog is not None and bool((self.feature_sets["status"] == "complete").any())

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and role (columns: index, query, distractor) plus a total column."""
        if self.catalog is None:
            return pd.DataFrame()
        counts = self.catalog.counts()
        return counts.assign(total=counts.sum(axis=1))

    def counts_long(self) -> pd.DataFrame:
        """The same counts in long form (class, role, images), for a grouped bar chart."""
        counts = self.counts().drop(columns="total", errors="ignore")
        if counts.empty:
            return pd.DataFrame(columns=["class", "role", "images"])
        return (
            counts.rename_axis(index="class", columns="role")
            .stack()
            .rename("images")
            .reset_index()
            .astype({"images": int})
        )


def list_indexes() -> pd.DataFrame:
    """Index artifacts saved under ``<artifacts>/indexes`` (by the CLI or benchmarks): file, size, modified."""
    root = config.artifacts_dir() / "indexes"
    files = sorted(root.rglob("*.joblib")) if root.is_dir() else []
    rows = [
        {
            "index": str(path.relative_to(root)),
            "size_mb": path.stat().st_size / 1e6,
            "modified": pd.Timestamp(path.stat().st_mtime, unit="s").floor("s"),
        }
        for path in files
    ]
    return pd.DataFrame(rows, columns=["index", "size_mb", "modified"])


def collection_status(root: str | os.PathLike[str] | None = None, version: int = 0) -> CollectionStatus:
    """Scan the collection (default: ``CBIR_COLLECTION`` or the Open Clip Art build) and list what is built
    (``version``: :func:`workspace_version`, only a cache key)."""
    from cbir.openclipart import OPENCLIPART_DIR
    from cbir.workspace import list_feature_sets

    del version
    root = Path(root) if root is not None else config.default_collection()
    catalog: Catalog | None = None
    error: str | None = None
    try:
        catalog = scan_collection(root)
    except CollectionError as exc:
        error = str(exc)
    feature_sets = list_feature_sets(root)
    if catalog is not None and not feature_sets.empty:
        # the extraction report lists the images that could not be decoded: the corrupt-image report
        catalog = Catalog(root=catalog.root, images=catalog.images, report=_extraction_report(feature_sets))
    return CollectionStatus(
        root=root,
        catalog=catalog,
        error=error,
        feature_sets=feature_sets,
        indexes=list_indexes(),
        openclipart_installed=OPENCLIPART_DIR.is_dir(),
    )


def _extraction_report(feature_sets: pd.DataFrame) -> pd.DataFrame:
    reports = []
    for path in feature_sets.loc[feature_sets["status"] == "complete", "path"]:
        try:
            reports.append(load_features(path).report)
        except (ArtifactError, KeyError, OSError):  # already flagged in the feature-set table
            continue
    if not reports:
        return pd.DataFrame(columns=["path", "reason"])
    return pd.concat(reports, ignore_index=True).drop_duplicates("path").reset_index(drop=True)


def build_default(
    root: str | os.PathLike[str] | None = None,
    backbone: str = DEFAULT_BACKBONE,
    progress: Callable[[str, int, int], None] | None = None,
) -> FeatureSet:
    """Make the dashboard usable from nothing: build the Open Clip Art collection at ``root`` when it has no
    images yet, then extract ``backbone`` features (cached and resumable), then those of every other backbone whose
    ImageNet weights are on this machine (the ResNets once ``CBIR_WEIGHTS_DIR`` holds their files).
    ``progress(stage, done, total)`` with stage ``"collection"`` or ``"features"``. Returns the ``backbone`` feature
    set. Raises :class:`EngineError` with the fix when something is missing."""
    from cbir.openclipart import INSTALL_HINT, OPENCLIPART_DIR, build_collection

    root = Path(root) if root is not None else config.default_collection()
    try:
        catalog = scan_collection(root)
    except CollectionError:
        if not OPENCLIPART_DIR.is_dir():
            raise EngineError(
                f"No collection at {root} and Open Clip Art is not installed ({OPENCLIPART_DIR} is "
                f"missing). Install it with: {INSTALL_HINT}"
            ) from None
        build_collection(root, progress=None if progress is None else lambda d, t: progress("collection", d, t))
        catalog = scan_collection(root)
    extractor = FeatureExtractor(backbone, "imagenet")
    try:
        extractor.weights_id  # noqa: B018 - builds the model now so that a missing weights file is reported here
    except FileNotFoundError as exc:
        raise EngineError(str(exc)) from exc
    on_progress = None if progress is None else lambda d, t: progress("features", d, t)
    result = extract_collection(catalog, extractor, progress=on_progress)
    from cbir.backbones import available_backbones

    for name, local in available_backbones().items():
        if local and name != backbone:
            extract_collection(catalog, FeatureExtractor(name, "imagenet"), progress=on_progress)
    return result


def feature_set_label(row: Mapping[str, Any]) -> str:
    """A short name for a feature set row of :func:`cbir.workspace.list_feature_sets` (or a meta dict):
    ``"resnet50v2 · ImageNet"``, ``"resnet50v2 · fine-tuned model2-pool"``."""
    weights = str(row.get("weights") or row.get("weights_id") or "?")
    kind = weights_kind(weights)
    if kind == "fine-tuned":
        kind = f"fine-tuned {weights.rsplit('-', 1)[0]}"
    elif kind == "random":
        kind = weights
    return f"{row.get('backbone')} · {kind}"


def weights_kind(weights_id: str) -> str:
    """``"ImageNet"``, ``"random"`` or ``"fine-tuned"`` from a weights id: ``<file stem>-<digest>`` (see
    :func:`cbir.backbones.weights_identity`); ImageNet ids carry the stem of a backbone's ImageNet weights file."""
    from cbir.backbones import BACKBONES

    if weights_id.startswith("random-"):
        return "random"
    imagenet_stems = {
        Path(spec.imagenet_file).stem.replace(".weights", "") for spec in BACKBONES.values() if spec.imagenet_file
    }
    if weights_id == "imagenet-download" or weights_id.rsplit("-", 1)[0] in imagenet_stems:
        return "ImageNet"
    return "fine-tuned"


def workspace_version(root: str | os.PathLike[str] | None = None) -> int:
    """Changes whenever a feature artifact of the collection is written or removed (a cache key part)."""
    from cbir.workspace import feature_files

    files = feature_files(root if root is not None else config.default_collection())
    return hash(tuple((str(f), file_version(f)) for f in files)) & 0x7FFFFFFFFFFFFFFF


def pick_feature_set(choices: Mapping[str, str], preferred: str | None) -> tuple[str, str] | None:
    """``(label, path)`` of ``preferred`` when it is among ``choices``, else of the first (newest); ``None``
    when there is none. The pages share the selection through the session state."""
    if not choices:
        return None
    label = preferred if preferred in choices else next(iter(choices))
    return label, choices[label]


def complete_feature_sets(root: str | os.PathLike[str] | None = None, version: int = 0) -> dict[str, str]:
    """``{label: artifact path}`` of the complete feature sets of the collection, newest first (``version``:
    :func:`workspace_version`, only a cache key)."""
    from cbir.workspace import list_feature_sets

    del version
    table = list_feature_sets(root if root is not None else config.default_collection())
    table = table[table["status"] == "complete"]
    labels = [feature_set_label(row) for _, row in table.iterrows()]
    # the short label is enough unless two feature sets share it (e.g. extracted with two weights files)
    labels = [
        label if labels.count(label) == 1 else f"{label} [{weights}]"
        for label, weights in zip(labels, table["weights"], strict=True)
    ]
    return dict(zip(labels, table["path"].astype(str), strict=True))


def load_feature_set(path: str | os.PathLike[str], version: int | None = None) -> FeatureSet:
    """Load a feature artifact (memoised per ``(path, version)``; ``version`` defaults to the file's mtime, so a
    re-extraction is picked up). The returned object is shared: do not modify it."""
    return _load_feature_set(str(path), file_version(path) if version is None else version)


@functools.lru_cache(maxsize=4)
def _load_feature_set(path: str, version: int) -> FeatureSet:
    del version  # only part of the memo key
    return load_features(path)


def file_version(path: str | os.PathLike[str]) -> int:
    """Modification time (ns) of ``path``, 0 when missing: the cache key part that changes with the file."""
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0


# ----------------------------------------------------------------------------------------------------------
# Indexes
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexConfig:
    """One index setting (hashable: a cache key). ``kind="scan"`` ignores the LSH fields."""

    kind: IndexKind = "scan"
    metric: str = "euclidean"
    n_tables: int = DEFAULT_TABLES
    n_projections: int = DEFAULT_PROJECTIONS
    bucket_width: float = 1.0
    probes: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("scan", "lsh"):
            raise ValueError(f"kind must be 'scan' or 'lsh', got {self.kind!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")

    def build(self) -> BaseIndex:
        """A new, unfitted index."""
        if self.kind == "scan":
            return SequentialScan(self.metric)  # type: ignore[arg-type]
        return LSHIndex(
            self.n_tables,
            self.n_projections,
            self.bucket_width,
            metric=self.metric,  # type: ignore[arg-type]
            seed=self.seed,
            probes=self.probes,
        )

    @property
    def score_name(self) -> str:
        return "distance" if self.metric == "euclidean" else "similarity"

    @property
    def label(self) -> str:
        if self.kind == "scan":
            return f"exact scan ({self.metric})"
        probes = f", probes={self.probes}" if self.probes else ""
        return f"LSH g={self.n_tables} h={self.n_projections} w={self.bucket_width:.3g}{probes} ({self.metric})"


def default_width(features: np.ndarray, metric: str = "euclidean") -> float:
    """The data-driven starting bucket width (:func:`cbir.evaluation.default_bucket_width`), rounded to 3
    significant digits so that it is a clean slider value and a stable cache key."""
    from cbir.evaluation import default_bucket_width

    return _round_sig(default_bucket_width(features, metric))


def default_lsh_config(features: np.ndarray, metric: str = "euclidean") -> IndexConfig:
    """The paper's web-app setting g=7, h=2 with the data-driven w (the paper's w=6 was for its features)."""
    return IndexConfig("lsh", metric, DEFAULT_TABLES, DEFAULT_PROJECTIONS, default_width(features, metric))


def _round_sig(value: float, digits: int = 3) -> float:
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(round(value, digits - 1 - math.floor(math.log10(abs(value)))))


def width_range(default: float) -> tuple[float, float, float]:
    """Slider bounds ``(low, high, step)`` for w around its default: 1/10× to 4×, 100 steps."""
    low, high = _round_sig(default / 10), _round_sig(default * 4)
    return low, high, _round_sig((high - low) / 100, 2)


# ----------------------------------------------------------------------------------------------------------
# Query decoding
# ----------------------------------------------------------------------------------------------------------


@dataclass
class QueryImage:
    """A decoded query: RGB ``image`` plus ``notes`` telling the user what was converted."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    original_mode: str = "RGB"
    format: str | None = None


def _probe(data: bytes) -> tuple[str | None, str, tuple[int, int], int, bool]:
    """Format, mode, size, frame count and transparency of an image, read from its header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as probe:
            transparent = probe.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in probe.info
            return probe.format, probe.mode, probe.size, int(getattr(probe, "n_frames", 1) or 1), transparent


def decode_query(source: bytes | str | os.PathLike[str] | Image.Image) -> QueryImage:
    """Decode an uploaded file (bytes), a path or a PIL image into an RGB query image.

    Raises :class:`cbir.images.ImageDecodeError` with a user-facing message for empty, non-image, corrupt,
    truncated, too small and too large inputs; what is converted (CMYK, 16-bit, transparency, animation, a big
    photo decoded at reduced scale) is explained in ``notes``.
    """
    if isinstance(source, Image.Image):
        image = source if source.mode == "RGB" else source.convert("RGB")
        return QueryImage(image=image, original_size=source.size, original_mode=source.mode)
    if not isinstance(source, bytes | bytearray):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"{path}: no such file")
        source = path.read_bytes()
    data = bytes(source)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageDecodeError(
            f"the file is too big ({len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB)"
        )
    notes: list[str] = []
    try:
        fmt, mode, size, frames, transparent = _probe(data)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        fmt, mode, size, frames, transparent = None, "RGB", (0, 0), 1, False  # load_image words the error
    pixels = size[0] * size[1]
    if fmt == "JPEG" and MAX_PIXELS < pixels <= MAX_JPEG_PIXELS:  # load_image decodes it at a reduced scale
        notes.append(
            f"This photo is {pixels / 1e6:.0f} megapixels; it was decoded at reduced size for the search "
            f"(the model looks at 224×224 pixels anyway)."
        )
    elif pixels > MAX_PIXELS:  # say it in megapixels before Pillow's decompression-bomb wording does
        raise ImageDecodeError(
            f"the image is too large ({size[0]}×{size[1]} = {pixels / 1e6:.0f} megapixels; the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels). Please use a smaller version of it."
        )
    try:
        image = load_image(data)
    except ImageDecodeError as exc:  # load_image names its source; for an upload that is just noise
        raise ImageDecodeError(str(exc).removeprefix("uploaded data: ")) from exc
    if mode == "CMYK":
        notes.append("The image is in CMYK (print) colours; it was converted to RGB.")
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(
            f"The image has {'16' if mode.startswith('I;16') else '32'}-bit greyscale pixels; it was "
            "rescaled to 8 bits per channel."
        )
    elif mode in ("L", "1", "LA"):
        notes.append("The image is greyscale; it is searched as a grey RGB image.")
    if transparent:
        notes.append("The image has transparent areas; they were filled with white.")
    if frames > 1:
        notes.append(f"The image is animated ({frames} frames); only the first frame is used.")
    return QueryImage(image=image, notes=notes, original_size=size, original_mode=mode, format=fmt)


def tile(source: str | os.PathLike[str] | Image.Image, side: int = 256) -> Image.Image:
    """A ``side``×``side`` RGB tile: the image fitted inside, centred on white, so result grids line up."""
    image = source if isinstance(source, Image.Image) else load_image(source)
    fitted = image.convert("RGB")
    fitted.thumbnail((side, side))
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(fitted, ((side - fitted.width) // 2, (side - fitted.height) // 2))
    return canvas


# ----------------------------------------------------------------------------------------------------------
# Search
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
    ``<artifacts>/finetune`` and the weights folder by their identity. Raises :class:`EngineError` otherwise.
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
    raise EngineError(
        f"cannot find the weights {weights_id!r} that computed this {backbone} feature set "
        f"(looked under {', '.join(str(f) for f in folders if f is not None)}; the ImageNet weights "
        f"are {known}). Pick another feature set or re-extract it."
    )


def make_extractor(spec: ExtractorSpec, warm_up: bool = True) -> FeatureExtractor:
    """Build the feature extractor of ``spec``; ``warm_up`` runs one image so the first user query is not the
    one paying for graph tracing."""
    extractor = FeatureExtractor(spec.backbone, spec.weights, batch_size=1, seed=spec.seed)
    if warm_up:
        extractor.transform([Image.new("RGB", (32, 32), "white")])
    return extractor


@dataclass
class SearchResult:
    """The answer to one query. ``results``: rank, id, path, relpath, label, role, score (best first; fewer than
    k rows when the LSH candidates ran out)."""

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
    from the feature set's meta (:func:`extractor_spec`). Fitted indexes are kept per :class:`IndexConfig`.
    """

    def __init__(
        self, feature_set: FeatureSet, extractor: FeatureExtractor | None = None, max_indexes: int = 8
    ) -> None:
        if len(feature_set.features) == 0:
            raise EngineError("the feature set is empty")
        self.feature_set = feature_set
        self._extractor = extractor
        self._indexes: dict[IndexConfig, BaseIndex] = {}
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
        if self._extractor is None:
            self._extractor = make_extractor(extractor_spec(self.feature_set.meta), warm_up=False)
        return self._extractor

    @property
    def n_objects(self) -> int:
        return len(self.feature_set.features)

    def index(self, config: IndexConfig) -> BaseIndex:
        """The fitted index of ``config`` over all rows (built once, least recently built evicted first)."""
        if config not in self._indexes:
            while len(self._indexes) >= self.max_indexes:
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[config] = config.build().fit(self.feature_set.features)
        return self._indexes[config]

    def embed(self, image: Image.Image) -> np.ndarray:
        """(1, dim) float32 features of one RGB image."""
        return self.extractor.transform([image])

    def query(
        self,
        source: bytes | str | os.PathLike[str] | Image.Image | QueryImage,
        config: IndexConfig = IndexConfig(),
        k: int = DEFAULT_K,
    ) -> SearchResult:
        """Decode (see :func:`decode_query`), embed and search; raises ``ImageDecodeError`` for bad input."""
        query = source if isinstance(source, QueryImage) else decode_query(source)
        started = time.perf_counter()
        vector = self.embed(query.image)
        embed_seconds = time.perf_counter() - started
        result = self.query_vector(vector, config, k)
        result.embed_seconds = embed_seconds
        result.seconds += embed_seconds
        result.notes = list(query.notes)
        return result

    def query_vector(self, vector: np.ndarray, config: IndexConfig = IndexConfig(), k: int = DEFAULT_K) -> SearchResult:
        """Search with already computed features ``vector`` (dim,) or (1, dim)."""
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
        return SearchResult(
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


# ----------------------------------------------------------------------------------------------------------
# Index tuning
# ----------------------------------------------------------------------------------------------------------


def evaluation_split(feature_set: FeatureSet, with_distractors: bool = True) -> Any:
    """The index/query split of a feature set (:func:`cbir.evaluation.split_collection`)."""
    from cbir.evaluation import split_collection

    return split_collection(feature_set.features, feature_set.labels, feature_set.roles, with_distractors)


def evaluate_config(
    feature_set: FeatureSet,
    config: IndexConfig,
    k: int = DEFAULT_K,
    with_distractors: bool = True,
    split: Any | None = None,
) -> Any:
    """Fit the index of ``config`` on the index split and run every validation query: an
    :class:`cbir.evaluation.EvaluationResult` (mAP@k, per-class mAP, visited objects, latency)."""
    from cbir.evaluation import evaluate_split

    split = split if split is not None else evaluation_split(feature_set, with_distractors)
    return evaluate_split(config.build(), split, k=k)


def searchable_features(feature_set: FeatureSet) -> np.ndarray:
    """The rows an index holds in the evaluation (index split + distractors): what default widths come from."""
    return feature_set.features[feature_set.roles != "query"]


def default_grid(features: np.ndarray, metric: str = "euclidean") -> dict[str, list[float]]:
    """A modest background sweep: g ∈ {1, 2, 4, 7, 10}, h ∈ {1, 2, 4, 8}, w ∈ {½, 1, 2} × the default width
    (so the tuning page's default setting g=7, h=2, default w is one of its points)."""
    width = default_width(features, metric)
    return {
        "n_tables": [1, 2, 4, 7, 10],
        "n_projections": [1, 2, 4, 8],
        "bucket_width": [_round_sig(width * f) for f in (0.5, 1.0, 2.0)],
    }


def sweep_configs(
    feature_set: FeatureSet,
    metric: str = "euclidean",
    grid: Mapping[str, Sequence[float]] | None = None,
    probes: Sequence[int] = (0,),
) -> list[IndexConfig]:
    """The exact scan then one LSH config per point of ``grid`` (default :func:`default_grid`) × ``probes``."""
    grid = grid if grid is not None else default_grid(searchable_features(feature_set), metric)
    configs = [IndexConfig("scan", metric)]
    for g in grid["n_tables"]:
        for h in grid["n_projections"]:
            for w in grid["bucket_width"]:
                configs += [IndexConfig("lsh", metric, int(g), int(h), float(w), int(t)) for t in probes]
    return configs


def sweep_table(configs: Sequence[IndexConfig], results: Sequence[Any]) -> pd.DataFrame:
    """One row per evaluated config (:data:`cbir.evaluation.SWEEP_COLUMNS` + ``pareto`` + ``label``)."""
    from cbir.evaluation import SWEEP_COLUMNS, pareto_frontier

    # the result columns (map … query_ms) are attributes of the evaluation result under the same names
    result_columns = SWEEP_COLUMNS[SWEEP_COLUMNS.index("metric") + 1 :]
    rows = []
    for config_, result in zip(configs, results, strict=True):
        lsh = config_.kind == "lsh"
        rows.append(
            {
                "index": config_.kind,
                "n_tables": config_.n_tables if lsh else np.nan,
                "n_projections": config_.n_projections if lsh else np.nan,
                "bucket_width": config_.bucket_width if lsh else np.nan,
                "probes": config_.probes if lsh else np.nan,
                "metric": config_.metric,
                **{column: getattr(result, column) for column in result_columns},
            }
        )
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    table["pareto"] = pareto_frontier(table) if len(table) else pd.Series(dtype=bool)
    table["label"] = [config_.label for config_ in configs]
    return table


def run_sweep(
    feature_set: FeatureSet,
    metric: str = "euclidean",
    grid: Mapping[str, Sequence[float]] | None = None,
    k: int = DEFAULT_K,
    with_distractors: bool = True,
    probes: Sequence[int] = (0,),
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Evaluate the exact scan and every LSH configuration of ``grid`` (see :func:`sweep_configs`)."""
    configs = sweep_configs(feature_set, metric, grid, probes)
    split = evaluation_split(feature_set, with_distractors)
    results = []
    for done, config_ in enumerate(configs, start=1):
        results.append(evaluate_config(feature_set, config_, k, with_distractors, split=split))
        if progress is not None:
            progress(done, len(configs))
    return sweep_table(configs, results)


def recommended_config(
    sweep: pd.DataFrame, n_indexed: int, budget_fraction: float = RECOMMEND_BUDGET_FRACTION
) -> IndexConfig | None:
    """The best-mAP LSH configuration of a sweep visiting at most ``budget_fraction`` of the indexed objects;
    ``None`` when none fits."""
    from cbir.evaluation import recommend

    lsh = sweep[sweep["index"] == "lsh"]
    try:
        best = recommend(lsh, budget_fraction * n_indexed)
    except ValueError:
        return None
    return IndexConfig(
        "lsh",
        str(best["metric"]),
        int(best["n_tables"]),
        int(best["n_projections"]),
        float(best["bucket_width"]),
        int(best["probes"]),
    )


def result_metrics(result: Any) -> dict[str, float]:
    """The headline numbers of an evaluation (what the tuning page shows as metrics)."""
    return {
        "map": float(result.map),
        "mean_visited": float(result.mean_visited),
        "visited_fraction": float(result.visited_fraction),
        "query_ms": float(result.query_ms),
        "fit_seconds": float(result.fit_seconds),
        "mean_score": float(result.mean_score),
    }


# ----------------------------------------------------------------------------------------------------------
# Model comparison
# ----------------------------------------------------------------------------------------------------------

COMPARISON_COLUMNS = [
    "feature_set",
    "backbone",
    "weights",
    "index",
    "config",
    "metric",
    "distractors",
    "map",
    "mean_score",
    "score_name",
    "mean_visited",
    "visited_fraction",
    "n_indexed",
    "n_queries",
    "query_ms",
]


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
    """``table``: one row per job (:data:`COMPARISON_COLUMNS`); ``per_class``: feature_set, index, distractors,
    class, n_queries, map."""

    table: pd.DataFrame
    per_class: pd.DataFrame


def comparison_jobs(
    items: Sequence[tuple[str, str, int, Sequence[IndexConfig]]], distractor_settings: Sequence[bool] = (True, False)
) -> list[ComparisonJob]:
    """Jobs for ``(label, path, version, configs)`` items × distractor settings; "without distractors" is skipped
    for a collection that has none (it would index the same objects as "with")."""
    jobs = []
    for label, path, version, configs in items:
        has_distractors = bool((load_feature_set(path, version).roles == "distractor").any())
        for config_ in configs:
            for with_distractors in distractor_settings:
                if not with_distractors and not has_distractors and True in distractor_settings:
                    continue
                jobs.append(ComparisonJob(label, path, version, config_, with_distractors))
    return jobs


def comparison_table(jobs: Sequence[ComparisonJob], results: Sequence[Any]) -> Comparison:
    """Assemble evaluated jobs into the comparison table and the long per-class table."""
    rows, per_class = [], []
    for job, result in zip(jobs, results, strict=True):
        meta = load_feature_set(job.path, job.version).meta
        index_name = "exact scan" if job.config.kind == "scan" else "LSH"
        distractors = "with" if job.with_distractors else "without"
        rows.append(
            {
                "feature_set": job.label,
                "backbone": meta.get("backbone"),
                "weights": weights_kind(str(meta.get("weights_id", ""))),
                "index": index_name,
                "config": job.config.label,
                "metric": job.config.metric,
                "distractors": distractors,
                "map": result.map,
                "mean_score": result.mean_score,
                "score_name": result.score_name,
                "mean_visited": result.mean_visited,
                "visited_fraction": result.visited_fraction,
                "n_indexed": result.n_indexed,
                "n_queries": result.n_queries,
                "query_ms": result.query_ms,
            }
        )
        per_class.append(result.per_class.assign(feature_set=job.label, index=index_name, distractors=distractors))
    columns = ["feature_set", "index", "distractors", "class", "n_queries", "map"]
    per_class_table = pd.concat(per_class, ignore_index=True)[columns] if per_class else pd.DataFrame(columns=columns)
    return Comparison(table=pd.DataFrame(rows, columns=COMPARISON_COLUMNS), per_class=per_class_table)


def comparison_configs(
    feature_set: FeatureSet, metric: str = "euclidean", sweep: pd.DataFrame | None = None
) -> list[IndexConfig]:
    """Exact scan plus LSH at the configuration recommended by ``sweep`` (when given and one fits the budget),
    else at :func:`default_lsh_config`."""
    lsh = None
    if sweep is not None:
        lsh = recommended_config(sweep, int((feature_set.roles != "query").sum()))
    return [IndexConfig("scan", metric), lsh or default_lsh_config(searchable_features(feature_set), metric)]


def compare(
    items: Sequence[tuple[str, str, int, Sequence[IndexConfig]]],
    k: int = DEFAULT_K,
    distractor_settings: Sequence[bool] = (True, False),
    progress: Progress | None = None,
) -> Comparison:
    """Evaluate every :func:`comparison_jobs` job (the pages do the same through a cached evaluation)."""
    jobs = comparison_jobs(items, distractor_settings)
    results = []
    for done, job in enumerate(jobs, start=1):
        results.append(evaluate_for(job.path, job.version, job.config, job.with_distractors, k))
        if progress is not None:
            progress(done, len(jobs))
    return comparison_table(jobs, results)


@dataclass
class DistanceAnalysis:
    """Section 4.1 for one feature set (index split): ``table`` overall + per class means, ``sample`` pairs."""

    table: pd.DataFrame
    sample: pd.DataFrame


def distance_analysis(feature_set: FeatureSet, n_pairs: int = 20000, max_samples: int = 2000) -> DistanceAnalysis:
    """Mean euclidean distance / cosine similarity (overall, per class) and a random pair sample for histograms,
    on the index split like the paper's training-set analysis."""
    rows = feature_set.roles == "index"
    features = feature_set.features[rows]
    return DistanceAnalysis(
        table=distance_table(features, feature_set.labels[rows], max_samples=max_samples),
        sample=pairwise_distance_sample(features, n_pairs=n_pairs),
    )


def distance_summary(analyses: Mapping[str, DistanceAnalysis]) -> pd.DataFrame:
    """The distance tables of several feature sets stacked, with a ``feature_set`` column first."""
    frames = [analysis.table.assign(feature_set=name) for name, analysis in analyses.items()]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["feature_set", *[c for c in table.columns if c != "feature_set"]]]


# ----------------------------------------------------------------------------------------------------------
# Path-keyed entry points: plain hashable arguments so the pages can wrap them in st.cache_data /
# st.cache_resource and share the cache between pages (Streamlit keys a cache by the wrapped function). A leading
# underscore marks an argument Streamlit must not hash.
# ----------------------------------------------------------------------------------------------------------


def search_engine_for(path: str, version: int, _extractor: FeatureExtractor | None = None) -> SearchEngine:
    """A :class:`SearchEngine` over the feature set at ``path`` (extractor from its meta unless given), with the
    exact scan built and run once so that the first query's time is not numba's start-up."""
    search = SearchEngine(load_feature_set(path, version), _extractor)
    search.query_vector(search.feature_set.features[0])
    return search


def evaluate_for(
    path: str, version: int, config: IndexConfig, with_distractors: bool = True, k: int = DEFAULT_K
) -> Any:
    """:func:`evaluate_config` of the feature set at ``path``."""
    return evaluate_config(load_feature_set(path, version), config, k, with_distractors)


def sweep_configs_for(path: str, version: int, metric: str = "euclidean") -> list[IndexConfig]:
    """:func:`sweep_configs` (default grid) of the feature set at ``path``."""
    return sweep_configs(load_feature_set(path, version), metric)


def comparison_configs_for(
    path: str, version: int, metric: str = "euclidean", sweep: pd.DataFrame | None = None
) -> list[IndexConfig]:
    """:func:`comparison_configs` of the feature set at ``path``."""
    return comparison_configs(load_feature_set(path, version), metric, sweep)


def distance_analysis_for(path: str, version: int) -> DistanceAnalysis:
    """:func:`distance_analysis` of the feature set at ``path``."""
    return distance_analysis(load_feature_set(path, version))


def lsh_defaults_for(path: str, version: int, metric: str = "euclidean") -> IndexConfig:
    """:func:`default_lsh_config` on the indexed rows of the feature set at ``path``."""
    return default_lsh_config(searchable_features(load_feature_set(path, version)), metric)


# ----------------------------------------------------------------------------------------------------------
# Figures (plotly)
# ----------------------------------------------------------------------------------------------------------


def _grouped_bars(frame: pd.DataFrame, x: str, y: str, color: str, layout: Mapping[str, Any], **options: Any) -> Any:
    """Bars of ``y`` per ``x``, side by side per ``color`` (``options``: more ``px.bar`` arguments), then
    ``fig.update_layout(**layout)``."""
    import plotly.express as px

    fig = px.bar(frame, x=x, y=y, color=color, barmode="group", **options)
    fig.update_layout(**layout)
    return fig


def fig_collection_counts(counts_long: pd.DataFrame) -> Any:
    """Grouped bars: images per class and role."""
    return _grouped_bars(
        counts_long,
        "class",
        "images",
        "role",
        {"xaxis_tickangle": -35, "legend_title_text": "", "margin": {"t": 50, "b": 10}},
        title="Images per class and role",
    )


def fig_comparison(table: pd.DataFrame, value: str, title: str | None = None) -> Any:
    """Bars of ``value`` (map, mean_visited, visited_fraction, mean_score…) per feature set, grouped by index,
    one facet per distractor setting."""
    labels = {
        "map": "mAP@10",
        "mean_visited": "visited objects / query",
        "visited_fraction": "share visited",
        "mean_score": "mean " + (str(table["score_name"].iloc[0]) if len(table) else "score"),
        "query_ms": "ms / query",
        "feature_set": "feature set",
    }
    fig = _grouped_bars(
        table.assign(distractors=table["distractors"] + " distractors"),
        "feature_set",
        value,
        "index",
        {"legend_title_text": "", "margin": {"t": 60, "b": 10}},
        facet_col="distractors",
        title=title or labels.get(value, value),
        labels=labels,
        text_auto=".3g",
        category_orders={"distractors": ["with distractors", "without distractors"]},
    )
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def fig_comparison_per_class(per_class: pd.DataFrame, distractors: str = "with") -> Any:
    """Per-class mAP bars, one colour per feature set × index."""
    frame = per_class[per_class["distractors"] == distractors].assign(
        setting=lambda df: df["feature_set"] + " — " + df["index"]
    )
    return _grouped_bars(
        frame,
        "class",
        "map",
        "setting",
        {"xaxis_tickangle": -35, "yaxis_range": [0, 1], "margin": {"t": 50, "b": 10}},
        title=f"Per-class mAP@10 ({distractors} distractors)",
        labels={"map": "mAP@10", "setting": ""},
    )


def fig_distance_histograms(samples: Mapping[str, pd.DataFrame], column: str = "euclidean") -> Any:
    """Overlaid histograms of pairwise ``column`` (euclidean or cosine) per feature set."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, sample in samples.items():
        fig.add_trace(go.Histogram(x=sample[column], name=name, opacity=0.6, nbinsx=60, histnorm="probability"))
    title = "Euclidean distance" if column == "euclidean" else "Cosine similarity"
    fig.update_layout(
        barmode="overlay",
        title=f"{title}, random pairs",
        xaxis_title=title.lower(),
        yaxis_title="share of pairs",
        legend_title_text="",
        margin={"t": 50, "b": 10},
    )
    return fig


def fig_per_class(per_class: pd.DataFrame, reference: pd.DataFrame | None = None) -> Any:
    """Per-class mAP bars of the current setting, beside the exact scan's (``reference``) when given."""
    frames = [per_class.assign(index="current setting")]
    if reference is not None:
        frames.append(reference.assign(index="exact scan"))
    return _grouped_bars(
        pd.concat(frames, ignore_index=True),
        "class",
        "map",
        "index",
        {"xaxis_tickangle": -35, "yaxis_range": [0, 1], "margin": {"t": 20, "b": 10}},
        labels={"map": "mAP@10", "index": ""},
        hover_data=["n_queries"],
        color_discrete_map={"current setting": "#d62728", "exact scan": "#2ca02c"},
    )


def nearest(values: Sequence[float], target: float) -> float:
    """The element of ``values`` closest to ``target`` (the sweep grid point nearest to a slider setting)."""
    return min(values, key=lambda value: abs(float(value) - float(target)))
