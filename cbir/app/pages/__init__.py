"""The dashboard's pages, one module each (home, search, tuning, comparison): ``render()`` draws the page from small
named functions, ``page()`` is its entry in app.py's ``st.navigation`` (title, icon, URL). Layout only: computations
live below, in ``cbir/``, caches in :mod:`cbir.app.ui`.

They live here rather than in a ``pages/`` folder beside app.py: Streamlit runs a ``pages/`` folder's scripts in its
older multipage mode, without app.py, until app.py's first run in the process has called ``st.navigation``, so a deep
link (``/Search``) as a fresh server's first request would open the page without app.py's sidebar and set-up.
"""
