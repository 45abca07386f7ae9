"""Where the Search page's first answer goes: the server's and the browser's steps on one clock (issue 21).

    .venv/bin/python benchmarks/answer_timeline.py               # a fresh `python -m cbir app`, three uploads
    .venv/bin/python benchmarks/answer_timeline.py --uploads 1

Starts ``python -m cbir app`` fresh on a free loopback port with a tracer loaded into it (:func:`serve`):
it stamps, in epoch milliseconds, Streamlit's back messages (``file_urls_request``, ``rerun_script``), the upload's
arrival, each script run, each websocket message sent (its size), and the Search page's steps (decode, the model, the
search, the answer's elements). Once the warm start is done, headless Chromium opens the Search page, waits until its
run ended and 2 s more, and uploads the sample photo ``--uploads`` times (each in a freshly opened page, so each is a
page's first answer); the page records the websocket messages it receives, the Long Tasks API's tasks over 50 ms and
the answer's stages (:func:`benchmarks.browser.watch_answer`). Printed per upload: every event in time order, in ms
after the file was given to WebDriver, then a summary per upload, and the machine line (the load average).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

TRACE_ENV = "CBIR_ANSWER_TRACE"  # the file the server's tracer appends its events to
# the server: the native libraries' settings first, as `python -m cbir app` (this module imports numpy), then serve()
SERVE_CODE = (
    "import sys; from cbir.core import config; config.quiet_native_libraries(); sys.path.insert(0, {folder!r}); "
    "import answer_timeline; sys.exit(answer_timeline.serve(sys.argv[1:]))"
)
PAGE_STEPS = ("answer_body", "search_image", "show_answer", "show_results", "change_collection")
ENGINE_STEPS = ("embed_query", "embed", "query_vector")
EARLY_STEPS = ("begin", "embedded")  # cbir.service.early: the upload's query begun, then taken by the run
BROWSER_JS = """
window.__cbirWs = []; window.__cbirLong = [];
const Socket = window.WebSocket;
window.WebSocket = function (...args) {
  const socket = new Socket(...args);
  socket.addEventListener('message', (e) => window.__cbirWs.push([performance.now(), e.data.byteLength || 0]));
  return socket;
};
window.WebSocket.prototype = Socket.prototype;
Object.assign(window.WebSocket, Socket);
new PerformanceObserver((list) => list.getEntries().forEach((e) => window.__cbirLong.push([e.startTime, e.duration])))
  .observe({type: 'longtask', buffered: true});
"""


# --- In the server: the tracer --------------------------------------------------------------------------------------


class Tracer:
    """Appends ``epoch_ms thread event`` lines to a file (one lock: lines never interleave)."""

    def __init__(self, path: str) -> None:
        self._out = open(path, "a", buffering=1)  # open while the server runs
        self._lock = threading.Lock()

    def mark(self, event: str) -> None:
        with self._lock:
            self._out.write(f"{time.time() * 1e3:.2f}\t{threading.current_thread().name}\t{event}\n")

    def wrap(self, owner: Any, name: str, describe: Callable[..., str] | None = None) -> None:
        """Stamp each call of ``owner.name``: ``> name`` (with ``describe(*args)``) and ``< name``."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def traced(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"> {name} {describe(*args, **kwargs) if describe else ''}".rstrip())
            try:
                return original(*args, **kwargs)
            finally:
                self.mark(f"< {name}")

        setattr(owner, name, traced)


def trace_streamlit(tracer: Tracer) -> None:
    """Stamp Streamlit's back messages, uploads, script runs and websocket sends (its private API, as of 1.67)."""
    from starlette.websockets import WebSocket
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.runtime import Runtime
    from streamlit.runtime.scriptrunner.script_runner import ScriptRunner

    tracer.wrap(Runtime, "handle_backmsg", lambda _self, _session, msg, **_: str(msg.WhichOneof("type")))
    tracer.wrap(MemoryUploadedFileManager, "add_file")
    tracer.wrap(ScriptRunner, "_run_script")
    send = WebSocket.send_bytes

    async def send_bytes(self: WebSocket, data: bytes) -> None:
        await send(self, data)
        tracer.mark(f"sent {len(data)} B")

    WebSocket.send_bytes = send_bytes  # type: ignore[method-assign]


def trace_search_page(tracer: Tracer) -> None:
    """Stamp the Search page's steps once app.py's first run has imported the page."""
    while "cbir.app.pages.search" not in sys.modules or not hasattr(sys.modules["cbir.app.pages.search"], "search"):
        time.sleep(0.01)
    time.sleep(0.1)  # the module's body ran to its end
    from cbir.service import early
    from cbir.service.search import SearchEngine

    page = sys.modules["cbir.app.pages.search"]
    for name in PAGE_STEPS:
        tracer.wrap(page, name)
    for name in ENGINE_STEPS:
        tracer.wrap(SearchEngine, name)
    for name in EARLY_STEPS:
        tracer.wrap(early, name)


