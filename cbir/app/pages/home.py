"""Home page: what is loaded and built (the collection, its feature sets, saved indexes, the images left out), and
buttons that build them.

:func:`render` reads top to bottom: the introduction with links to the other pages → the collection → (when nothing
is built yet) the button that builds it → feature sets → indexes → images left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from cbir.app import formats, plots
from cbir.app.pages import comparison, search, tuning
from cbir.app.ui import FEATURE_SET_KEY, collection_status, feature_set_choices
from cbir.core import config
from cbir.core.errors import CbirError
from cbir.core.names import INDEX_KINDS, INDEX_LABELS, METRICS
from cbir.data.openclipart import INSTALL_HINT
from cbir.evaluation.comparison import keep_default_comparison
from cbir.features import workspace
from cbir.features.backbones import BACKBONES, available_backbones
from cbir.features.saved_indexes import build_saved
from cbir.features.sources import FeatureSet
from cbir.service.search import default_config

T = TypeVar("T")


def page() -> StreamlitPage:
    """This page in app.py's navigation: the default page, at ``/``."""
    return st.Page(render, title="Home", icon=":material/home:", default=True)


def render() -> None:
    root = config.default_collection()
    status = collection_status(str(root), workspace.workspace_version(root))
    show_intro(status)
    show_collection(root, status)
    if not status.ready:
        show_build(root, status)

    show_feature_sets(status)
    show_indexes()
    show_left_out(root, status)


def show_intro(status: workspace.CollectionStatus) -> None:
    st.title("Content-based image retrieval")
    complete = (
        status.feature_sets[status.feature_sets["status"] == "complete"] if not status.feature_sets.empty else None
    )
    backbones = sorted({formats.backbone_name(b) for b in complete["backbone"]}) if complete is not None else []
    st.caption(
        f"Deep CNN features ({', '.join(backbones) or 'none extracted yet'}) + an E2LSH index (numba), after *Web "
        "image search engine based on LSH index and CNN Resnet50* (ResNet50's ImageNet weights are not installed "
        "here, so the features are EfficientNet-Lite0's unless you add them): query by image, tune the index, "
        "compare models."
    )
    if status.ready:
        st.markdown(
            "**Start here:** search the collection with an image of your own, then see how the index trades "
            "accuracy for speed."
        )
        links = st.columns(3)
        links[0].page_link(search.page(), label="Search by image", icon=":material/image_search:")
        links[1].page_link(tuning.page(), label="Tune the LSH index", icon=":material/tune:")
        links[2].page_link(comparison.page(), label="Compare models", icon=":material/bar_chart:")


def show_collection(root: Path, status: workspace.CollectionStatus) -> None:
    st.subheader("Collection")
    st.markdown(f"`{root}`")
    if status.catalog is None:
        st.warning(f"No usable collection yet: {status.error}")
    else:
        catalog = status.catalog
        counts = status.counts()
        n_classes = len(catalog.classes)
        cols = st.columns(4)
        cols[0].metric("Images", f"{len(catalog.images):,}")
        cols[1].metric("Classes", n_classes)
        cols[2].metric(
            "Queries",
            f"{int((catalog.images['role'] == 'query').sum()):,}",
            help="The validation split: the queries the tuning and comparison pages evaluate with",
        )
        cols[3].metric("Distractors", f"{int((catalog.images['role'] == 'distractor').sum()):,}")
        n_left_out = len(catalog.report)
        n_queries = int((catalog.images["role"] == "query").sum())
        st.caption(
            f"The Search page searches {len(catalog.images) - n_left_out:,} images: the {len(catalog.images):,} "
            f"images less {n_left_out:,} left out (unusable or copies, listed below). The tuning and comparison "
            f"pages ask the {n_queries:,} validation queries against the other images (less those left out)."
        )
        left, right = st.columns([2, 3])
        left.dataframe(counts, width="stretch")
        right.plotly_chart(plots.fig_collection_counts(status.counts_long()), width="stretch")


def show_feature_sets(status: workspace.CollectionStatus) -> None:
    st.subheader("Feature sets")
    if status.feature_sets.empty:
        st.info("No feature set has been extracted for this collection yet.")
    else:
        sets = status.feature_sets.drop(columns=["collection"])
        sets = sets.assign(
            backbone=sets["backbone"].map(formats.backbone_name), path=sets["path"].map(lambda p: Path(p).name)
        )
        st.dataframe(sets.rename(columns=str.capitalize), width="stretch", hide_index=True)
    with st.expander("Backbones", expanded=status.feature_sets.empty):
        available = available_backbones()
        st.dataframe(
            [
                {
                    "backbone": name,
                    "dim": spec.dim,
                    "ImageNet weights offline": available[name],
                    "description": spec.description,
                }
                for name, spec in BACKBONES.items()
            ],
            width="stretch",
            hide_index=True,
        )


