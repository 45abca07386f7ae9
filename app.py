"""cbir dashboard: ``streamlit run app.py``.

The router: the page's settings, a progress bar while a fresh server loads the modules, the sidebar (the feature set
every page reads) and the navigation between the pages, each a module of :mod:`cbir.app.pages` whose ``render()``
draws it: Home, Search (``/Search``), Index tuning (``/Index_tuning``), Model comparison (``/Model_comparison``).
Every run starts here, a deep link's first on a fresh server too. Layout only: every computation is in ``cbir/``,
every cache in :mod:`cbir.app.ui`.
"""

from __future__ import annotations

import sys

from cbir.core import config
from cbir.core.foreground import page_run

config.quiet_native_libraries()  # before TensorFlow loads (it does lazily, with the first model)

import streamlit as st  # noqa: E402

st.set_page_config(page_title="cbir — image search", page_icon=":material/image_search:", layout="wide")

# A fresh server's first run loads the modules below (seconds on two busy cores): its visitor sees a bar saying what
# loads instead of a blank page. Later runs find them loaded (the pages last) and draw no bar.
starting = st.empty() if "cbir.app.pages.home" not in sys.modules else None


def loading(fraction: float, text: str) -> None:
    if starting is not None:
        starting.progress(fraction, text=text)


loading(0.0, "Loading pandas and plotly…")
from cbir.app import plots  # noqa: E402, F401  (first, for the bar: pandas, plotly and the numba kernels)

loading(0.5, "Loading the indexes and the search engine…")
from cbir.app.ui import FEATURE_SET_KEY, feature_set_choices, warm_start  # noqa: E402

loading(0.8, "Opening the page…")
from cbir.app.pages import comparison, home, search, tuning  # noqa: E402
from cbir.features import workspace  # noqa: E402


def sidebar() -> None:
    choices = feature_set_choices()
    if choices:
        current = workspace.pick_feature_set(choices, st.session_state.get(FEATURE_SET_KEY))
        assert current is not None
        st.session_state[FEATURE_SET_KEY] = current[0]
        st.sidebar.selectbox(
            "Feature set",
            list(choices),
            key=FEATURE_SET_KEY,
            help="Backbone and weights whose features the pages search and evaluate",
        )
    else:
        st.sidebar.caption("No feature set yet: build one on the Home page.")


# the page's run first: the server's background warm start (kernels, TensorFlow, the model, the engine) waits between
# its steps while a page's run is under way (cbir.core.foreground), so a page opened as the server starts is not
# drawn behind it on two cores
with page_run():
    warm_start()  # once per server: kernels, model, engine and saved indexes load in the background
    navigation = st.navigation([home.page(), search.page(), tuning.page(), comparison.page()])
    sidebar()
    if starting is not None:
        starting.empty()
    navigation.run()
