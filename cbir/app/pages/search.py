"""Search page: query by an uploaded image, a camera photo or a collection image; the top-10 as a grid.

:func:`render` reads top to bottom: the engine of the chosen feature set → the index (left: :func:`choose_index`) and
the query (right: :func:`choose_query`) → the answer (:func:`search`) → the results → adding the query to the
collection or removing a result (:func:`change_collection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.navigation.page import StreamlitPage

from cbir.app import formats, ui, uploads
from cbir.core.errors import CbirError
from cbir.core.foreground import page_run
from cbir.core.names import METRIC_LABELS, METRICS
from cbir.data.images import IMAGE_EXTENSIONS, ImageDecodeError, jpeg_bytes, jpeg_data_url, thumbnail
from cbir.data.query import MAX_UPLOAD_BYTES, RESULT_TILE_SIDE, tile_jpeg, tiles_jpeg
from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png
from cbir.evaluation.evaluate import SINGLE_QUERY_SAMPLE
from cbir.evaluation.tuning import fastest_config, width_range
from cbir.indexes.reference import DEFAULT_EF_SEARCH
from cbir.indexes.registry import DEFAULT_K, IndexConfig
from cbir.service import early, growth
from cbir.service.search import QueryAnswer, SearchEngine

# where the query comes from, and which index answers it (the radio buttons' labels)
UPLOAD, CAMERA, COLLECTION, EXAMPLE = "Upload a file", "Camera", "Pick from the collection", "Example photo"
SOURCES = (UPLOAD, CAMERA, COLLECTION, EXAMPLE)
SCAN, LSH, HNSW, FASTEST = "Exact scan", "LSH", "HNSW (faiss)", "Fastest at a recall"
INDEX_CHOICES = (SCAN, LSH, HNSW, FASTEST)
TABLE_WIDTH = 880  # px: the results table in its popover, every column in view
RESULT_WIDTH = RESULT_TILE_SIDE  # px: five results a row beside the sidebar in a 1400-px window (930 px of page)
QUERY_SIDE = 256  # px: the query's picture, as a collection image's tile (its column: ~170 px wide in a 1400-px
# window, ~270 in a 1920-px one); it was 512 px, a 37-kB message with every answer (~11 kB now)
NEW_CLASS, UNLABELLED = "New class…", "Unlabelled (indexed like a distractor)"
PICK_LIST_LIMIT = 20_000  # larger collections are picked from by row number, not from a list of names
CHANGE_KEY = "search-change"  # the toggle that shows the controls to change the collection
UPLOAD_KEY = "search-upload"  # the uploader's key: the first one's, then with the number of files taken (-1, -2…)
TAKEN_KEY = "search-uploads-taken"  # how many uploaded files the page has taken from the uploader
UPLOADED_KEY = "search-uploaded"  # (name, bytes) of the last uploaded file: the query until the next one


def page() -> StreamlitPage:
    """This page in app.py's navigation, at ``/Search``."""
    return st.Page(render, title="Search", icon=":material/image_search:", url_path="Search")


@dataclass
class Query:
    """The query the user chose: an image (its bytes) or a collection row searched by its stored features."""

    source: str
    name: str = ""
    image: bytes | None = None
    row: int | None = None  # a collection row searched by its stored features (no image file, no model)
    picked_row: int | None = None  # the engine row of a collection image: left out of its own results


@dataclass
class Answer:
    """The answer to a :class:`Query` and how the query is shown beside it."""

    result: QueryAnswer
    picture: str  # the query's thumbnail: a JPEG as a data URL (sent inside the message, not encoded again)
    caption: str
    time_help: str


def render() -> None:
    ui.page_header(
        "Search by image",
        "Drop an image (or take a photo, or pick one from the collection): the ten most similar images of the "
        "collection are shown, with the time the query took and how many images the index compared.",
    )
    label, path, version = ui.chosen_feature_set()
    ui.preload_browser_code()  # drawn with the page, not with each answer: outside the fragment
    answer_page(label, path, version)