def show_left_out(root: Path, status: workspace.CollectionStatus) -> None:
    st.subheader("Images left out")
    if status.catalog is not None and len(status.catalog.report):
        st.caption(
            f"{len(status.catalog.report)} images are not indexed: files that cannot be decoded, blank images and "
            "copies of another image (exact or near duplicates: one of each group is kept). The reason is given "
            "for each; `python -m cbir extract --keep-all` indexes blanks and copies too."
        )
        report = status.catalog.report
        shown = report.assign(path=report["path"].map(lambda p: formats.from_root(p, str(root))))
        st.dataframe(
            shown.rename(columns={"path": "Image (file · folder)", "reason": "Why it is left out"}),
            width="stretch",
            hide_index=True,
        )
    elif status.feature_sets.empty:
        st.caption("Images are checked when features are extracted.")
    else:
        st.caption("Every image of the collection decoded fine.")


def show_indexes() -> None:
    st.subheader("Indexes")
    indexes = workspace.list_indexes()  # not cached: freshness follows every add and remove at once
    st.caption(
        "Saved indexes (`python -m cbir index build`, or the button below) are loaded by the Search page instead of "
        "being built, while their feature set is unchanged; other settings are built in memory on demand."
    )
    if indexes.empty:
        st.info("No index saved under artifacts/indexes (indexes are built on the fly).")
    else:
        st.dataframe(
            indexes.drop(columns=["fresh"]),
            width="stretch",
            hide_index=True,
            column_config={
                "size_mb": st.column_config.NumberColumn("size (MB)", format="%.1f"),
                "build_s": st.column_config.NumberColumn("build (s)", format="%.2f"),
            },
        )
        stale = indexes[~indexes["fresh"]]
        if len(stale):
            st.warning(
                f"{len(stale)} saved index(es) no longer match their feature set and are not used (the Search page "
                "builds those settings in memory instead): rebuild them below or with `python -m cbir index build`."
            )
    choices = feature_set_choices()
    if not choices:
        return
    label, path = workspace.pick_feature_set(choices, st.session_state.get(FEATURE_SET_KEY)) or next(
        iter(choices.items())
    )
    left, middle, right = st.columns([2, 1, 1], vertical_alignment="bottom")
    kind = left.selectbox(
        f"Build and save an index of {label}",
        INDEX_KINDS,
        format_func=lambda name: INDEX_LABELS[name],
        help="At the setting the Search page starts from (LSH: its data-driven bucket width)",
    )
    metric = middle.selectbox("Metric", METRICS, key="home-index-metric")
    if not right.button("Build and save", key="home-index-build"):
        return
    bar = st.progress(0.0, text="Building the index")
    run_then_rerun(
        lambda: build_saved(
            path,
            default_config(kind, path, metric),
            progress=lambda stage, done, total: bar.progress(done / max(total, 1), text=f"{stage}: {done:,}"),
        ),
        lambda info: f"Saved {info['label']}: {info['n_objects']:,} images, built in {info['build_seconds']:.2f} s.",
    )


def show_build(root: object, status: workspace.CollectionStatus) -> None:
    st.subheader("Get started")
    if status.catalog is None and not status.openclipart_installed:
        st.error(
            f"Open Clip Art is not installed ({config.openclipart_dir()} is missing), so the default collection cannot "
            "be built. Install it, then reload this page:"
        )
        st.code(INSTALL_HINT.split("   ")[0], language="bash")
        return
    todo = "build the Open Clip Art collection, then extract" if status.catalog is None else "extract"
    st.info(
        f"Nothing to search yet. The button below will {todo} EfficientNet-Lite0 features, and ResNet "
        "features too when their ImageNet weights are in CBIR_WEIGHTS_DIR (a few minutes per backbone for the "
        "full collection; progress is saved, so it can be resumed)."
    )
    if not st.button("Build collection and features", type="primary"):
        return
    labels = {
        "collection": "Converting Open Clip Art",
        "hygiene": "Checking for duplicates and blank images",
        "features": "Extracting features",
        "comparison": "Evaluating the indexes for the Model comparison page",
    }
    bars = {stage: st.progress(0.0, text=label) for stage, label in labels.items()}

    def progress(stage: str, done: int, total: int) -> None:
        label = labels[stage]
        bars[stage].progress(done / max(total, 1), text=f"{label}: {done:,} / {total:,}")

    def build() -> FeatureSet:
        result = workspace.build_default(root, progress=progress)  # type: ignore[arg-type]
        # as `python -m cbir extract` does: the comparison page's first view computed now, kept on disk (when it
        # cannot be, the comparison page says why)
        with contextlib.suppress(CbirError):
            keep_default_comparison(progress=lambda _, done, total: progress("comparison", done, total))
        return result

    run_then_rerun(build, lambda result: f"Done: {result.meta['n_images']:,} images × {result.meta['dim']} features.")


def run_then_rerun(work: Callable[[], T], success: Callable[[T], str]) -> None:
    """Run ``work`` (a build the page shows progress for); on a :class:`CbirError` its message stays on the page,
    else the caches are cleared, ``success(result)`` is said and the page reruns on the new artifacts."""
    try:
        result = work()
    except CbirError as exc:
        st.error(str(exc))
        return
    st.cache_data.clear()
    st.success(success(result))
    st.rerun()
