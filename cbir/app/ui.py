"""Streamlit pieces shared by ``app.py`` and the pages (:mod:`cbir.app.pages`): every cache wrapper of the app, and
the layout helpers every page uses. With the pages, the only modules of ``cbir`` that import Streamlit.

The cached functions take plain, hashable arguments (paths, file versions, frozen configs); Streamlit keys a cache
by the wrapped function, so a sweep or an evaluation computed on one page is reused on every other one. A leading
underscore marks an argument Streamlit must not hash.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from cbir.app import formats, kept_figures, plots
from cbir.core import config, foreground, names
from cbir.core.errors import CbirError
from cbir.data import query
from cbir.evaluation import comparison, tuning
from cbir.evaluation import evaluate as evaluation
from cbir.features import query_model, workspace
from cbir.indexes import registry
from cbir.service import background, growth, search

if TYPE_CHECKING:
    from cbir.features.extractor import FeatureExtractor
    from cbir.features.query_model import ExtractorSpec

FEATURE_SET_KEY = "feature_set"  # session-state key of the feature set chosen in the sidebar, read by every page
NO_FEATURE_SET = "No feature set yet: open the Home page and build the collection and its features first."

# ----------------------------------------------------------------------------------------------------------
# Caches
# ----------------------------------------------------------------------------------------------------------

feature_sets = st.cache_data(ttl=60, show_spinner=False)(workspace.complete_feature_sets)
collection_status = st.cache_data(ttl=60, show_spinner="Reading the collection…")(workspace.collection_status)
lsh_defaults = st.cache_data(show_spinner=False)(tuning.lsh_defaults_for)
distance_analysis = st.cache_data(show_spinner=False)(comparison.distance_analysis_for)  # called with keep=True
kept_hubness = st.cache_data(show_spinner=False, max_entries=64)(comparison.kept_hubness)  # None: computed below
make_extractor = st.cache_resource(show_spinner="Loading the model…", max_entries=3)(search.shared_extractor)
tile = st.cache_data(show_spinner=False, max_entries=2000)(query.tile)
# the comparison page's figures, built once per table and shared by every session (st.plotly_chart only reads a
# figure, so it is not copied): plotly express takes most of a metric switch after the first computation (1-2 s for
# the five on two busy cores, against 0.1 s to send them); kept on disk too (kept_figures.kept): a restarted server
# reads their JSON back (~0.1 s for the page's six against ~1 s to build them)
comparison_figure = st.cache_resource(show_spinner=False, max_entries=64)(kept_figures.kept(plots.fig_comparison))
comparison_tradeoff_figure = st.cache_resource(show_spinner=False, max_entries=16)(
    kept_figures.kept(plots.fig_comparison_tradeoff)
)
comparison_per_class_figure = st.cache_resource(show_spinner=False, max_entries=32)(
    kept_figures.kept(plots.fig_comparison_per_class)
)
distance_histograms_figure = st.cache_resource(show_spinner=False, max_entries=16)(
    kept_figures.kept(plots.fig_distance_histograms)
)
# the tuning page's likewise: a metric switch back to a computed setting draws figures already built
per_class_figure = st.cache_resource(show_spinner=False, max_entries=64)(plots.fig_per_class)
sweep_figure = st.cache_resource(show_spinner=False, max_entries=64)(plots.fig_map_vs_visited)


@st.cache_resource(show_spinner="Preparing the search engine…", max_entries=3)
def search_engine(path: str, version: int, spec: ExtractorSpec | None = None) -> search.SearchEngine:
    """:func:`cbir.service.search.shared_engine`: one per feature set and model in the process, shared by every
    session (it is thread-safe) and by the warm start (:func:`warm_start`)."""
    return search.shared_engine(path, version, spec)


def search_engine_with_model(path: str) -> search.SearchEngine:
    """The shared :func:`search_engine` of the feature set at ``path``, with the model that computed it.
    Keyed by :func:`cbir.features.workspace.base_version`: images added or removed in place do not rebuild it (the
    engine applies them itself on its next query), a new extraction does. Raises
    :class:`~cbir.core.errors.CbirError` (or ``FileNotFoundError``) when that model cannot be loaded."""
    spec = search.extractor_spec(workspace.load_feature_set(path).meta)
    return search_engine(path, workspace.base_version(path), spec)


def search_engine_without_model(path: str) -> search.SearchEngine:
    """The shared :func:`search_engine` of the feature set at ``path`` without a model: it searches by stored
    features only (a synthetic set, or a model that cannot be loaded)."""
    return search_engine(path, workspace.base_version(path))


@st.cache_resource(show_spinner=False)
def warm_start() -> search.WarmStart:
    """Once per server process: :func:`cbir.service.search.warm_start` in a background thread (kernels, the newest
    feature set, its model and engine, its fresh saved indexes), so the first query does not pay for them; the one
    ``python -m cbir app`` started as the server started, if it did (:func:`cbir.service.search.server_warm_start`).
    Also :func:`keep_keras_session`, without which every page run would undo part of the warm-up."""
    keep_keras_session()
    return search.server_warm_start()


def keep_keras_session() -> None:
    """Stop Streamlit from clearing Keras' session after every script run (idempotent).

    Streamlit's script runner ends each run with ``_clean_problem_modules()``, which calls
    ``keras.backend.clear_session()`` (for apps that build a model per run and would pile them up). cbir builds its
    models once per process (the shared engine, ``st.cache_resource``); clearing the session under them made the next
    run's first model call instantiate its traced graph again: 300-550 ms of CPU on every Search-page query, which
    kept the first query of a fresh app over a second (issue 21). Matplotlib's clean-up, the other half, is kept.
    """
    from streamlit.runtime.scriptrunner import script_runner

    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None or getattr(current, "keeps_keras_session", False):
        return  # another Streamlit (nothing to replace), or already replaced

    def clean_problem_modules_but_keras() -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            with contextlib.suppress(Exception):
                plt.close("all")

    clean_problem_modules_but_keras.keeps_keras_session = True  # type: ignore[attr-defined]
    script_runner._clean_problem_modules = clean_problem_modules_but_keras


def add_to_collection(
    engine: search.SearchEngine, name: str, data: bytes, label: str | None, allow_duplicates: bool = False
) -> growth.GrowthReport:
    """Add an uploaded image to the collection of the engine's feature set (:func:`cbir.service.growth.add_images`) with
    the engine's model; the feature-set list and collection caches are cleared so every page sees it."""
    assert engine.path is not None
    report = growth.add_images(
        engine.path, [(name, data)], label, extractor=engine.extractor, allow_duplicates=allow_duplicates
    )
    _changed(engine)
    return report