@st.fragment
def answer_page(label: str, path: str, version: int) -> None:
    """Everything below the header: a fragment, so that a new query (an upload, a pick, a slider) reruns and redraws
    only this part, not app.py's sidebar and navigation (a change there, or ``st.rerun()``, reruns the whole app).
    Its run is a page's run for the server's background work (it waits: :func:`cbir.core.foreground.page_run`), as
    app.py's runs are."""
    with page_run():
        answer_body(label, path, version)


def answer_body(label: str, path: str, version: int) -> None:
    """:func:`answer_page`'s content: the engine, the index and the query, the answer."""
    engine, sources = open_engine(path)
    if UPLOAD in sources:  # the model is there: an upload's query begins as its bytes arrive
        uploads.begin_queries_on_upload(engine)
    query_col, index_col = st.columns([3, 2], gap="large")
    with index_col:
        index_config = choose_index(path, version)
    with query_col:
        query = choose_query(engine.catalog, sources)

    ui.status_line(engine)  # what the last add, remove or undo did (by this session), until the next one
    if query.image is None and query.row is None:
        st.info("Choose a query image to search.")
        st.stop()
    answer = search(engine, query, index_config)
    show_answer(engine, answer, label)
    show_results(answer.result)
    change_collection(engine, query, answer.result, path)


def open_engine(path: str) -> tuple[SearchEngine, tuple[str, ...]]:
    """The shared search engine of the feature set at ``path`` and the query sources it can answer (only collection
    images, by their stored features, when the model cannot be loaded); refreshed to the collection's changes."""
    sources = SOURCES
    try:
        engine = ui.search_engine_with_model(path)
    except (CbirError, FileNotFoundError) as exc:
        st.warning(
            f"The model of this feature set cannot be loaded, so only images of the collection can be searched, by "
            f"their stored features: {exc}"
        )
        engine = ui.search_engine_without_model(path)
        sources = (COLLECTION,)
    engine.refresh()  # images added or removed since this session's last action (by any session or the CLI)
    if engine.warning:
        st.warning(engine.warning)
    return engine, sources


# ----------------------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------------------


def choose_index(path: str, version: int) -> IndexConfig:
    st.markdown("**Index**")
    kind = st.radio(
        "Index",
        INDEX_CHOICES,
        horizontal=True,
        label_visibility="collapsed",
        key="search-kind",
        help="The exact scan compares the query with every image; LSH only with those in its buckets; HNSW (FAISS, "
        "the field's reference) walks a neighbour graph; the last choice takes the fastest index of the tuning "
        "page's sweep (the scan, LSH settings, FAISS HNSW and IVF-Flat, hnswlib, cross-polytope LSH) that returns "
        "at least the recall you pick, as measured on the validation queries.",
    )
    metric = st.selectbox("Metric", METRICS, key="search-metric", format_func=METRIC_LABELS.get)
    if kind == FASTEST:
        return fastest_index(path, version, metric)
    if kind == HNSW:
        ef = st.slider("ef — candidates kept while walking the graph", 8, 512, DEFAULT_EF_SEARCH, key="search-ef")
        return IndexConfig("hnsw", metric, ef_search=ef)
    if kind == LSH:
        return lsh_index(path, version, metric)
    return IndexConfig("scan", metric)


