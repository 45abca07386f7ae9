"""The first query of a fresh server, with and without the warm start (cbir.service.search.warm_start).

    .venv/bin/python benchmarks/warm_start.py                # default collection, a photo as the query
    .venv/bin/python benchmarks/warm_start.py --wait 0       # the first query arrives while the warm-up runs

Each case runs in a new Python process, as a new server would (numba's compiled kernels come from its on-disk cache,
as on any machine that ran cbir once):

* ``warm``: the server starts :func:`warm_start` in the background, the first user query arrives ``--wait`` seconds
  later (default: when the warm-up is done; the seconds it took are printed), and is answered through the shared
  engine as the Search page and the API do (:func:`shared_engine`, :meth:`SearchEngine.query`: decode, embed, search);
* ``cold``: no warm start: the first query pays for the kernels, the feature set, the model and the engine.

Printed per case and setting (the scan, then each fresh saved index): the first query's time end to end (from the
image bytes to the ranked table, engine included), its embedding and search parts, and the second query's time.
Goal (issue 21): the first query ≤ 300 ms end to end, its search part ≤ 20 ms. Ends with the load average.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pandas as pd
from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

from cbir.core import config

config.quiet_native_libraries()  # as the app and the CLI start: before numpy, TensorFlow and libgomp load


def first_queries(warm: bool, wait: float | None, query: bytes) -> dict:
    """In this (fresh) process: optionally warm up, then time the first and second query per setting."""
    started = time.perf_counter()
    from cbir.features.saved_indexes import saved_infos, staleness
    from cbir.features.workspace import base_version, complete_feature_sets, load_feature_set
    from cbir.indexes.registry import IndexConfig
    from cbir.service.search import extractor_spec, shared_engine, warm_start

    out: dict = {"import_s": time.perf_counter() - started}
    path = next(iter(complete_feature_sets().values()))
    if warm:
        report, _thread = warm_start(path)
        report.done.wait(wait)
        out["warm_up_s"] = report.seconds if report.done.is_set() else None
        out["warm_error"] = report.error
    rows = []
    configs = [IndexConfig()]
    for config_index in range(10):
        if config_index >= len(configs):
            break
        config_ = configs[config_index]
        began = time.perf_counter()
        engine = shared_engine(path, base_version(path), extractor_spec(load_feature_set(path).meta))
        first = engine.query(query, config_)
        first_s = time.perf_counter() - began
        began = time.perf_counter()
        engine.query(query, config_)
        rows.append(
            {
                "setting": config_.label,
                "source": engine.sources.get(config_, "?"),
                "first_ms": first_s * 1e3,
                "embed_ms": first.embed_seconds * 1e3,
                "search_ms": first.search_seconds * 1e3,
                "second_ms": (time.perf_counter() - began) * 1e3,
            }
        )
        if config_index == 0:  # then every fresh saved index of the feature set
            version = engine._saved_version
            configs += [
                IndexConfig(**info["config"]) for _, info in saved_infos(path) if staleness(info, version) is None
            ]
    out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds between start and first query (default: when the warm-up is done)",
    )
    parser.add_argument("--child", choices=["warm", "cold"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png

    photo = next(iter(SAMPLE_PHOTOS))
    if args.child:
        print(json.dumps(first_queries(args.child == "warm", args.wait, sample_photo_png(photo))))
        return 0
    frames = []
    for case in ("warm", "cold"):
        command = [sys.executable, __file__, "--child", case]
        if args.wait is not None:
            command += ["--wait", str(args.wait)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        extra = f", warm-up {result['warm_up_s']:.1f} s in the background" if result.get("warm_up_s") else ""
        error = f"; warm start stopped: {result['warm_error']}" if result.get("warm_error") else ""
        print(f"{case}: imports {result['import_s']:.1f} s{extra}{error}")
        frames.append(pd.DataFrame(result["rows"]).assign(case=case))
    table = pd.concat(frames, ignore_index=True)[
        ["case", "setting", "source", "first_ms", "embed_ms", "search_ms", "second_ms"]
    ]
    print(f"query: the sample photo {photo!r}; goal: first query <= 300 ms end to end, its search <= 20 ms")
    print(table.round(1).to_string(index=False))
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