def _changed(engine: search.SearchEngine) -> None:
    engine.refresh()
    feature_sets.clear()
    collection_status.clear()
    background.refresh_default_comparison()  # the comparison page's first view of the changed collection, kept ahead


def restore_to_collection(engine: search.SearchEngine, relpath: str) -> growth.GrowthReport:
    """Undo the removal of ``relpath`` (:func:`cbir.service.growth.restore_images`), as :func:`add_to_collection`."""
    assert engine.path is not None
    report = growth.restore_images(engine.path, [relpath])
    _changed(engine)
    return report


STATUS_KEY = "cbir-status"  # session-state key of the page's status line: (kind, markdown, relpath to undo or None)


def set_status(kind: str, text: str, undo: str | None = None) -> None:
    """Say what an action did (``kind``: "success" or "error") in the status line and a toast on the next run (the
    action's own controls may be out of sight by then); ``undo``: a removed image's relpath, offered back."""
    st.session_state[STATUS_KEY] = (kind, formats.sentence(text), undo, True)


def status_line(engine: search.SearchEngine) -> None:
    """The status line :func:`set_status` filled (it stays until the next action), with an Undo button after a
    removal; a toast too on the run right after the action."""
    status = st.session_state.get(STATUS_KEY)
    if status is None:
        return
    kind, text, undo, fresh = status
    if fresh:
        st.toast(text, icon=":material/error:" if kind == "error" else ":material/check_circle:")
        st.session_state[STATUS_KEY] = (kind, text, undo, False)
    box, button = st.columns([6, 1], vertical_alignment="center")
    (box.error if kind == "error" else box.success)(text)
    if undo is not None and button.button("Undo", key="cbir-undo", help=f"Put {undo} back in the collection"):
        try:
            report = restore_to_collection(engine, undo)
        except CbirError as exc:
            set_status("error", str(exc))
        else:
            set_status(
                "success",
                f"Restored **{formats.file_first(undo)}** in {report.seconds:.2f} s ({report.n_images:,} images).",
            )
        st.rerun()


def without_query(answer: search.QueryAnswer, row: int, k: int) -> search.QueryAnswer:
    """``answer`` (of ``k + 1`` results) without the engine row ``row`` (a collection image searched for itself
    would fill a slot with itself as #1), cut to ``k`` results and ranked again."""
    results = answer.results[answer.results["id"] != row].head(k).reset_index(drop=True)
    answer.results = results.assign(rank=range(1, len(results) + 1))
    return answer


