"""A saved index at scale through the path the app and the API take (cbir.features.saved_indexes): the staleness
check, the load and the first answer, each in a fresh process; then a stale one refused.

    python benchmarks/scale.py --n 1000000 --write-workspace /tmp/ws          # 1M x 256 synthetic, ~15 s
    CBIR_ARTIFACTS=/tmp/ws python -m cbir index build --kind hnsw --features STORE   # ~13 min on 2 idle cores
    CBIR_ARTIFACTS=/tmp/ws python benchmarks/saved_load.py --features STORE [--kind hnsw] [--stale]

Each step runs in a new process, as a new server would (the page cache holds whatever earlier steps read):

* ``direct``: the feature set's version (:class:`FeatureSetVersion`: its manifest), :func:`load_fresh` (``info.json``,
  the staleness check, the index file) and the first ``search`` of one stored row;
* ``engine``: what the app's and the API's warm start do: the feature set opened (memory-mapped) and its catalog read
  (:func:`shared_engine`), then the first :meth:`SearchEngine.query_vector` with the setting, which loads the saved
  index; the table says whether it was ``loaded`` or ``built``.

``--stale`` then changes the feature set as ``python -m cbir remove`` does (one row removed: the saved indexes' row
numbers no longer match, :func:`cbir.service.growth.remove_images` marks them stale) and runs ``direct`` again: the
saved index must be refused with the reason, never loaded. This changes the workspace (only use a scratch one); the
engine is not run on it then, since it would build the setting in memory instead (13 minutes for HNSW at 1M).
Ends with the load average. Goal (issue 21): HNSW at 1M loads in <= 15 s and answers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one

from cbir.core import config

config.quiet_native_libraries()  # as the app and the CLI start


def direct(path: str, kind: str) -> dict:
    """In this (fresh) process: version, staleness check + load, first answer."""
    from cbir.features.saved_indexes import load_fresh
    from cbir.features.sources import FeatureSetVersion
    from cbir.service.search import default_config

    config_ = default_config(kind, path)
    began = time.perf_counter()
    version = FeatureSetVersion.of(path)
    row: dict = {"step": "direct", "version_s": time.perf_counter() - began}
    began = time.perf_counter()
    index, reason = load_fresh(path, config_, version)
    row["load_s"] = time.perf_counter() - began
    row["refused"] = reason
    if index is not None:
        from cbir.features.workspace import load_feature_set

        query = load_feature_set(path).features[:1]
        began = time.perf_counter()
        answer = index.search(query, 10)
        row["first_search_ms"] = (time.perf_counter() - began) * 1e3
        row["finds_itself"] = bool(answer.ids[0, 0] == 0)
    row["n_objects"] = None if index is None else index.n_objects
    return row


def engine(path: str, kind: str) -> dict:
    """In this (fresh) process: the shared engine of the feature set, then its first query with ``kind``."""
    from cbir.core.errors import CbirError
    from cbir.features.workspace import base_version, load_feature_set
    from cbir.service.search import default_config, extractor_spec, shared_engine

    config_ = default_config(kind, path)
    began = time.perf_counter()
    meta = load_feature_set(path).meta
    try:
        spec = extractor_spec(meta)
    except CbirError:  # a synthetic set has no model: searched by stored features, as the pages do
        spec = None
    engine_ = shared_engine(path, base_version(path), spec)
    row: dict = {"step": "engine", "engine_s": time.perf_counter() - began}
    began = time.perf_counter()
    answer = engine_.query_vector(engine_.feature_set.features[0], config_)
    row["load_s"] = time.perf_counter() - began - answer.search_seconds
    row["first_search_ms"] = answer.search_seconds * 1e3
    row["source"] = engine_.sources.get(config_)
    row["refused"] = engine_.stale.get(config_)
    row["n_objects"] = answer.n_objects
    return row


def in_child(step: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", step, "--features", args.features, "--kind", args.kind]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {**row, "process_s": time.perf_counter() - began}


def make_stale(path: str) -> str:
    """Remove the feature set's first row as ``python -m cbir remove`` does; the removed path."""
    from cbir.features.workspace import load_feature_set
    from cbir.service.growth import remove_images

    relpath = str(load_feature_set(path).catalog["relpath"].iloc[0])
    print(remove_images(path, [relpath]).summary())
    return relpath


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="the feature set (store folder) the index was built on")
    parser.add_argument("--kind", default="hnsw", help="index kind of the saved index (default hnsw)")
    parser.add_argument("--stale", action="store_true", help="then remove a row and check the index is refused")
    parser.add_argument("--child", choices=["direct", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.features = str(Path(args.features).resolve())
    if args.child:
        row = (direct if args.child == "direct" else engine)(args.features, args.kind)
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(row))
        return 0
    rows = [in_child("direct", args), in_child("engine", args)]
    if args.stale:
        removed = make_stale(args.features)
        rows.append({**in_child("direct", args), "step": f"direct, after removing {removed}"})
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 120)
    print(f"{args.features}: saved {args.kind}, each step in a fresh process")
    columns = ["step", "source", "version_s", "engine_s", "load_s", "first_search_ms", "finds_itself", "n_objects"]
    table = pd.DataFrame(rows).reindex(columns=[*columns, "process_s", "peak_rss_mib", "refused"])
    print(table.round(3).to_string(index=False, na_rep=""))
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
