"""Streamlit layout pieces shared by ``app.py`` and the pages under ``pages/`` (layout only: every computation is in
:mod:`cbir.engine`)."""

from __future__ import annotations

import streamlit as st

from cbir import config, engine

FEATURE_SET_KEY = "feature_set"  # session-state key of the feature set chosen in the sidebar, read by every page
NAV_KEY, GOTO_KEY = "cbir-nav", "cbir-goto"  # "app.py routed this session" / "page to open after routing"
NO_FEATURE_SET = "No feature set yet: open the Home page and build the collection and its features first."

feature_sets = st.cache_data(ttl=60, show_spinner=False)(engine.complete_feature_sets)


def page_header(page: str, title: str, caption: str) -> None:
    """The head of the page file ``page`` (``"pages/….py"``): its title and caption.

    Streamlit runs a file of pages/ directly (its older pages-folder mode) when it is opened by URL on a server where
    app.py has not run yet; this hands over to app.py first, whose st.navigation then opens the page with the sidebar
    and layout.
    """
    if not st.session_state.get(NAV_KEY):
        st.session_state[GOTO_KEY] = page
        st.switch_page("app.py")
    st.title(title)
    st.caption(caption)


def feature_set_choices() -> dict[str, str]:
    """``{label: artifact path}`` of the complete feature sets of the default collection, newest first."""
    return feature_sets(str(config.default_collection()), engine.workspace_version())


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
    picked = engine.pick_feature_set(require_feature_set_choices(), st.session_state.get(FEATURE_SET_KEY))
    assert picked is not None  # there are choices
    label, path = picked
    return label, path, engine.file_version(path)