def fastest_index(path: str, version: int, metric: str) -> IndexConfig:
    """The fastest setting of the tuning page's sweep at the recall picked with a slider."""
    target = st.slider(
        "recall@10 at least",
        0.5,
        1.0,
        0.9,
        0.05,
        key="search-target-recall",
        help="Share of the exact scan's ten nearest images the index must return (on the validation queries)",
    )
    fastest = fastest_config(ui.sweep(path, version, metric), target)
    index_config = IndexConfig.from_row(fastest)
    visited = fastest["visited_fraction"]
    st.caption(
        f"**{index_config.label}**: recall@10 {fastest['recall']:.3f}, "
        f"{formats.duration(fastest['single_query_ms'] / 1000)} a query (one at a time, as here: the mean over up "
        f"to {SINGLE_QUERY_SAMPLE} validation queries, features not included; "
        f"{formats.duration(fastest['query_ms'] / 1000)} a query in a batch), "
        + (f"{formats.share(visited)} of the index visited" if pd.notna(visited) else "visited not counted")
        + " (picked among the exact scan, the LSH sweep and the reference indexes: HNSW, IVF-Flat, hnswlib, "
        "cross-polytope LSH)"
    )
    return index_config


def lsh_index(path: str, version: int, metric: str) -> IndexConfig:
    """An LSH setting from four sliders, starting at the feature set's defaults."""
    defaults = ui.lsh_defaults(path, version, metric)
    low, high, step = width_range(defaults.bucket_width)
    g = st.slider("g — hash tables", 1, 20, defaults.n_tables, key="search-g")
    h = st.slider("h — projections per table", 1, 16, defaults.n_projections, key="search-h")
    w = st.slider(
        "w — bucket width",
        low,
        high,
        defaults.bucket_width,
        step,
        key=f"search-w-{path}-{metric}",
        help=f"Default {defaults.bucket_width:g}: a quarter of the median distance between images.",
    )
    probes = st.slider("probes — extra buckets per table", 0, 20, 0, key="search-probes")
    return IndexConfig("lsh", metric, g, h, w, probes)


# ----------------------------------------------------------------------------------------------------------
# The query
# ----------------------------------------------------------------------------------------------------------


def choose_query(catalog: pd.DataFrame, sources: tuple[str, ...]) -> Query:
    query = Query(st.radio("Query", sources, horizontal=True, label_visibility="collapsed", key="search-source"))
    if query.source != UPLOAD:
        st.session_state.pop(UPLOADED_KEY, None)  # another source: the uploader starts empty when chosen again
    if query.source == UPLOAD:
        query.name, query.image = uploaded_file()
    elif query.source == CAMERA:
        photo = st.camera_input("Take a photo", key="search-camera")
        if photo is not None:
            query.image, query.name = photo.getvalue(), "camera photo"
    elif query.source == EXAMPLE:
        query.name = st.selectbox(
            "Example photo",
            SAMPLE_PHOTOS,
            key="search-example",
            help="scikit-image's sample photos: out-of-domain queries for a collection of drawings",
        )
        query.image = sample_photo_png(query.name)
    else:
        pick_from_collection(query, catalog, by_file=sources == SOURCES)
    return query


def uploaded_file() -> tuple[str, bytes | None]:
    """The last file given to the uploader, as ``(name, bytes)`` (``("", None)`` before the first): taken out of
    the uploader in the run the file arrives, which then draws an empty uploader under a new key. So the next file is
    a plain upload, one run; given to an uploader that still holds a file it is a replacement, a run without a file
    and then one with it, and Streamlit 1.67 at times never made the second run (the page stayed at "Choose a query
    image" under the listed file; tests/test_bad_inputs.py met it in about one run of three)."""
    taken = st.session_state.get(TAKEN_KEY, 0)
    arrived = st.session_state.get(upload_key(taken))  # the uploader's value before it is drawn in this run
    if arrived is not None:
        st.session_state[UPLOADED_KEY] = (arrived.name, arrived.getvalue())
        uploads.release_upload(arrived)  # its uploader is not drawn again: nothing else would drop the file
        taken = st.session_state[TAKEN_KEY] = taken + 1
    st.file_uploader(
        "Drag and drop an image",
        key=upload_key(taken),
        type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS),
        help=f"JPEG, PNG, WebP, BMP, GIF or TIFF, up to {MAX_UPLOAD_BYTES // 2**20} MB; the image searched is shown "
        "below with its answer, and the next one can be dropped here",
    )
    st.caption(
        f"Up to {MAX_UPLOAD_BYTES // 2**20} MB: the browser refuses a bigger file (it is listed with a red mark "
        "and not searched)."
    )
    return st.session_state.get(UPLOADED_KEY, ("", None))


