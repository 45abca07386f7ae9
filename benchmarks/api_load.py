"""Load test of the HTTP API: N concurrent clients for S seconds against ``python -m cbir serve`` on 127.0.0.1, while
``streamlit run app.py`` serves the same collection on another port and is polled.

    .venv/bin/python benchmarks/api_load.py                            # 50 clients, 60 s, the default collection
    .venv/bin/python benchmarks/api_load.py --clients 5 --seconds 5    # the CI size (tests/test_api.py)
    .venv/bin/python benchmarks/api_load.py --url http://127.0.0.1:8000 --no-streamlit   # a server running elsewhere
    .venv/bin/python benchmarks/api_load.py --embed-slots 64          # uploads embedded all at once (no turns)

Each client (an ``httpx.AsyncClient`` task; all in one event loop) sends ``POST /search`` requests back to back until
the time is up, each one drawn at random from the mix: an upload (a collection image's file or one of scikit-image's
sample photos) or an image of the collection by its path, over the exact scan, LSH (the feature set's default setting)
and FAISS HNSW. Before the clock starts, one request of each kind builds its index (the first LSH or HNSW query of a
fresh server builds it; that is not what is measured here). Bounded: clients stop starting requests after
``--seconds``, and each request times out after ``--timeout`` seconds (counted as an error).

Reported: requests, errors (any answer but a 200 with results, or no answer; the goal is 0), QPS, p50 / p95 / max
latency (as the client saw it) and the p50 of the query's own time (embed + search, as the server measured it: the
difference is waiting for the cores), overall and per (query source, index); the Streamlit app's health polls
(``/_stcore/health`` every ``--poll`` seconds: answered / sent and their p95); the load average (1 min) sampled during
the run; and exceptions in the servers' logs. Both servers are started here (free loopback ports, against
``$CBIR_ARTIFACTS`` and ``--collection``) unless ``--url`` is given, and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

from benchmarks.browser import (
    LOOPBACK,
    Server,
    free_port,
    running_server,
    server_errors,
    streamlit_server,
)

API_START_S = 180  # the server loads the model and the features before it answers
INDEXES = {"scan": {"index": "scan"}, "lsh": {"index": "lsh"}, "hnsw": {"index": "hnsw"}}
SOURCES = ("upload", "path")
UPLOAD_FILES = 40  # collection files read once and uploaded again and again (plus the sample photos)


@contextlib.contextmanager
def api_server(
    log_path: Path,
    env: dict[str, str] | None = None,
    collection: Path | None = None,
    port: int | None = None,
    access_log: bool = False,
    embed_slots: int | None = None,
) -> Iterator[Server]:
    """``python -m cbir serve`` on ``127.0.0.1:port`` (a free port by default) with ``env`` added to the environment,
    until the block ends (then it is stopped, killed if it does not stop); ready when ``/health`` answers."""
    port = port or free_port()
    command = [sys.executable, "-m", "cbir", "serve", "--host", LOOPBACK, "--port", str(port)]
    command += [] if collection is None else ["--collection", str(collection)]
    command += [] if embed_slots is None else ["--embed-slots", str(embed_slots)]
    command += [] if access_log else ["--no-access-log"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
    with running_server(command, port, "/health", log_path, env, API_START_S, "cbir serve") as server:
        yield server


@dataclass
class Request:
    """One request of the mix: ``source`` (upload or path), ``index`` (a key of :data:`INDEXES`) and its payload."""

    source: str
    index: str
    upload: tuple[str, bytes] | None = None
    path: str | None = None


@dataclass
class ApiLoadReport:
    """What a run measured. ``requests``: one row per request: source, index, seconds (as the client saw it),
    server_seconds (the query's embed + search, as the server measured it), error (``None``: a good answer)."""

    clients: int
    seconds: float
    requests: pd.DataFrame
    health_polls: int
    health_ok: int
    health_seconds: list[float]
    load_averages: list[float]
    server_errors: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return int(self.requests["error"].notna().sum())

    @property
    def qps(self) -> float:
        return len(self.requests) / self.seconds

    def table(self) -> pd.DataFrame:
        """Requests, errors and latency percentiles (ms) per source and index, then over all."""
        frame = self.requests.assign(ms=self.requests["seconds"] * 1000)
        groups = [((source, index), part) for (source, index), part in frame.groupby(["source", "index"])]
        rows = [_latency_row(source, index, part, self.seconds) for (source, index), part in groups]
        rows.append(_latency_row("all", "all", frame, self.seconds))
        return pd.DataFrame(rows)

    def summary(self) -> str:
        loads = self.load_averages or [float("nan")]
        health = np.percentile(self.health_seconds, 95) * 1000 if self.health_seconds else float("nan")
        return (
            f"{self.clients} clients for {self.seconds:.0f} s: {len(self.requests):,} requests, {self.errors} errors, "
            f"{self.qps:.1f} QPS; Streamlit health: {self.health_ok}/{self.health_polls} answered (p95 {health:.0f} "
            f"ms); load average (1 min) during the run: mean {np.mean(loads):.2f}, max {np.max(loads):.2f} on "
            f"{os.cpu_count()} CPUs; exceptions in the server logs: {len(self.server_errors)}"
        )


def _latency_row(source: str, index: str, part: pd.DataFrame, seconds: float) -> dict[str, object]:
    ms = part["ms"].to_numpy()
    return {
        "source": source,
        "index": index,
        "requests": len(part),
        "errors": int(part["error"].notna().sum()),
        "qps": len(part) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan"),
        "max_ms": float(ms.max()) if len(ms) else float("nan"),
        "server_p50_ms": float(part["server_seconds"].median() * 1000),  # embed + search: the rest is queueing
    }


def upload_pool(collection: Path, n_files: int = UPLOAD_FILES, seed: int = 0) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of ``n_files`` images of the collection folder (drawn with ``seed``) and of the sample photos
    (out-of-domain queries, as the Search page's examples)."""
    from cbir.data.images import IMAGE_EXTENSIONS
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png

    files = sorted(p for p in collection.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(collection).parts)]
    picked = random.Random(seed).sample(files, min(n_files, len(files)))
    return [(p.name, p.read_bytes()) for p in picked] + [(f"{n}.png", sample_photo_png(n)) for n in SAMPLE_PHOTOS]


def _error_of(response: object) -> str | None:
    """``None`` for a 200 answer with results, else what is wrong with ``response`` (an ``httpx.Response``)."""
    status = response.status_code  # type: ignore[attr-defined]
    if status != 200:
        return f"HTTP {status}: {response.text[:200]}"  # type: ignore[attr-defined]
    if not response.json().get("results"):  # type: ignore[attr-defined]
        return "no results"
    return None


def _server_seconds(response: object) -> float:
    """The query's own time as the server measured it (embed + search), NaN for an error."""
    if response.status_code != 200:  # type: ignore[attr-defined]
        return float("nan")
    return float(response.json()["timings_ms"]["total"]) / 1000  # type: ignore[attr-defined]


async def _send(client: object, request: Request, k: int = 10) -> object:
    params = {**INDEXES[request.index], "k": k}
    if request.upload is not None:
        name, data = request.upload
        return await client.post("/search", params=params, files={"image": (name, data)})  # type: ignore[attr-defined]
    return await client.post("/search", params={**params, "path": request.path})  # type: ignore[attr-defined]


async def _prepare(url: str, uploads: Sequence[tuple[str, bytes]], timeout: float) -> list[str]:
    """Warm up every (source, index) once (builds the indexes) and return collection paths to query: the paths of the
    results of a broad query (every one is an image of the feature set)."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=max(timeout, 300)) as client:
        response = await _send(client, Request("upload", "scan", upload=uploads[0]), k=200)
        if (error := _error_of(response)) is not None:
            raise RuntimeError(f"the warm-up query failed: {error}")
        paths = [result["path"] for result in response.json()["results"]]  # type: ignore[attr-defined]
        for index in INDEXES:
            for request in (Request("upload", index, upload=uploads[-1]), Request("path", index, path=paths[0])):
                if (error := _error_of(await _send(client, request))) is not None:
                    raise RuntimeError(f"the warm-up query {request.source}/{index} failed: {error}")
    return paths


async def _client(url: str, deadline: float, pick: random.Random, pool: dict[str, list], timeout: float) -> list:
    import httpx

    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        while time.monotonic() < deadline:
            source, index = pick.choice(SOURCES), pick.choice(list(INDEXES))
            if source == "upload":
                request = Request(source, index, upload=pick.choice(pool["uploads"]))
            else:
                request = Request(source, index, path=pick.choice(pool["paths"]))
            started = time.perf_counter()
            server = float("nan")
            try:
                response = await _send(client, request)
                error, server = _error_of(response), _server_seconds(response)
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # no answer in time, a dropped connection, no JSON
                error = f"{type(exc).__name__}: {exc}"
            rows.append((source, index, time.perf_counter() - started, server, error))
    return rows


async def _poll(urls: Sequence[str], deadline: float, every: float, out: dict[str, list]) -> None:
    """GET each of ``urls`` every ``every`` seconds until ``deadline`` (in a thread: a slow answer must not hold up
    the clients' event loop), and sample the load average."""

    def get(url: str) -> tuple[bool, float]:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status == 200, time.perf_counter() - started
        except OSError:
            return False, time.perf_counter() - started

    while time.monotonic() < deadline:
        out["load"].append(os.getloadavg()[0])
        for url in urls:
            ok, seconds = await asyncio.to_thread(get, url)
            out["health"].append((ok, seconds))
        await asyncio.sleep(every)


def run_api_load(
    url: str,
    collection: Path,
    clients: int = 50,
    seconds: float = 60.0,
    streamlit_url: str | None = None,
    poll_every: float = 1.0,
    timeout: float = 60.0,
    seed: int = 0,
) -> ApiLoadReport:
    """Run ``clients`` concurrent clients against the API at ``url`` for ``seconds`` (uploads drawn from
    ``collection``'s files and the sample photos), polling ``streamlit_url``'s health meanwhile when given."""
    uploads = upload_pool(collection, seed=seed)
    paths = asyncio.run(_prepare(url, uploads, timeout))
    pool = {"uploads": uploads, "paths": paths}
    polled: dict[str, list] = {"health": [], "load": []}

    async def run() -> list:
        deadline = time.monotonic() + seconds
        picks = [random.Random(seed * 1000 + client) for client in range(clients)]
        tasks = [_client(url, deadline, pick, pool, timeout) for pick in picks]
        health = [f"{streamlit_url}/_stcore/health"] if streamlit_url else []
        results = await asyncio.gather(*tasks, _poll(health, deadline, poll_every, polled))
        return [row for rows in results[:-1] for row in rows]

    started = time.monotonic()
    rows = asyncio.run(run())
    elapsed = time.monotonic() - started  # the last requests finish after the deadline
    table = pd.DataFrame(rows, columns=["source", "index", "seconds", "server_seconds", "error"])
    health = polled["health"]
    return ApiLoadReport(
        clients=clients,
        seconds=elapsed,
        requests=table,
        health_polls=len(health),
        health_ok=sum(ok for ok, _ in health),
        health_seconds=[s for ok, s in health if ok],
        load_averages=polled["load"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    from cbir.core import config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--collection", type=Path, default=None, help="default: the default collection")
    parser.add_argument("--url", default=None, help="a running API server (default: start one here)")
    parser.add_argument("--no-streamlit", action="store_true", help="do not start and poll the Streamlit app")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between Streamlit health polls")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as failed")
    parser.add_argument("--embed-slots", type=int, default=None, help="serve's --embed-slots (default: serve's)")
    args = parser.parse_args(argv)
    collection = args.collection or config.default_collection()
    env = {"CBIR_COLLECTION": str(collection)}
    print(f"before: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp, contextlib.ExitStack() as stack:
        started = None if args.url else api_server(Path(tmp) / "api.log", env, collection, embed_slots=args.embed_slots)
        api = None if started is None else stack.enter_context(started)
        url = args.url or api.url  # type: ignore[union-attr]
        app = None if args.no_streamlit else stack.enter_context(streamlit_server(Path(tmp) / "streamlit.log", env))
        print(f"API {url}" + ("" if app is None else f", Streamlit {app.url}"), flush=True)
        report = run_api_load(url, collection, args.clients, args.seconds, None if app is None else app.url, args.poll)
        report.server_errors = server_errors(api.log() if api else "", app.log() if app else "")
        alive = "" if api is None else f"; API server still running: {api.alive()}"
    print(report.table().to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(report.summary() + alive)
    for line in report.server_errors[:20]:
        print(f"  server log: {line}")
    return 0 if report.errors == 0 and report.health_ok == report.health_polls and not report.server_errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
