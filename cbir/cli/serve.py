"""``serve``: the HTTP API (:mod:`cbir.service.api`) on uvicorn, registered by :mod:`cbir.cli.main`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbir.core.errors import ConfigError

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
