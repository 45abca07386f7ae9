"""The servers, registered by :mod:`cbir.cli.main`: ``serve``, the HTTP API (:mod:`cbir.service.api`) on uvicorn, and
``app``, the Streamlit app (``app.py``) in this process after its warm start has begun."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cbir.core import config
from cbir.core.errors import ConfigError

if TYPE_CHECKING:
    from cbir.service.search import WarmStart

APP_SCRIPT = config.PROJECT_ROOT / "app.py"

DEFAULT_HOST = "127.0.0.1"  # loopback: opening the API to a network is the user's explicit choice (--host 0.0.0.0)
DEFAULT_PORT = 8000


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "serve", help="the HTTP API: POST /search, GET /health, /feature-sets, /indexes, /images/…, docs at /docs"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--collection", type=Path, default=None, help="collection folder (default: $CBIR_COLLECTION or the default)"
    )
    p.add_argument("--feature-set", default=None, help="feature set served by default (an id of GET /feature-sets)")
    p.add_argument(
        "--embed-slots",
        type=int,
        default=None,
        help="uploads embedded at once (default: half the CPUs, at least 1); the others wait their turn",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; the default feature set's engine is loaded before the first request is answered."""
    import uvicorn

    from cbir.service.api import SearchService, create_app

    if args.embed_slots is not None and args.embed_slots < 1:
        raise ConfigError(f"--embed-slots must be >= 1, got {args.embed_slots}")
    service = SearchService(args.collection, args.feature_set, embed_slots=args.embed_slots)
    if args.feature_set is not None:
        service.feature_set(args.feature_set)  # an unknown id: one line (exit 2), not a server that cannot answer
    print(f"cbir API on http://{args.host}:{args.port} (docs: /docs), collection {service.collection}", flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, access_log=not args.no_access_log)
    return 0


def add_app_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``app`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "app",
        help="the Streamlit app, warmed as the server starts (streamlit run app.py warms at the first session)",
        description="Start the warm start (kernels, the newest feature set, its model, engine and fresh saved "
        "indexes) in a background thread, then run the Streamlit app in this process; a line says when the warm "
        "start is done. Options after -- go to `streamlit run` (e.g. -- --server.headless true).",
    )
    p.add_argument("--port", type=int, default=None, help="port (default: Streamlit's, 8501)")
    p.add_argument("--host", default=None, help="address to listen on (default: Streamlit's, every interface)")
    p.add_argument("streamlit_options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    """Warm up in the background, then serve the app until interrupted (Streamlit's own loop and signal handling)."""
    from streamlit.web import cli as streamlit_cli

    from cbir.service.search import server_warm_start

    if not APP_SCRIPT.is_file():
        raise ConfigError(f"{APP_SCRIPT} not found: `python -m cbir app` runs from a checkout of cbir")
    options = list(args.streamlit_options)
    if options[:1] == ["--"]:
        options = options[1:]
    if args.port is not None:
        options += ["--server.port", str(args.port)]
    if args.host is not None:
        options += ["--server.address", args.host]
    report = server_warm_start()  # app.py's first session finds it started (cbir.app.ui.warm_start)
    threading.Thread(target=_say_when_warm, args=(report,), name="cbir-warm-start-log", daemon=True).start()
    # `streamlit run` itself, in this process: its options, config files and server, the warm-up thread beside it
    streamlit_cli.main(args=["run", str(APP_SCRIPT), *options], prog_name="streamlit")
    return 0


def _say_when_warm(report: WarmStart) -> None:
    """Print one line when the warm start ends (what servers' logs and benchmarks/warm_start.py wait for)."""
    report.done.wait()
    if report.error:
        print(f"cbir: warm start stopped after {report.seconds:.1f} s: {report.error}", flush=True)
    else:
        runtime = f"; queries embedded with {report.query_runtime}" if report.query_runtime else ""
        answered = ", ".join(report.configs)
        print(f"cbir: warm start done in {report.seconds:.1f} s ({answered} answered{runtime})", flush=True)