def upload_key(taken: int) -> str:
    """The uploader's key after ``taken`` files were taken from it."""
    return UPLOAD_KEY if taken == 0 else f"{UPLOAD_KEY}-{taken}"


def pick_from_collection(query: Query, catalog: pd.DataFrame, by_file: bool) -> None:
    """An image of the collection as ``query``: its file when ``by_file`` and it is there (searched like an upload,
    so the model runs), else its row (searched by its stored features)."""
    if len(catalog) <= PICK_LIST_LIMIT:
        relpaths = catalog["relpath"].tolist()
        chosen = st.selectbox(
            "or pick an image from the collection",
            relpaths,
            index=None,
            key="search-pick",
            placeholder="Type to filter, e.g. animals/…",
        )
        query.row = None if chosen is None else relpaths.index(chosen)
    else:  # a list of a million names would stall the browser
        query.row = st.number_input(
            f"Image of the collection, by row (0 to {len(catalog) - 1:,})",
            min_value=0,
            max_value=len(catalog) - 1,
            value=None,
            step=1,
            key="search-pick-row",
            placeholder="e.g. 12345",
        )
    if query.row is None:
        return
    query.row = int(query.row)
    query.picked_row = int(catalog["id"].iloc[query.row])
    query.name = str(catalog["relpath"].iloc[query.row])
    file = Path(catalog["path"].iloc[query.row])
    if by_file and file.is_file():
        query.image, query.row = file.read_bytes(), None


# ----------------------------------------------------------------------------------------------------------
# The answer
# ----------------------------------------------------------------------------------------------------------


def search(engine: SearchEngine, query: Query, index_config: IndexConfig) -> Answer:
    """The index built if it is not there yet (with a progress bar), then the query's answer."""
    if not engine.has_index(index_config):
        bar = st.progress(0.0, text=f"Building {index_config.label}…")
        engine.index(
            index_config,
            progress=lambda stage, done, total: bar.progress(
                done / max(total, 1), text=f"{index_config.label}: {stage} {done:,} / {total:,}"
            ),
        )
        bar.empty()
    if query.image is not None:
        return search_image(engine, query, query.image, index_config)
    assert query.row is not None and query.picked_row is not None
    with st.spinner("Searching…"):
        # one more result: the image itself, left out of its own answer
        result = engine.query_vector(engine.feature_set.features[query.picked_row], index_config, k=DEFAULT_K + 1)
        result = ui.without_query(result, query.picked_row, DEFAULT_K)
    return Answer(
        result,
        jpeg_data_url(tile_jpeg(str(engine.catalog["path"].iloc[query.row]))),
        f"Query: {formats.file_first(query.name)} (by its stored features; left out of its own results)",
        "One query, by the image's stored features: the search only (no model)",
    )


def search_image(engine: SearchEngine, query: Query, image: bytes, index_config: IndexConfig) -> Answer:
    """The answer to an image (its features computed by the engine's model); the page stops on an image that cannot
    be decoded."""
    try:
        embedded = early.embedded(engine, image)  # decoded and embedded (begun as an upload's bytes arrived)
    except ImageDecodeError as exc:
        st.error(f"**{query.name}** cannot be used as a query: {exc}. Please try another image.")
        st.stop()
    decoded = embedded.image
    for note in decoded.notes:
        st.info(note)
    for warning in decoded.warnings:
        st.warning(warning)
    with st.spinner("Searching…"):
        if query.picked_row is None:
            result = engine.query(embedded, index_config, k=DEFAULT_K)
        else:  # one more result: the image itself, left out of its own answer
            result = engine.query(embedded, index_config, k=DEFAULT_K + 1)
            result = ui.without_query(result, query.picked_row, DEFAULT_K)
    caption = f"Query: {formats.file_first(query.name)} ({decoded.original_size[0]}×{decoded.original_size[1]})" + (
        "; left out of its own results" if query.picked_row is not None else ""
    )
    time_help = (
        f"One query: computing its features {formats.duration(result.embed_seconds)} (the model's first query also "
        f"loads it) + the search {formats.duration(result.search_seconds)}"
    )
    return Answer(result, jpeg_data_url(jpeg_bytes(thumbnail(decoded.image, QUERY_SIDE))), caption, time_help)


