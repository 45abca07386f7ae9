"""Streamlit's store of uploads, as the Search page uses it: the file it takes is dropped from the store
(:func:`release_upload`), and an upload's query begins as its bytes arrive (:func:`begin_queries_on_upload`,
:mod:`cbir.service.early`).

Both reach into Streamlit's runtime (its ``UploadedFileManager``: ``add_file`` and the in-memory one's
``remove_file``), as Streamlit's own chat input does; another manager makes them do nothing, without error.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from typing import Any

from streamlit.runtime.scriptrunner import get_script_run_ctx

from cbir.service import early, search

_log = logging.getLogger(__name__)


def release_upload(upload: Any) -> None:
    """Drop an uploaded file (a ``st.file_uploader`` value the page has read) from Streamlit's store of the session's
    uploads: a page that takes the file and draws an empty uploader in place of the one that held it would otherwise
    keep every file it was given until the session ends (the browser deletes a file only from the uploader that
    shows it). As Streamlit's own chat input does with its files."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    ctx = get_script_run_ctx()
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=upload.file_id)


def begin_queries_on_upload(engine: search.SearchEngine) -> None:
    """Have this session's uploads (the Search page's uploader and camera) begin their query with ``engine`` as
    their bytes arrive, before the page's run asks for it (:mod:`cbir.service.early`: the run then waits less).
    Wraps the runtime's store of uploads once: each file it receives for a session registered here is handed to
    :func:`cbir.service.early.begin`, after Streamlit has stored it (an error there is logged, the upload goes on; a
    bad file is refused by the page's run, with the same message as before)."""
    ctx = get_script_run_ctx()
    if ctx is None or ctx.uploaded_file_mgr is None:
        return
    with _upload_lock:
        _announce_uploads(ctx.uploaded_file_mgr)
        _upload_engines[ctx.session_id] = weakref.ref(engine)  # not kept alive here: the app may drop it
        _upload_engines.move_to_end(ctx.session_id)
        while len(_upload_engines) > MAX_UPLOAD_SESSIONS:
            _upload_engines.popitem(last=False)


_upload_lock = threading.Lock()
_upload_engines: OrderedDict[str, weakref.ref[search.SearchEngine]] = OrderedDict()  # session id → its engine
MAX_UPLOAD_SESSIONS = 512  # sessions whose Search page was drawn that are remembered (the oldest forgotten)


def _announce_uploads(manager: Any) -> None:
    """Wrap ``manager.add_file`` (Streamlit's ``UploadedFileManager``, called by its upload handler) once."""
    if getattr(manager, "_cbir_begins_queries", False):
        return
    add_file = manager.add_file

    def add_file_and_begin(session_id: str, file: Any) -> None:
        add_file(session_id=session_id, file=file)
        with _upload_lock:
            ref = _upload_engines.get(session_id)
        engine = ref() if ref is not None else None
        if engine is not None:
            try:
                early.begin(engine, file.data)
            except Exception:  # never the upload's failure: the page's run does the work itself
                _log.exception("could not begin the query of an upload")

    manager.add_file = add_file_and_begin
    manager._cbir_begins_queries = True
