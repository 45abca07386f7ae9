"""cbir.app.ui's layout helpers that need a Streamlit script run, driven by ``streamlit.testing.v1.AppTest``."""

from __future__ import annotations

import json

import plotly.io
import pytest
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest


def _script() -> None:
    import time

    import streamlit as st

    from cbir.app import ui

    @st.cache_data(show_spinner=False)
    def slow(x: int) -> int:
        with ui.moving_bar("working…") as update:
            time.sleep(1.4)  # a step that reports nothing: the clock speaks for it
            update(0.5, "half way")
            time.sleep(0.3)  # an update right after a tick waits for the next one (at most 4 sends a second)
            return 2 * x

    st.write(f"answer {slow(21)}")


def test_moving_bar_ticks_through_a_silent_step_and_goes_away(monkeypatch: pytest.MonkeyPatch) -> None:
    texts: list[str | None] = []
    progress = DeltaGenerator.progress

    def recording(self: DeltaGenerator, value: float, text: str | None = None) -> DeltaGenerator:
        texts.append(text)
        return progress(self, value, text=text)

    monkeypatch.setattr(DeltaGenerator, "progress", recording)
    at = AppTest.from_function(_script, default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.markdown[0].value == "answer 42"
    # (st.progress itself, which drew "working…", is bound before the patch: the updates are recorded)
    assert texts[-1] == "half way"
    ticks = texts[:-1]
    assert ticks and all(str(text).startswith("working… · ") and str(text).endswith(" s") for text in ticks), texts
    assert not at.get("progress")  # removed when the block ends
    texts.clear()
    at.run()  # a cache hit: no clock, no bar left
    assert not at.exception and at.markdown[0].value == "answer 42" and not at.get("progress")


def _comparison_script() -> None:
    import os

    import streamlit as st

    from cbir.app import ui

    feature_sets = (("A", os.environ["CBIR_TEST_SET"], int(os.environ["CBIR_TEST_VERSION"])),)
    for part in ui.comparisons(feature_sets, "euclidean", False, True):
        st.write(", ".join(sorted(set(part.table["index"]))))


def test_the_comparison_comes_in_parts_until_it_is_kept(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from builders import save_feature_set, synthetic_feature_set

    from cbir.features import workspace

    path = save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")
    monkeypatch.setenv("CBIR_TEST_SET", str(path))
    monkeypatch.setenv("CBIR_TEST_VERSION", str(workspace.file_version(path)))
    at = AppTest.from_function(_comparison_script, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    # first the exact scan and LSH (seconds), then each reference index as it comes
    everything = "HNSW (faiss), HNSW (hnswlib), IVF-Flat (faiss), LSH, cross-polytope LSH, exact scan"
    assert [m.value for m in at.markdown] == [
        "LSH, exact scan",
        "HNSW (faiss), LSH, exact scan",
        "HNSW (faiss), IVF-Flat (faiss), LSH, exact scan",
        "HNSW (faiss), HNSW (hnswlib), IVF-Flat (faiss), LSH, exact scan",
        everything,
    ]
    again = AppTest.from_function(_comparison_script, default_timeout=120).run()  # kept on disk: the whole at once
    assert not again.exception and [m.value for m in again.markdown] == [everything]


def test_the_comparison_figures_are_built_once_per_table(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from builders import save_feature_set, synthetic_feature_set

    from cbir.app import plots, ui
    from cbir.evaluation import comparison
    from cbir.features import workspace

    monkeypatch.setenv("CBIR_ARTIFACTS", str(tmp_path))  # the figures kept on disk there
    path = save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")
    result = comparison.compare((("A", path, workspace.file_version(path)),), recommended=False, references=False)
    table = result.table
    figure = ui.comparison_figure(table, "map", "mAP@10")
    assert ui.comparison_figure(table.copy(), "map", "mAP@10") is figure  # the same table: built once, shared
    built = plotly.io.from_json(plots.fig_comparison(table, "map", "mAP@10").to_json())  # as kept on disk
    assert json.loads(figure.to_json()) == json.loads(built.to_json())
    other = ui.comparison_figure(table.assign(map=table["map"] / 2), "map", "mAP@10")  # another metric's table
    assert other is not figure and other.to_json() != figure.to_json()
    assert ui.comparison_tradeoff_figure(table) is ui.comparison_tradeoff_figure(table.copy())
    assert ui.comparison_per_class_figure(result.per_class, "without") is not ui.comparison_per_class_figure(
        result.per_class, "with"
    )


def _keras_session_script() -> None:
    import streamlit as st
    from keras.src.backend.common import global_state

    from cbir.app import ui

    if st.query_params.get("keep") == "yes":
        ui.keep_keras_session()
    # keras.backend.clear_session() replaces this object (and clears TensorFlow's kernel cache beside it)
    st.write(f"session {id(global_state.GLOBAL_STATE_TRACKER)}")


def _sessions(keep: bool) -> list[str]:
    at = AppTest.from_function(_keras_session_script, default_timeout=120)
    at.query_params["keep"] = "yes" if keep else "no"
    return [at.run().markdown[0].value for _ in range(3)]


def test_keras_session_survives_the_script_runs() -> None:
    """Streamlit clears Keras' session after every script run (its _clean_problem_modules), and with it TensorFlow's
    kernel cache: the next run's first model call paid 300-550 ms to instantiate its kernels again.
    ui.keep_keras_session stops that, and only that."""
    from streamlit.runtime.scriptrunner import script_runner

    original = script_runner._clean_problem_modules
    try:
        if not getattr(original, "keeps_keras_session", False):  # Streamlit's own: every run starts a new session
            cleared = _sessions(keep=False)  # (a new session's object is made while the old one lives: ids differ)
            assert cleared[0] != cleared[1] and cleared[1] != cleared[2]
        kept = _sessions(keep=True)  # the first run replaces it before it ends: the session lives on from then
        assert kept[1] == kept[2]
    finally:
        script_runner._clean_problem_modules = original


def _preload_script() -> None:
    import streamlit as st

    from cbir.app import ui

    ui.preload_browser_code()
    st.write("the page")


def test_the_browser_code_of_a_first_answer_is_drawn_hidden_with_the_page() -> None:
    """The Search page draws each kind of element of an answer out of sight as it opens (React then has their code
    when the first answer comes: no 500-ms reveal pause), and imports the upload's chunk by its real name."""
    from pathlib import Path

    import streamlit as st

    from benchmarks.browser import SHOWN_IMAGES
    from cbir.app import ui

    at = AppTest.from_function(_preload_script).run()
    assert not at.exception, [e.value for e in at.exception]
    hidden = next(block for block in at.main.children.values() if block.proto.id.endswith(f"-{ui.PRELOAD_KEY}"))
    kinds = [child.type for child in hidden.children.values()]
    # each kind of element a first answer draws (the results: an image list with captions; the metrics in columns)
    assert kinds == [
        "image", "divider", "subheader", "caption", "flex_container", "toggle", "checkbox", "button", "popover", "html"
    ]  # fmt: skip
    assert len(hidden.children[0].proto.imgs) == 2 and hidden.children[0].proto.imgs[0].caption
    assert [m.label for m in at.metric] == ["Preload", "Preload"] and at.metric[0].help
    assert at.checkbox[0].disabled and at.button[0].disabled and at.toggle[0].disabled  # widgets no one can use
    script = hidden.children[9].proto.body
    chunks = ui.browser_chunks(ui.UPLOAD_CHUNKS)
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    assert len(chunks) == 1 and chunks[0].startswith("axios.") and (folder / chunks[0]).is_file()
    assert chunks[0] in script and hidden.children[9].proto.unsafe_allow_javascript
    assert ui.browser_chunks(("no-such-chunk",)) == ()
    assert f".st-key-{ui.PRELOAD_KEY} {{display: none;}}" in ui.PRELOAD_STYLE
    assert f".st-key-{ui.PRELOAD_KEY} *" in SHOWN_IMAGES  # the browser tests do not count its pixel
    assert at.markdown[-1].value == "the page"


def test_release_upload_drops_the_file_from_the_sessions_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Search page takes an uploaded file and draws an empty uploader under a new key; the file it took must
    leave Streamlit's store of the session's uploads (else every file given stays until the session ends)."""
    from types import SimpleNamespace

    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from cbir.app import uploads

    store = MemoryUploadedFileManager("/upload")
    for file_id in ("taken", "other"):
        store.add_file("session", UploadedFileRec(file_id, f"{file_id}.png", "image/png", b"\x89PNG..."))
    ctx = SimpleNamespace(uploaded_file_mgr=store, session_id="session")
    monkeypatch.setattr(uploads, "get_script_run_ctx", lambda: ctx)
    uploads.release_upload(SimpleNamespace(file_id="taken"))
    assert [f.file_id for f in store.get_files("session", ["taken", "other"])] == ["other"]
    monkeypatch.setattr(uploads, "get_script_run_ctx", lambda: None)  # outside a script run: nothing to do
    uploads.release_upload(SimpleNamespace(file_id="other"))
    assert len(store.get_files("session", ["other"])) == 1
