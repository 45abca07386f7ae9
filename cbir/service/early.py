"""An upload's query begun as its bytes arrive (issue 21).

The Search page answered an upload only once Streamlit had run its script: the bytes arrive (the browser's PUT), then
the browser asks for a rerun, the script starts and sends the page's widgets again, and only then did the page decode
the image and run the model (~50 ms of a first answer's ~250). Meanwhile a core was mostly idle. So the app hands
the bytes here as they arrive (:func:`cbir.app.uploads.begin_queries_on_upload`): :func:`begin` decodes them (a
small file at once, see :data:`INLINE_DECODE_BYTES`) and runs the model in one worker thread, and the page's run
takes the work with :func:`embedded`, waiting for its end if it is still under way, or does it then when none was
begun (a rerun of the same query, a page test). The result is the same either way: :meth:`SearchEngine.embed_query`
of the same bytes, its error included (a bad upload is refused by the page's run, with the same message).

Work is matched by the engine and a digest of the bytes; at most :data:`MAX_BEGUN` are kept (the oldest dropped
first), and each is taken once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from cbir.data.query import QueryImage, decode_query, header_pixels

if TYPE_CHECKING:
    from cbir.service.search import EmbeddedQuery, SearchEngine

MAX_BEGUN = 4  # queries begun and not yet taken that are kept: one per session uploading at the same moment
# a file up to this size and pixel count is decoded by the caller of begin(), the server's event loop, which is idle
# while the browser asks for the rerun (~10 ms for the sample photo); in the worker thread the decoding took 40 ms
# instead, its Python steps waiting for the interpreter lock held by the script run that starts meanwhile. A bigger
# image (longer to decode) is decoded in the worker, not to hold the event loop, and every session with it, that long.
INLINE_DECODE_BYTES = 2 * 2**20
INLINE_DECODE_PIXELS = 2**22  # ~4 megapixels (the sample photo: 0.14)

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbir-early-query")  # one model call at a time
_lock = threading.Lock()
_begun: OrderedDict[tuple[SearchEngine, str], Future[EmbeddedQuery]] = OrderedDict()


def _key(engine: SearchEngine, data: bytes) -> tuple[SearchEngine, str]:
    return engine, hashlib.blake2b(data, digest_size=16).hexdigest()


def begin(engine: SearchEngine, data: bytes) -> None:
    """Start decoding and embedding ``data`` (an uploaded file's bytes) with ``engine``: a small file (:func:`_small`)
    is decoded in the calling thread, the model runs in the worker thread."""
    key = _key(engine, data)
    with _lock:
        if key in _begun:
            return
        _begun[key] = begun = Future()
        while len(_begun) > MAX_BEGUN:
            _begun.popitem(last=False)
    begun.set_running_or_notify_cancel()
    try:
        source: bytes | QueryImage = decode_query(data) if _small(data) else data
    except Exception as exc:  # a bad upload (ImageDecodeError) or a bug: raised again by embedded()
        begun.set_exception(exc)
        return
    _executor.submit(_embed, begun, engine, source)


def _small(data: bytes) -> bool:
    """Whether ``data`` is decoded at once: at most :data:`INLINE_DECODE_BYTES`, and at most
    :data:`INLINE_DECODE_PIXELS` by its header (a flat PNG of a few kB can hold 40 megapixels); not an image: yes
    (decode_query refuses it at once)."""
    if len(data) > INLINE_DECODE_BYTES:
        return False
    pixels = header_pixels(data)
    return pixels is None or pixels <= INLINE_DECODE_PIXELS


def _embed(begun: Future[EmbeddedQuery], engine: SearchEngine, source: bytes | QueryImage) -> None:
    try:
        begun.set_result(engine.embed_query(source))
    except Exception as exc:
        begun.set_exception(exc)


def embedded(engine: SearchEngine, data: bytes) -> EmbeddedQuery:
    """``engine.embed_query(data)``: the work :func:`begin` started for these bytes (waited for), else done now.
    Raises :class:`cbir.data.images.ImageDecodeError` for bad input, either way."""
    with _lock:
        begun = _begun.pop(_key(engine, data), None)
    if begun is None:
        return engine.embed_query(data)
    return begun.result()


def pending() -> int:
    """Queries begun and not taken yet."""
    with _lock:
        return len(_begun)