def show_answer(engine: SearchEngine, answer: Answer, label: str) -> None:
    """The query's picture beside the answer's times and counts."""
    result = answer.result
    st.divider()
    left, right = st.columns([1, 4], gap="large")
    with left:
        st.image(answer.picture, width="stretch", caption=answer.caption)
    with right:
        m = st.columns(4)
        m[0].metric("Query time", formats.duration(result.seconds), help=answer.time_help)
        m[1].metric(
            "Search time",
            formats.duration(result.search_seconds),
            help="The index's part of this one query (without computing the query's features)",
        )
        counted = result.visited >= 0  # hnswlib does not count them
        m[2].metric(
            "Visited",
            formats.count(result.visited) if counted else formats.DASH,
            help="Images whose distance to the query was computed"
            + ("" if counted else " (hnswlib does not count them)"),
        )
        m[3].metric(
            "Share visited",
            formats.share(result.visited_fraction) if counted else formats.DASH,
            help=f"Visited images as a share of the {result.n_objects:,} searchable images",
        )
        n_left_out = len(engine.feature_set.report)
        st.caption(
            f"One query · {result.index_label} over the {result.n_objects:,} searchable images (every image of the "
            "collection, queries included"
            + (f"; {n_left_out:,} unusable files or copies left out, listed on Home" if n_left_out else "")
            + f") · {label}"
        )


def show_results(result: QueryAnswer) -> None:
    """The results as one list of tiles, and as a table in a popover (the browser draws it only when opened)."""
    if result.results.empty:
        st.warning(
            "No image found: the index compared no image with this query (its buckets were empty). Raise g, w or "
            "probes, or pick another index."
        )
        return
    if len(result.results) < DEFAULT_K:
        st.warning(f"The index found only {len(result.results)} images: raise g, w or probes to see more.")
    st.subheader("Most similar images")
    score_name = result.score_name
    rows = list(result.results.itertuples())
    # one image element for the ten results (small JPEGs, read in parallel, kept per file): the browser draws one
    # element, not ten bordered columns of three; made at the width shown and sent inside the message as data URLs
    # (Streamlit resized and encoded again a wider tile on every run, ~100 ms of the first answer, and the browser
    # then fetched each one)
    st.image(
        [jpeg_data_url(tile) for tile in tiles_jpeg([row.path for row in rows], side=RESULT_TILE_SIDE)],
        width=RESULT_WIDTH,
        caption=[
            f"#{row.rank} · {row.label} · {score_name} {row.score:.3f} · {formats.file_first(row.relpath)}"
            for row in rows
        ],
    )
    with st.popover("Results as a table"):  # drawn by the browser when opened
        st.dataframe(
            formats.human_columns(result.results.drop(columns=["path", "id"]), {"score": score_name.capitalize()}),
            width=TABLE_WIDTH,
            hide_index=True,
            column_config={score_name.capitalize(): st.column_config.NumberColumn(format="%.3f")},
        )


# ----------------------------------------------------------------------------------------------------------
# Changing the collection
# ----------------------------------------------------------------------------------------------------------