def remove_from_collection(engine: search.SearchEngine, relpath: str) -> growth.GrowthReport:
    """Remove an image of the engine's collection (:func:`cbir.service.growth.remove_images`), as
    :func:`add_to_collection`."""
    assert engine.path is not None
    report = growth.remove_images(engine.path, [relpath])
    _changed(engine)
    return report


def _stage_text(stage: str, done: int, total: int) -> str:
    return f"{stage} {done:,} / {total:,}"


TICK_SECONDS = 0.25  # how often a moving_bar's clock looks whether the bar stood still
STILL_SECONDS = 0.75  # a bar still this long gets the seconds appended: the browser sees a change within ~1 s
SEND_SECONDS = 0.25  # a moving_bar sends the browser at most one update this often (it is drawing the page too)


@contextlib.contextmanager
def moving_bar(text: str) -> Iterator[Callable[[float, str], None]]:
    """An ``st.progress`` bar for the block, removed after it; yields ``update(fraction, text)``, sent to the browser
    at most every :data:`SEND_SECONDS` (the latest one is sent by the clock when updates stop). While the block runs,
    a clock thread appends the seconds since the last update to the text once the bar has stood still for
    :data:`STILL_SECONDS`, so the page never stands still for a second even in a step that reports nothing for seconds
    (numba's first kernel, a catalog read on a busy machine; the kernels release the GIL, so the clock runs beside
    them). Its ticks are not part of a cached run's replay (a cache hit is instant)."""
    bar = st.progress(0.0, text=text)
    lock = threading.Lock()
    now = time.monotonic()
    # the latest fraction and text, when they were set, when the bar was last sent and whether it shows the latest
    state: dict[str, Any] = {"fraction": 0.0, "text": text, "set": now, "sent": now, "shown": True}
    stop = threading.Event()

    def send(text: str) -> None:
        bar.progress(state["fraction"], text=text)
        state["sent"], state["shown"] = time.monotonic(), True

    def update(fraction: float, text: str) -> None:
        with lock:
            now = time.monotonic()
            state.update(fraction=min(max(fraction, 0.0), 1.0), text=text, set=now, shown=False)
            if now - state["sent"] >= SEND_SECONDS:
                send(text)

    def clock() -> None:
        while not stop.wait(TICK_SECONDS):
            with lock:
                still = time.monotonic() - state["set"]
                if stop.is_set():
                    return
                if still >= STILL_SECONDS:
                    send(f"{state['text']} · {still:.1f} s")
                elif not state["shown"]:
                    send(state["text"])

    thread = threading.Thread(target=clock, name="cbir-moving-bar", daemon=True)
    add_script_run_ctx(thread, get_script_run_ctx())
    thread.start()
    try:
        yield update
    finally:
        stop.set()
        thread.join()  # a tick under way ends before the bar goes
        bar.empty()


# every setting evaluated once stays cached, so moving a slider back to it is instant
@st.cache_data(show_spinner=False, max_entries=1024)
def evaluate(
    path: str, version: int, config: registry.IndexConfig, with_distractors: bool = True
) -> evaluation.EvaluationResult:
    """:func:`cbir.evaluation.tuning.evaluate_for` behind a :func:`moving_bar` that moves at least every second or so
    while
    the index is built, the queries answered and (once per feature set) the exact scan run (the bar is part of the
    cached run: Streamlit replays it, already finished, on a cache hit)."""
    with moving_bar(f"{config.label}…") as update:
        return tuning.evaluate_for(path, version, config, with_distractors, progress=_config_progress(update, config))


@st.cache_data(show_spinner=False, max_entries=256)
def evaluate_pair(
    path: str, version: int, config: registry.IndexConfig
) -> tuple[evaluation.EvaluationResult, evaluation.EvaluationResult]:
    """:func:`cbir.evaluation.tuning.evaluate_pair_for` (with and without the distractors, one index built) behind
    a :func:`moving_bar`, as :func:`evaluate`."""
    with moving_bar(f"{config.label}…") as update:
        return tuning.evaluate_pair_for(path, version, config, progress=_config_progress(update, config))


def _config_progress(update: Callable[[float, str], None], config: registry.IndexConfig) -> evaluation.StageProgress:
    """A :func:`moving_bar`'s ``update`` as an evaluation's ``progress(stage, done, total)`` naming ``config``."""

    def progress(stage: str, done: int, total: int) -> None:
        update(done / max(total, 1), f"{config.label}: {_stage_text(stage, done, total)}")

    return progress


