"""Scale benchmark: a synthetic feature store (no images) and every index at N objects.

    .venv/bin/python benchmarks/scale.py                    # N = 100,000 (a few minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py --n 1000000        # the issue's goal size
    .venv/bin/python benchmarks/scale.py --skip-store       # indexes only (or --skip-indexes)

1. **Feature store**: writes N × 1280 float16 rows (random, streamed in chunks) with an N-row catalog to
   ``--out`` (default: a temp folder), then opens it with :func:`cbir.features.sources.load_features` in a fresh
   process
   and reports the open time and that process's peak resident memory (``resource.getrusage``) right after the
   open and after one full pass over the rows (a mean per column: every page read once; goals at 1M: open < 5 s,
   < 4 GiB resident).
2. **Indexes** at N × 256 float32: synthetic and hard (non-negative, a decaying spectrum: the ReLU of a randomly
   rotated Gaussian whose j-th axis has scale (j + 1)^-0.75, like pooled CNN features), ``--queries`` held-out
   queries. For each of ``SequentialScan``, ``LSHIndex`` (g, h, probes and w as a multiple of the data-driven
   width from ``--lsh``), faiss HNSW (when installed; ``--no-faiss``: its build takes ~45 s per 100k on 2
   cores) and ``--peers`` (IVF-Flat, hnswlib, cross-polytope LSH as the comparison page runs them): build seconds, the
   resident memory the build added (current RSS after − before, MiB), query
   milliseconds per query (batch search), recall@10 against the exact scan
   (:func:`cbir.evaluation.evaluate.recall_at_k`)
   and the objects visited per query.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # see benchmarks/search.py

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from harness import peak_rss_mib  # first: this checkout's cbir, not an installed one

K = 10
STORE_DIM = 1280
INDEX_DIM = 256


def rss_mib() -> float:
    """Current resident memory of this process (MiB), from /proc."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mib() -> float:
    """Peak resident memory since this program started (``VmHWM``, MiB): unlike getrusage, not inherited."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def build_store(out: Path, n: int, dtype: str = "float16") -> float:
    """Write the synthetic store (:func:`cbir.features.synthetic.write_synthetic_store`, N × 1280); returns seconds."""
    from cbir.features.synthetic import write_synthetic_store

    start = time.perf_counter()
    write_synthetic_store(out, n, STORE_DIM, dtype)
    return time.perf_counter() - start


def open_store(path: str) -> dict[str, float]:
    """Run in a fresh process: open the store, then read every row once."""
    from cbir.features.sources import load_features

    before, hwm_before = peak_rss_mib(), hwm_mib()
    start = time.perf_counter()
    feature_set = load_features(path)
    seconds = time.perf_counter() - start
    opened, hwm_opened = peak_rss_mib(), hwm_mib()
    assert isinstance(feature_set.features, np.memmap)
    start = time.perf_counter()
    means = np.zeros(feature_set.features.shape[1], dtype=np.float64)
    for i in range(0, len(feature_set.features), 65_536):
        means += feature_set.features[i : i + 65_536].sum(axis=0, dtype=np.float64)
    return {
        "rows": len(feature_set.features),
        "open_s": seconds,
        "peak_rss_before_open_mib": before,
        "peak_rss_after_open_mib": opened,
        "hwm_before_open_mib": hwm_before,
        "hwm_after_open_mib": hwm_opened,
        "full_pass_s": time.perf_counter() - start,
        "peak_rss_after_full_pass_mib": peak_rss_mib(),
        "hwm_after_full_pass_mib": hwm_mib(),
    }


def bench_indexes(
    n: int,
    n_queries: int,
    lsh: tuple[float, ...],
    faiss_on: bool,
    save_dir: Path | None = None,
    peers: tuple[str, ...] = (),
) -> pd.DataFrame:
    from cbir.core.metrics import recall_at_k
    from cbir.evaluation.comparison import reference_config
    from cbir.features.synthetic import hard_vectors
    from cbir.indexes.base import BaseIndex
    from cbir.indexes.lsh import LSHIndex
    from cbir.indexes.reference import HNSWIndex
    from cbir.indexes.scan import SequentialScan
    from cbir.indexes.warmup import warm_up
    from cbir.indexes.widths import default_width

    warm_up()
    data, queries = hard_vectors(n, INDEX_DIM, seed=0), hard_vectors(n_queries, INDEX_DIM, seed=1)
    g, h, probes, factor = (int(lsh[0]), int(lsh[1]), int(lsh[2]), lsh[3])
    width = float(default_width(data)) * factor
    builders: dict[str, Any] = {
        "SequentialScan": lambda: SequentialScan().fit(data),
        f"LSHIndex g={g} h={h} probes={probes} w={width:.3g}": lambda: LSHIndex(g, h, width, probes=probes, seed=0).fit(
            data
        ),
    }
    if faiss_on:
        builders["HNSWIndex (faiss) M=32 ef=64"] = lambda: HNSWIndex(ef_search=64).fit(data)
    for config in map(reference_config, peers):  # the other reference indexes as the comparison page runs them
        builders[config.label] = lambda config=config: config.build().fit(data)
    rows, exact = [], None
    for name, build in builders.items():
        before = rss_mib()
        start = time.perf_counter()
        index: BaseIndex = build()
        build_s = time.perf_counter() - start
        added = rss_mib() - before
        row: dict[str, Any] = {"index": name, "build_s": build_s, "build_added_rss_mib": added}
        if save_dir is not None:  # save, drop, load, and answer with the loaded index
            file = save_dir / f"{type(index).__name__}.joblib"
            start = time.perf_counter()
            index.save(file)
            row["save_s"] = time.perf_counter() - start
            row["file_gib"] = file.stat().st_size / 2**30
            kind = type(index)
            del index
            start = time.perf_counter()
            index = kind.load(file)
            row["load_s"] = time.perf_counter() - start
            file.unlink()
        start = time.perf_counter()
        _, ids, visited = index.search(queries, K)
        row["query_ms"] = (time.perf_counter() - start) * 1000 / n_queries
        start = time.perf_counter()
        index.search(queries[:1], K)
        row["one_query_ms"] = (time.perf_counter() - start) * 1000
        exact = ids if exact is None else exact
        row.update(
            {
                f"recall@{K}": float(recall_at_k(ids, exact, K).mean()),
                "visited": float(np.mean(visited)),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
        rows.append(row)
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        del index
    return pd.DataFrame(rows)


def write_workspace(artifacts: Path, n: int) -> None:
    from tqdm import tqdm

    from cbir.features.synthetic import write_synthetic_workspace

    with tqdm(total=n, unit="row", desc="synthetic store") as bar:
        collection, store = write_synthetic_workspace(artifacts, n, progress=lambda done, _: bar.update(done - bar.n))
    print(
        f"store: {store}\nopen the app on it:\n  CBIR_ARTIFACTS={artifacts} CBIR_COLLECTION={collection} "
        ".venv/bin/python -m cbir app"
    )


def child(args: list[str]) -> Any:
    """Run this script with ``args`` in a fresh process; its last stdout line, parsed as JSON."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="objects (1000000 for the issue's goal)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="store folder (default: a temp folder, removed)")
    parser.add_argument(
        "--lsh", default="16,4,16,2", help="g,h,probes,width factor (× the data-driven width) of the LSH index"
    )
    parser.add_argument("--no-faiss", action="store_true", help="leave out FAISS HNSW")
    parser.add_argument(
        "--peers",
        default="",
        help="also these reference indexes as the comparison page runs them, comma-separated: "
        "ivf_flat,hnswlib,cross_polytope",
    )
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-indexes", action="store_true")
    parser.add_argument(
        "--save", action="store_true", help="save each index, load it back (timed) and answer with the loaded one"
    )
    parser.add_argument(
        "--write-workspace",
        type=Path,
        default=None,
        metavar="ARTIFACTS",
        help="only write a synthetic N × 256 float32 collection the app can open under this artifacts folder, and "
        "print the command that opens the app on it",
    )
    parser.add_argument("--open-only", default=None, help=argparse.SUPPRESS)  # child processes
    parser.add_argument("--build-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open_only:
        print(json.dumps(open_store(args.open_only)))
        return
    if args.write_workspace is not None:
        write_workspace(args.write_workspace, args.n)
        return
    if args.build_only:
        print(json.dumps(build_store(Path(args.build_only), args.n)))
        return
    if not args.skip_store:
        with tempfile.TemporaryDirectory(prefix="cbir-scale-") as tmp:
            out = args.out or Path(tmp) / "store"
            write_s = child([f"--n={args.n}", "--build-only", str(out)])
            size = sum(f.stat().st_size for f in out.iterdir()) / 2**30
            result = child(["--open-only", str(out)])
            print(f"feature store {args.n:,} × {STORE_DIM} float16: {size:.2f} GiB on disk, written in {write_s:.1f} s")
            print(
                f"open: {result['open_s']:.2f} s (goal < 5 s at 1M); peak RSS (getrusage) "
                f"{result['peak_rss_after_open_mib']:.0f} MiB after the open, {result['peak_rss_before_open_mib']:.0f} "
                f"MiB before it (goal < 4096 MiB); VmHWM {result['hwm_after_open_mib']:.0f} MiB after the open, "
                f"{result['hwm_before_open_mib']:.0f} MiB before it\none full pass over the rows "
                f"{result['full_pass_s']:.1f} s, then peak RSS {result['peak_rss_after_full_pass_mib']:.0f} MiB, VmHWM "
                f"{result['hwm_after_full_pass_mib']:.0f} MiB (the mapped pages of the file count as resident)\n",
                flush=True,
            )
    if not args.skip_indexes:
        lsh = tuple(float(v) for v in args.lsh.split(","))
        print(f"indexes at {args.n:,} × {INDEX_DIM} float32 (hard synthetic), {args.queries} queries, k={K}:")
        with tempfile.TemporaryDirectory(prefix="cbir-scale-indexes-", dir=args.out) as tmp:
            peers = tuple(kind for kind in args.peers.split(",") if kind)
            table = bench_indexes(args.n, args.queries, lsh, not args.no_faiss, Path(tmp) if args.save else None, peers)
        print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