def change_collection(engine: SearchEngine, query: Query, result: QueryAnswer, path: str) -> None:
    """Add the query (an upload or a camera photo) to the collection; remove one of the results. The controls are
    drawn once asked for (a toggle that stays on for the next answers): the browser took ~150 ms of script on two busy
    cores to draw their selectboxes, checkbox and buttons with every answer, half of a first answer's (issue 21)."""
    st.subheader("Change the collection")
    reason = growth.cannot_grow(path)
    if reason:
        st.caption(reason)
        st.stop()
    can_add = query.source in (UPLOAD, CAMERA)  # an upload or a camera photo can join the collection
    if not st.toggle(
        "Add or remove images",
        key=CHANGE_KEY,
        help="Shows the controls to add the query (an upload or a camera photo) to the collection or remove one of "
        "its results, for this answer and the next ones",
    ):
        return
    add_col, remove_col = st.columns(2, gap="large")
    if can_add:
        with add_col:
            add_query(engine, query)
    with remove_col:
        remove_result(engine, result)


def add_query(engine: SearchEngine, query: Query) -> None:
    st.markdown(f"**Add {query.name} to the collection**")
    classes = sorted(engine.catalog["label"].dropna().unique())
    choice = st.selectbox(
        "Class",
        [*classes, NEW_CLASS, UNLABELLED],
        index=None,
        key="search-add-class",
        placeholder="Choose its class",
        help="A labelled image is indexed in its class's training folder; an unlabelled one is indexed like "
        "a distractor (never counted as relevant).",
    )
    new_class = st.text_input("New class name", key="search-add-new") if choice == NEW_CLASS else ""
    anyway = st.checkbox(
        "Add it even if it copies an image of the collection",
        key="search-add-anyway",
        help="The collection keeps one image of each group of exact or near copies; tick to add a copy anyway",
    )
    if not st.button("Add to the collection", key="search-add", disabled=choice is None):
        return
    target = None if choice == UNLABELLED else new_class if choice == NEW_CLASS else choice
    assert query.image is not None  # render() stops before this when there is no image
    try:
        with st.spinner("Checking the image and computing its features…"):
            report = ui.add_to_collection(engine, query.name, query.image, target, allow_duplicates=anyway)
    except CbirError as exc:
        ui.set_status("error", str(exc))
    else:
        row = report.images.iloc[0]
        ui.set_status(
            "success",
            f"Added **{formats.file_first(row.relpath)}** "
            f"({row.label if isinstance(row.label, str) else 'unlabelled'}) in {report.seconds:.2f} s: every "
            f"session finds it from its next query ({report.n_images:,} images).",
        )
    st.rerun()


def remove_result(engine: SearchEngine, result: QueryAnswer) -> None:
    """A result picked, then removed after a confirmation."""
    st.markdown("**Remove a result from the collection**")
    gone = st.selectbox(
        "Image",
        result.results["relpath"],
        index=None,
        key="search-remove-pick",
        placeholder="Choose a result",
        format_func=formats.file_first,
    )
    confirming = gone is not None and st.session_state.get("search-remove-confirm") == gone
    if not confirming:
        if st.button("Remove…", key="search-remove", disabled=gone is None):
            st.session_state["search-remove-confirm"] = gone
            st.rerun()
        return
    st.warning(
        f"Remove **{formats.file_first(gone)}** from every feature set of the collection? Its file moves to the "
        "collection's .removed/ folder; Undo puts it back."
    )
    yes, no = st.columns(2)
    if yes.button("Yes, remove it", key="search-remove-yes", type="primary"):
        st.session_state.pop("search-remove-confirm", None)
        try:
            report = ui.remove_from_collection(engine, gone)
        except CbirError as exc:
            ui.set_status("error", str(exc))
        else:
            ui.set_status(
                "success",
                f"Removed **{formats.file_first(gone)}** in {report.seconds:.2f} s: no session finds it from its "
                f"next query ({report.n_images:,} images).",
                undo=gone,
            )
        st.rerun()
    if no.button("Cancel", key="search-remove-no"):
        st.session_state.pop("search-remove-confirm", None)
        st.rerun()