@st.cache_data(show_spinner=False, max_entries=64)
def sweep(path: str, version: int, metric: str, with_distractors: bool = True) -> pd.DataFrame:
    """:func:`cbir.evaluation.tuning.sweep_for` behind a :func:`moving_bar` that moves within each setting too (see
    :func:`evaluate`), kept on disk until the feature set is extracted again (images added or removed in place
    reuse it)."""
    rows = [0, 1]  # settings done, settings in all
    with moving_bar("Background sweep…") as update:

        def progress(done: int, total: int) -> None:
            rows[:] = [done, total]
            update(done / total, f"Background sweep: {done} / {total} settings")

        def detail(stage: str, done: int, total: int) -> None:
            share = (rows[0] + done / max(total, 1)) / rows[1]
            update(share, f"Background sweep: setting {rows[0] + 1} of {rows[1]}, {_stage_text(stage, done, total)}")

        return tuning.sweep_for(
            path, version, metric, with_distractors, progress=progress, detail=detail,
            kept_as=workspace.base_version(path),
        )  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=64)
def compare(
    feature_sets: tuple[tuple[str, str, int], ...],
    metric: str,
    recommended: bool,
    references: bool | None = None,
    kinds: tuple[str, ...] | None = None,
) -> comparison.Comparison:
    """:func:`cbir.evaluation.comparison.compare` of ``(label, path, version)`` feature sets behind a progress bar,
    through the cached :func:`evaluate` that the tuning page shares; the recommended LSH setting is the background
    sweep's (:func:`cbir.evaluation.tuning.recommended_for`: read from the sweep when the tuning page has kept it on
    disk, else found without computing the whole sweep); a reference index is built once for both distractor
    settings (:func:`evaluate_pair`). ``kinds``: only these reference indexes (a part, not kept on disk)."""
    with moving_bar("Evaluating…") as update:
        return comparison.compare(
            feature_sets,
            metric,
            recommended,
            progress=lambda what, done, total: update(done / total, f"{what}: {done} / {total}"),
            evaluate=evaluate,
            references=references,
            keep=kinds is None,
            kinds=kinds,
            evaluate_pair=evaluate_pair,
        )


def comparisons(
    feature_sets: tuple[tuple[str, str, int], ...], metric: str, recommended: bool, references: bool | None = None
) -> Iterator[comparison.Comparison]:
    """The comparison of :func:`compare` in parts, for a page that draws its results table as it grows: the exact
    scan and LSH at its default setting (seconds), then with the recommended setting once found (``recommended``),
    then each reference index as it comes, the last part whole (each part evaluates only what the one before lacked:
    the evaluations are :func:`evaluate`'s and :func:`evaluate_pair`'s, cached). Only the whole one when it is kept
    on disk already."""
    kept = comparison.kept_comparison(feature_sets, metric, recommended, references=references)
    if kept is None and background.computing() and is_default_comparison(feature_sets, metric, recommended, references):
        # the collection changed and the background computes this very view again: wait for it and read it, rather
        # than compute it a second time beside it on the same cores
        with foreground.waiting_for_background(), st.spinner(BACKGROUND_COMPARISON):
            background.wait(BACKGROUND_WAIT_S)
        kept = comparison.kept_comparison(feature_sets, metric, recommended, references=references)
    if kept is not None:
        yield kept
        return
    if recommended:
        yield compare(feature_sets, metric, False, False)
    if references is False:
        yield compare(feature_sets, metric, recommended, False)
        return
    kinds = names.REFERENCE_KINDS
    for count in range(len(kinds)):
        yield compare(feature_sets, metric, recommended, references, tuple(kinds[:count]))
    yield compare(feature_sets, metric, recommended, references)


BACKGROUND_COMPARISON = "The collection changed: this comparison is being computed again in the background…"
BACKGROUND_WAIT_S = 120.0  # then the page computes it itself (the background is stuck or far slower than expected)


def is_default_comparison(
    feature_sets: tuple[tuple[str, str, int], ...], metric: str, recommended: bool, references: bool | None
) -> bool:
    """Whether these are the comparison page's first view's settings, the view the setup and the background keep
    (:func:`cbir.evaluation.comparison.keep_default_comparison`)."""
    first_view = metric == names.METRICS[0] and recommended and references is True
    return first_view and feature_sets == comparison.default_feature_sets()


