"""Search page: query by an uploaded image, a camera photo or a collection image; the top-10 as a grid."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cbir.app import formats, ui
from cbir.core.errors import CbirError
from cbir.core.names import METRIC_LABELS, METRICS
from cbir.data.images import IMAGE_EXTENSIONS, ImageDecodeError, thumbnail
from cbir.data.query import MAX_UPLOAD_BYTES, decode_query
from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png
from cbir.evaluation.tuning import fastest_config, width_range
from cbir.indexes.reference import DEFAULT_EF_SEARCH
from cbir.indexes.registry import DEFAULT_K, IndexConfig
from cbir.service import growth

# where the query comes from, and which index answers it (the radio buttons' labels)
UPLOAD, CAMERA, COLLECTION, EXAMPLE = "Upload a file", "Camera", "Pick from the collection", "Example photo"
SOURCES = (UPLOAD, CAMERA, COLLECTION, EXAMPLE)
SCAN, LSH, HNSW, FASTEST = "Exact scan", "LSH", "HNSW (faiss)", "Fastest at a recall"
INDEX_CHOICES = (SCAN, LSH, HNSW, FASTEST)
GRID_COLUMNS = 5
NEW_CLASS, UNLABELLED = "New class…", "Unlabelled (indexed like a distractor)"
PICK_LIST_LIMIT = 20_000  # larger collections are picked from by row number, not from a list of names

ui.page_header(
    "pages/1_Search.py",
    "Search by image",
    "Drop an image (or take a photo, or pick one from the collection): the ten most similar images of the "
    "collection are shown, with the time the query took and how many images the index compared.",
)
label, path, version = ui.chosen_feature_set()
sources = SOURCES
try:
    search = ui.search_engine_with_model(path)
except (CbirError, FileNotFoundError) as exc:
    st.warning(
        f"The model of this feature set cannot be loaded, so only images of the collection can be searched, by "
        f"their stored features: {exc}"
    )
    search = ui.search_engine_without_model(path)
    sources = (COLLECTION,)
search.refresh()  # images added or removed since this session's last action (by any session or the CLI)
catalog = search.catalog  # the searchable images; its "id" column is the feature row
if search.warning:
    st.warning(search.warning)

query_col, index_col = st.columns([3, 2], gap="large")
with index_col:
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
            f"{formats.duration(fastest['query_ms'] / 1000)} a query (the mean over a batch of "
            f"{round(fastest['search_seconds'] * 1000 / fastest['query_ms']):,} validation queries, features not "
            "included), "
            + (f"{formats.share(visited)} of the index visited" if pd.notna(visited) else "visited not counted")
            + " (picked among the exact scan, the LSH sweep and the reference indexes: HNSW, IVF-Flat, hnswlib, "
            "cross-polytope LSH)"
        )
    elif kind == HNSW:
        ef = st.slider("ef — candidates kept while walking the graph", 8, 512, DEFAULT_EF_SEARCH, key="search-ef")
        index_config = IndexConfig("hnsw", metric, ef_search=ef)
    elif kind == LSH:
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
        index_config = IndexConfig("lsh", metric, g, h, w, probes)
    else:
        index_config = IndexConfig("scan", metric)

with query_col:
    source = st.radio("Query", sources, horizontal=True, label_visibility="collapsed", key="search-source")
    query_bytes: bytes | None = None
    query_row: int | None = None  # a collection row searched by its stored features (no image file, no model)
    query_name = ""
    if source == UPLOAD:
        upload = st.file_uploader(
            "Drag and drop an image",
            key="search-upload",
            type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS),
            help=f"JPEG, PNG, WebP, BMP, GIF or TIFF, up to {MAX_UPLOAD_BYTES // 2**20} MB",
        )
        st.caption(
            f"Up to {MAX_UPLOAD_BYTES // 2**20} MB: the browser refuses a bigger file (it is listed with a red mark "
            "and not searched)."
        )
        if upload is not None:
            query_bytes, query_name = upload.getvalue(), upload.name
    elif source == CAMERA:
        photo = st.camera_input("Take a photo", key="search-camera")
        if photo is not None:
            query_bytes, query_name = photo.getvalue(), "camera photo"
    elif source == EXAMPLE:
        query_name = st.selectbox(
            "Example photo",
            SAMPLE_PHOTOS,
            key="search-example",
            help="scikit-image's sample photos: out-of-domain queries for a collection of drawings",
        )
        query_bytes = sample_photo_png(query_name)
    elif len(catalog) <= PICK_LIST_LIMIT:
        relpaths = catalog["relpath"].tolist()
        chosen = st.selectbox(
            "or pick an image from the collection",
            relpaths,
            index=None,
            key="search-pick",
            placeholder="Type to filter, e.g. animals/…",
        )
        query_row = None if chosen is None else relpaths.index(chosen)
    else:  # a list of a million names would stall the browser
        query_row = st.number_input(
            f"Image of the collection, by row (0 to {len(catalog) - 1:,})",
            min_value=0,
            max_value=len(catalog) - 1,
            value=None,
            step=1,
            key="search-pick-row",
            placeholder="e.g. 12345",
        )
    picked_row: int | None = None  # the engine row of a collection image: left out of its own results
    if source == COLLECTION and query_row is not None:
        query_row = int(query_row)
        picked_row = int(catalog["id"].iloc[query_row])
        query_name = str(catalog["relpath"].iloc[query_row])
        file = Path(catalog["path"].iloc[query_row])
        if sources == SOURCES and file.is_file():
            query_bytes, query_row = file.read_bytes(), None

ui.status_line(search)  # what the last add, remove or undo did (by this session), until the next one
if query_bytes is None and query_row is None:
    st.info("Choose a query image to search.")
    st.stop()

if not search.has_index(index_config):
    bar = st.progress(0.0, text=f"Building {index_config.label}…")
    search.index(
        index_config,
        progress=lambda stage, done, total: bar.progress(
            done / max(total, 1), text=f"{index_config.label}: {stage} {done:,} / {total:,}"
        ),
    )
    bar.empty()
if query_bytes is not None:
    try:
        query = decode_query(query_bytes)
    except ImageDecodeError as exc:
        st.error(f"**{query_name}** cannot be used as a query: {exc}. Please try another image.")
        st.stop()
    for note in query.notes:
        st.info(note)
    for warning in query.warnings:
        st.warning(warning)
    with st.spinner("Searching…"):
        if picked_row is None:
            result = search.query(query, index_config, k=DEFAULT_K)
        else:  # one more result: the image itself, left out of its own answer
            result = ui.without_query(search.query(query, index_config, k=DEFAULT_K + 1), picked_row, DEFAULT_K)
    picture = thumbnail(query.image, 512)
    caption = f"Query: {formats.file_first(query_name)} ({query.original_size[0]}×{query.original_size[1]})" + (
        "; left out of its own results" if picked_row is not None else ""
    )
    time_help = (
        f"One query: computing its features {formats.duration(result.embed_seconds)} (the model's first query also "
        f"loads it) + the search {formats.duration(result.search_seconds)}"
    )
else:
    assert query_row is not None and picked_row is not None
    with st.spinner("Searching…"):
        # one more result: the image itself, left out of its own answer
        result = search.query_vector(search.feature_set.features[picked_row], index_config, k=DEFAULT_K + 1)
        result = ui.without_query(result, picked_row, DEFAULT_K)
    picture = ui.tile(str(catalog["path"].iloc[query_row]))
    caption = f"Query: {formats.file_first(query_name)} (by its stored features; left out of its own results)"
    time_help = "One query, by the image's stored features: the search only (no model)"

st.divider()
left, right = st.columns([1, 4], gap="large")
with left:
    st.image(picture, width="stretch", caption=caption)
with right:
    m = st.columns(4)
    m[0].metric("Query time", formats.duration(result.seconds), help=time_help)
    m[1].metric(
        "Search time",
        formats.duration(result.search_seconds),
        help="The index's part of this one query (without computing the query's features)",
    )
    counted = result.visited >= 0  # hnswlib does not count them
    m[2].metric(
        "Visited",
        formats.count(result.visited) if counted else formats.DASH,
        help="Images whose distance to the query was computed" + ("" if counted else " (hnswlib does not count them)"),
    )
    m[3].metric(
        "Share visited",
        formats.share(result.visited_fraction) if counted else formats.DASH,
        help=f"Visited images as a share of the {result.n_objects:,} searchable images",
    )
    n_left_out = len(search.feature_set.report)
    st.caption(
        f"One query · {result.index_label} over the {result.n_objects:,} searchable images (every image of the "
        "collection, queries included"
        + (f"; {n_left_out:,} unusable files or copies left out, listed on Home" if n_left_out else "")
        + f") · {label}"
    )

if result.results.empty:
    st.warning(
        "No image found: the index compared no image with this query (its buckets were empty). Raise g, w or "
        "probes, or pick another index."
    )
else:
    if len(result.results) < DEFAULT_K:
        st.warning(f"The index found only {len(result.results)} images: raise g, w or probes to see more.")
    st.subheader("Most similar images")
    score_name = result.score_name
    rows = list(result.results.itertuples())
    for start in range(0, len(rows), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, row in zip(cols, rows[start : start + GRID_COLUMNS], strict=False):
            with col.container(border=True):
                st.image(ui.tile(row.path), width="stretch")
                st.markdown(f"**#{row.rank}** · {row.label}  \n{score_name} {row.score:.3f}")
                st.caption(formats.file_first(row.relpath))
    with st.expander("Results as a table"):
        st.dataframe(
            formats.human_columns(result.results.drop(columns=["path", "id"]), {"score": score_name.capitalize()}),
            width="stretch",
            hide_index=True,
            column_config={score_name.capitalize(): st.column_config.NumberColumn(format="%.3f")},
        )

st.subheader("Change the collection")
reason = growth.cannot_grow(path)
if reason:
    st.caption(reason)
    st.stop()
add_col, remove_col = st.columns(2, gap="large")
if source in (UPLOAD, CAMERA):  # an upload or a camera photo can join the collection
    with add_col:
        st.markdown(f"**Add {query_name} to the collection**")
        classes = sorted(catalog["label"].dropna().unique())
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
        if st.button("Add to the collection", key="search-add", disabled=choice is None):
            target = None if choice == UNLABELLED else new_class if choice == NEW_CLASS else choice
            try:
                with st.spinner("Checking the image and computing its features…"):
                    report = ui.add_to_collection(search, query_name, query_bytes, target, allow_duplicates=anyway)
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
with remove_col:
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
    else:
        st.warning(
            f"Remove **{formats.file_first(gone)}** from every feature set of the collection? Its file moves to the "
            "collection's .removed/ folder; Undo puts it back."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, remove it", key="search-remove-yes", type="primary"):
            st.session_state.pop("search-remove-confirm", None)
            try:
                report = ui.remove_from_collection(search, gone)
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
