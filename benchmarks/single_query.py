"""Single queries in a loop, as a server answers one user at a time: the threading policy (cbir.indexes.threads).

    .venv/bin/python benchmarks/single_query.py                 # 1,000 queries per index kind, default collection
    .venv/bin/python benchmarks/single_query.py --queries 200 --kinds scan lsh
    .venv/bin/python benchmarks/single_query.py --layers        # the threading layers side by side (README)

For each index kind (default settings; LSH's bucket width from the data, as the pages start), the features of the
default collection's first ``--queries`` images are searched one at a time (k = 10) and the mean time per query is
printed beside:

* the same loop in a subprocess on an otherwise idle single thread (``NUMBA_NUM_THREADS=1``, ``OMP_NUM_THREADS=1``,
  ``OPENBLAS_NUM_THREADS=1``), run in turn with this process' loop, kind by kind, ``--rounds`` times (each side's
  best is kept): the goal is a ratio ≤ 1.2;
* the same loop without the policy (the kernels' parallel path, BLAS on every thread): what single queries cost
  before issue 21;
* for the scan, plain numpy in this process (matrix product + argpartition, the top 10): goal ≤ 1.2×.

``--layers`` runs the loop (policy on and off) and a batch of all the queries at once in subprocesses, one per numba
threading layer and OpenMP wait policy, to show why :data:`cbir.indexes.threads.THREADING_LAYER` is chosen.
Every table ends with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from cbir.indexes.base import BaseIndex

from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one
from harness import machine_line

K = 10
SINGLE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


from cbir.core import config  # noqa: E402

config.quiet_native_libraries()  # as the CLI and the app start: before numpy loads OpenBLAS


def load_features(path: str | None) -> tuple[np.ndarray, str]:
    """The features (float32) of the feature set at ``path`` (default: the default collection's newest) and its path."""
    from cbir.features.workspace import load_feature_set, resolve_feature_path

    path = str(resolve_feature_path(path))
    return np.ascontiguousarray(load_feature_set(path).features, dtype=np.float32), path


def build(kind: str, features: np.ndarray, path: str) -> BaseIndex:
    """The index of ``kind`` at the setting the Search page starts from (LSH: its data-driven bucket width)."""
    from cbir.service.search import default_config

    return default_config(kind, path).build().fit(features)


def loop_ms(run, queries: np.ndarray, repeats: int = 2) -> float:
    """Mean ms per query of ``run(one row)`` over the rows of ``queries`` (best of ``repeats`` passes, after one
    warm-up query)."""
    run(queries[:1])
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for row in range(len(queries)):
            run(queries[row : row + 1])
        best = min(best, (time.perf_counter() - started) / len(queries))
    return best * 1e3


def numpy_scan(features: np.ndarray):
    """The exact top-k by a matrix product and argpartition, nothing else (the floor the scan is measured against)."""
    sq_norms = np.einsum("ij,ij->i", features, features)

    def run(query: np.ndarray) -> np.ndarray:
        approx = sq_norms - 2.0 * (query @ features.T)
        top = np.argpartition(approx, K - 1, axis=1)[:, :K]
        return np.take_along_axis(top, np.argsort(np.take_along_axis(approx, top, axis=1), axis=1), axis=1)

    return run


def measure(kinds: list[str], path: str | None, n_queries: int, unpoliced: bool, batch: bool) -> dict:
    """{kind: {"policy_ms", "unpoliced_ms", "batch_ms", "numpy_ms"}} measured in this process."""
    from cbir.indexes.warmup import warm_up

    warm_up()
    features, path = load_features(path)
    queries = features[:n_queries]
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        index = build(kind, features, path)
        row = {"policy_ms": loop_ms(lambda q, index=index: index.search(q, K), queries)}
        if unpoliced:  # the kernels' parallel path and BLAS' threads: what BaseIndex.search did before issue 21
            row["unpoliced_ms"] = loop_ms(lambda q, index=index: index._search_live(q, K), queries)
        if batch:
            index.search(queries[:2], K)
            started = time.perf_counter()
            index.search(queries, K)
            row["batch_ms"] = (time.perf_counter() - started) / len(queries) * 1e3
        if kind == "scan":
            row["numpy_ms"] = loop_ms(numpy_scan(features), queries)
        out[kind] = row
    return out


def in_subprocess(args: argparse.Namespace, env: dict[str, str], extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", "--queries", str(args.queries), "--kinds", *args.kinds, *extra]
    if args.features:
        command += ["--features", args.features]
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def layers_table(args: argparse.Namespace) -> pd.DataFrame:
    """Policy on/off and batch per threading layer and OpenMP wait policy, each in its own subprocess."""
    rows = []
    # an empty OMP_WAIT_POLICY is libgomp's default (spin a while, then sleep)
    for layer, wait in (("omp", ""), ("omp", "PASSIVE"), ("workqueue", ""), ("tbb", "")):
        env = {"NUMBA_THREADING_LAYER": layer, "OMP_WAIT_POLICY": wait}
        try:
            result = in_subprocess(args, env, ["--unpoliced", "--batch"])
        except subprocess.CalledProcessError as exc:
            rows.append({"layer": layer, "OMP_WAIT_POLICY": wait, "error": exc.stderr.strip().splitlines()[-1]})
            continue
        for kind, row in result.items():
            rows.append({"layer": layer, "OMP_WAIT_POLICY": wait, "kind": kind, **row})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    from cbir.core.names import INDEX_KINDS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000, help="single queries per kind (default 1000)")
    parser.add_argument("--kinds", nargs="+", choices=INDEX_KINDS, default=list(INDEX_KINDS))
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two sides per kind (default 2)")
    parser.add_argument("--features", help="feature set path (default: the default collection's newest)")
    parser.add_argument("--layers", action="store_true", help="compare numba threading layers instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unpoliced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = measure(args.kinds, args.features, args.queries, args.unpoliced, args.batch)
        import numba

        result = {kind: {**row, "numba_layer": numba.threading_layer()} for kind, row in result.items()}
        print(json.dumps(result))
        return 0
    pd.set_option("display.width", 200)
    if args.layers:
        print(layers_table(args).round(3).to_string(index=False))
        print(machine_line())
        return 0
    features, path = load_features(args.features)
    print(f"{path}: {len(features)} x {features.shape[1]} features, {args.queries} single queries per kind, k={K}")
    # per kind, alternately in the single-thread subprocess and here, --rounds times, keeping each side's best: on
    # a shared machine both sides then see the same load (the table is only as good as the load average allows)
    idle: dict[str, dict[str, float]] = {}
    here: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for kind in args.kinds:
            single = argparse.Namespace(**{**vars(args), "kinds": [kind]})
            for side, result in (
                (idle, in_subprocess(single, SINGLE_THREAD_ENV, [])),
                (here, measure([kind], path, args.queries, unpoliced=True, batch=False)),
            ):
                best = side.setdefault(kind, {})
                for name, value in result[kind].items():
                    if isinstance(value, float):
                        best[name] = min(best.get(name, np.inf), value)
    import numba

    rows = []
    for kind in args.kinds:
        row = {
            "kind": kind,
            "ms/query": here[kind]["policy_ms"],
            "1 thread ms": idle[kind]["policy_ms"],
            "ratio": here[kind]["policy_ms"] / idle[kind]["policy_ms"],
            "no policy ms": here[kind]["unpoliced_ms"],
        }
        if "numpy_ms" in here[kind]:
            row["numpy ms"] = here[kind]["numpy_ms"]
            row["vs numpy"] = here[kind]["policy_ms"] / here[kind]["numpy_ms"]
        rows.append(row)
    print(pd.DataFrame(rows).round(3).to_string(index=False, na_rep=""))
    print(f"numba threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads; goal: ratio <= 1.2")
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