def sample_note(n_queries: int, n_all_queries: int) -> str:
    """What the pages say when the queries were sampled (:data:`cbir.evaluation.evaluate.MAX_EVAL_QUERIES`)."""
    return (
        f"Evaluated on a random sample of {n_queries:,} of the {n_all_queries:,} validation queries (the same fixed "
        "sample for every setting and page; the exact scan's answers to it are computed once and kept)."
    )


def distance_analyses(feature_sets: Sequence[tuple[str, str, int]]) -> dict[str, comparison.DistanceAnalysis]:
    """``{label: cached distance analysis}`` of ``(label, path, version)`` feature sets, behind a moving bar (a few
    seconds a set at a million objects)."""
    analyses = {}
    with moving_bar("Sampling pairwise distances…") as update:
        for done, (label, path, version) in enumerate(feature_sets):
            update(done / len(feature_sets), f"Sampling pairwise distances: {label}")
            analyses[label] = distance_analysis(path, version, keep=True)
    return analyses


def hubness_analyses(
    feature_sets: Sequence[tuple[str, str, int]], metric: str, photos: bool = False
) -> dict[str, comparison.HubnessAnalysis]:
    """``{label: cached hubness analysis}``: with the out-of-domain photos when they are kept on disk (read back
    without the model: a restarted server's page), else over the validation queries only unless ``photos``, then the
    photos embedded by each feature set's cached model (TensorFlow and the model: seconds on a fresh server, so the
    comparison page asks for them on request; without them when the model cannot be loaded)."""
    analyses = {}
    with moving_bar("Measuring hubness…") as update:
        for done, (label, path, version) in enumerate(feature_sets):
            update(done / len(feature_sets), f"Measuring hubness: {label}")
            kept = kept_hubness(path, version, metric)
            if kept is not None:
                analyses[label] = kept
                continue
            extractor = None
            if photos:
                update(done / len(feature_sets), f"Measuring hubness: {label}, loading the model…")
                with contextlib.suppress(CbirError, FileNotFoundError):
                    spec = query_model.extractor_spec(workspace.load_feature_set(path, version).meta)
                    extractor = make_extractor(spec)
            analyses[label] = hubness_analysis(path, version, metric, extractor is not None, extractor)
            if extractor is not None:
                kept_hubness.clear()  # it kept None for this set: the next run reads the photos' analysis back
    return analyses


@st.cache_data(show_spinner=False)
def hubness_analysis(
    path: str, version: int, metric: str, photos: bool, _extractor: FeatureExtractor | None
) -> comparison.HubnessAnalysis:
    """:func:`cbir.evaluation.comparison.hubness_analysis_for` kept on disk; ``photos``: ``_extractor`` (not hashed)
    is given, a part of the cache key."""
    return comparison.hubness_analysis_for(path, version, metric, _extractor, keep=True)


def photos_measured(analyses: dict[str, comparison.HubnessAnalysis]) -> bool:
    """Whether every analysis of :func:`hubness_analyses` has the out-of-domain photos' figures."""
    return all("ood_hub_share" in analysis.summary for analysis in analyses.values())


# ----------------------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------------------


def page_header(title: str, caption: str) -> None:
    """The head of a page: its title and caption."""
    st.title(title)
    st.caption(caption)


# Streamlit's browser code comes in chunks, each loaded the first time an element needs it, and React draws a new
# kind of element only after a pause: the first element of a kind (an image, a metric, a checkbox, a button) suspends
# its part of the page until its chunk is loaded, and React 18 reveals suspended content at most every 500 ms after a
# fallback. On the Search page the first answer was the first to draw an image, metrics and buttons, so it was held
# back 300-500 ms in the browser (issue 21). So the page draws one element of each of those kinds, hidden, as it
# opens (:func:`preload_browser_code`), and imports the upload client (``axios``, no element: loaded by the first
# upload) once the page is idle.
PRELOAD_KEY = "cbir-preload"  # the hidden container's key: its elements are not the page's (browser tests skip them)
PRELOAD_STYLE = f"<style>.st-key-{PRELOAD_KEY} {{display: none;}}</style>"
PIXEL = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="  # 1×1, no media file
PRELOAD_JS = """<script>
(() => {
  const entry = [...document.scripts].find((s) => s.type === "module" && s.src.includes("/static/js/index."));
  if (!entry) return;
  const load = () => %s.forEach((file) => import(new URL(file, entry.src).href).catch(() => {}));
  if (window.requestIdleCallback) window.requestIdleCallback(load, {timeout: 1000}); else setTimeout(load, 200);
})();
</script>"""
UPLOAD_CHUNKS = ("axios",)  # Streamlit's chunks an upload imports (not an element: drawing one does not load them)