def serve(argv: list[str]) -> int:
    """``python -m cbir app`` with the tracer (the events go to the file named by :data:`TRACE_ENV`); ``argv``:
    Streamlit's options."""
    tracer = Tracer(os.environ[TRACE_ENV])
    trace_streamlit(tracer)
    threading.Thread(target=trace_search_page, args=(tracer,), daemon=True, name="cbir-trace").start()
    from cbir.cli.main import main

    return main(["app", *argv])


# --- The driver -------------------------------------------------------------------------------------------------------


def upload_once(driver: Any, url: str, photo: Path) -> dict:
    """Open the Search page, wait until it is idle and 2 s more, upload ``photo``; the page's times (epoch ms)."""
    from warm_start import answer_times

    from benchmarks.browser import PAGE_S, open_page, wait_until_idle

    open_page(driver, f"{url}/Search", "input[type=file]")
    wait_until_idle(driver, PAGE_S, "the Search page's first run")
    time.sleep(2.0)
    origin = float(driver.execute_script("return performance.timeOrigin"))
    times = answer_times(driver, photo)
    start = origin + float(driver.execute_script("return window.__cbirAnswer.start"))
    received = driver.execute_script("return window.__cbirWs")
    long_tasks = driver.execute_script("return window.__cbirLong")
    events = [(start + ms, "page", stage) for stage, ms in times.items()]
    events += [(origin + at, "page", f"message {size} B") for at, size in received]
    events += [(origin + at, "page", f"long task {ms:.0f} ms") for at, ms in long_tasks]
    return {"start": start, "times": times, "events": events}


def server_events(path: Path) -> list[tuple[float, str, str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    return [(float(at), f"server {thread[:12]}", event) for at, thread, event in lines]


def timeline(upload: dict, server: list[tuple[float, str, str]]) -> pd.DataFrame:
    """Every event of one upload in time order, in ms after the file was given to WebDriver."""
    start, end = upload["start"], upload["start"] + upload["times"]["done"] + 20
    rows = [(at - start, who, what) for at, who, what in server + upload["events"] if start - 5 <= at <= end]
    return pd.DataFrame(sorted(rows), columns=["ms", "where", "event"]).round(1)


def summary(upload: dict, events: pd.DataFrame) -> dict:
    """The upload's stages (ms after the file was given) and the server's steps' durations."""
    row = {stage: round(ms, 1) for stage, ms in upload["times"].items()}
    server = events[events["where"].str.startswith("server")]
    for step in ("_run_script", "embed_query", "embed", "embedded", "query_vector", "show_answer", "show_results"):
        begins = server[server["event"] == f"> {step}"]["ms"]
        ends = server[server["event"] == f"< {step}"]["ms"]
        if len(begins) and len(ends):
            row[f"{step.strip('_')}_ms"] = round(float(ends.iloc[-1] - begins.iloc[-1]), 1)
    if len(runs := server[server["event"] == "< _run_script"]):
        row["run_ended"] = round(float(runs["ms"].iloc[-1]), 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=3, help="fresh page loads, one upload each (default 3)")
    args = parser.parse_args(argv)
    from benchmarks.browser import LOOPBACK, chromium, free_port, running_server, wait_for
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png

    work = Path(tempfile.mkdtemp(prefix="cbir-timeline-"))
    trace, port = work / "server.trace", free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), TRACE_ENV: str(trace)}
    flags = ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    code = SERVE_CODE.format(folder=str(Path(__file__).resolve().parent))
    command = [sys.executable, "-c", code, "--", "--server.port", str(port), "--server.address", LOOPBACK]
    uploads = []
    with running_server([*command, *flags], port, "/_stcore/health", work / "app.log", env, 300, "app") as running:
        wait_for(lambda: "cbir: warm start done" in running.log(), 300, "the warm start", interval=0.1)
        driver = chromium(work / "profile")
        try:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": BROWSER_JS})
            for i in range(args.uploads):
                photo = work / f"upload{i}-{next(iter(SAMPLE_PHOTOS))}.png"
                photo.write_bytes(sample_photo_png(next(iter(SAMPLE_PHOTOS))))
                uploads.append(upload_once(driver, running.url, photo))
        finally:
            driver.quit()
    server = server_events(trace)
    rows = []
    for i, upload in enumerate(uploads):
        events = timeline(upload, server)
        print(f"--- upload {i + 1}: each event, ms after the file was given to WebDriver")
        print(events.to_string(index=False))
        rows.append(summary(upload, events))
    print("--- per upload: the page's stages and the server's steps (ms)")
    print(pd.DataFrame(rows).to_string(index=False))
    print(json.dumps({"trace": str(trace)}))
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