@functools.cache
def browser_chunks(names: tuple[str, ...]) -> tuple[str, ...]:
    """The file names of Streamlit's browser chunks called ``names`` (``axios`` → ``axios.b99skj9n.js``) in the
    installed Streamlit; those it does not have are left out (another version may split its code otherwise)."""
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    return tuple(sorted(path.name for name in names for path in folder.glob(f"{name}.*.js")))


def preload_browser_code() -> None:
    """Have the browser ready to draw a first answer without pauses: each kind of element an answer draws (an image
    list with captions, a divider, a heading, a caption, columns, metrics with help, a toggle, a checkbox, a button and
    a popover: drawn once, their code is loaded and has run; with all of them rather than an image, a metric, a
    checkbox and a button, a page's second answer came at a median 192 against 234 ms, its first did not move) in a
    hidden container (keyed :data:`PRELOAD_KEY`: ``display: none``, out of the layout, the widgets disabled), and an
    invisible ``st.html`` whose script imports the upload's chunks (:data:`UPLOAD_CHUNKS`, by
    :func:`browser_chunks`: the same URLs as Streamlit's own imports, so each is fetched and compiled once) when the
    page is idle. The script is ours and fixed (file names of the installed Streamlit), nothing a user sent."""
    st.html(PRELOAD_STYLE)  # style only: Streamlit puts it out of the layout
    with st.container(key=PRELOAD_KEY):
        st.image([PIXEL, PIXEL], width=1, caption=["Preload · a", "Preload · b"])
        st.divider()
        st.subheader("Preload")
        st.caption("Preload")
        left, right = st.columns([1, 4])
        left.metric("Preload", "0", help="Preload")
        right.metric("Preload", "0")
        st.toggle("Preload", key=f"{PRELOAD_KEY}-toggle", disabled=True, help="Preload")
        st.checkbox("Preload", key=f"{PRELOAD_KEY}-checkbox", disabled=True)
        st.button("Preload", key=f"{PRELOAD_KEY}-button", disabled=True)
        with st.popover("Preload"):
            st.caption("Preload")
        files = browser_chunks(UPLOAD_CHUNKS)
        if files:
            st.html(PRELOAD_JS % json.dumps(list(files)), unsafe_allow_javascript=True)


def feature_set_choices() -> dict[str, str]:
    """``{label: artifact path}`` of the complete feature sets of the default collection, newest first."""
    return feature_sets(str(config.default_collection()), workspace.workspace_version())


def require_feature_set_choices() -> dict[str, str]:
    """:func:`feature_set_choices`; when there is none, a warning and the page stops."""
    choices = feature_set_choices()
    if not choices:
        st.warning(NO_FEATURE_SET)
        st.stop()
    return choices


def chosen_feature_set() -> tuple[str, str, int]:
    """``(label, path, version)`` of the feature set chosen in the sidebar (else the newest); when there is none, a
    warning and the page stops."""
    picked = workspace.pick_feature_set(require_feature_set_choices(), st.session_state.get(FEATURE_SET_KEY))
    assert picked is not None  # there are choices
    label, path = picked
    return label, path, workspace.file_version(path)


def table(
    frame: pd.DataFrame,
    names: dict[str, str] | None = None,
    percent: tuple[str, ...] = formats.PERCENT_COLUMNS,
    **kwargs: Any,
) -> None:
    """``st.dataframe`` of ``frame`` as a person reads it: human column names and blanks
    (:func:`cbir.app.formats.human_columns`; ``percent``: fractions shown as percentages), the same decimals for the
    same kind of figure (:data:`cbir.app.formats.COLUMN_FORMATS`), no index column; ``kwargs`` go to
    ``st.dataframe``."""
    shown = formats.human_columns(frame, names, percent)
    percentages = {names[c] for c in percent if names and c in names}
    column_config = {name: st.column_config.NumberColumn(name, format="%.1f") for name in percentages}
    column_config |= {
        name: st.column_config.NumberColumn(name, format=fmt)
        for name, fmt in formats.COLUMN_FORMATS.items()
        if name in shown.columns and pd.api.types.is_numeric_dtype(shown[name])
    }
    st.dataframe(
        shown, width="stretch", hide_index=True, column_config={**column_config, **kwargs.pop("column_config", {})},
        **kwargs,
    )  # fmt: skip
