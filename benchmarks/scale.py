"""Scale benchmark: a synthetic feature store (no images) and every index at N objects.

    .venv/bin/python benchmarks/scale.py                    # N = 100,000 (a few minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py --n 1000000        # the issue's goal size
    .venv/bin/python benchmarks/scale.py --skip-store       # indexes only (or --skip-indexes)

1. **Feature store**: writes N × 1280 float16 rows (random, streamed in chunks) with an N-row catalog to
   ``--out`` (default: a temp folder), then opens it with :func:`cbir.features.load_features` in a fresh process
   and reports the open time and that process's peak resident memory (``resource.getrusage``) right after the
   open and after one full pass over the rows (a mean per column: every page read once; goals at 1M: open < 5 s,
   < 4 GiB resident).
2. **Indexes** at N × 256 float32: synthetic and hard (non-negative, a decaying spectrum: the ReLU of a randomly
   rotated Gaussian whose j-th axis has scale (j + 1)^-0.75, like pooled CNN features), ``--queries`` held-out
   queries. For each of ``SequentialScan``, ``LSHIndex`` (g, h, probes and w as a multiple of the data-driven
   width from ``--lsh``) and faiss HNSW (when installed; ``--no-faiss``: its build takes ~45 s per 100k on 2
   cores): build seconds, the resident memory the build added (current RSS after − before, MiB), query
   milliseconds per query (batch search), recall@10 against the exact scan (:func:`cbir.evaluation.recall_at_k`)
   and the objects visited per query.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # see benchmarks/search.py

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

K = 10
STORE_DIM = 1280
INDEX_DIM = 256


def rss_mib() -> float:
    """Current resident memory of this process (MiB), from /proc."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB), ``resource.getrusage`` (Linux keeps it across fork and exec, so
    the store is built and opened in child processes of a small parent)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def hwm_mib() -> float:
    """Peak resident memory since this program started (``VmHWM``, MiB): unlike getrusage, not inherited."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def synthetic_catalog(n: int) -> pd.DataFrame:
    ids = np.arange(n)
    return pd.DataFrame(
        {
            "path": [f"/photos/{i // 1000:04d}/img{i:07d}.jpg" for i in ids],
            "relpath": [f"{i // 1000:04d}/img{i:07d}.jpg" for i in ids],
            "label": pd.Series(np.where(ids % 10 == 0, None, [f"class{i % 100}" for i in ids]), dtype=object),
            "split": "train",
            "role": np.where(ids % 10 == 0, "distractor", "index"),
            "size": (ids * 7919 % 100_000 + 10_000).astype(np.int64),
            "mtime_ns": (ids + 1_700_000_000_000_000_000).astype(np.int64),
        }
    )


def build_store(out: Path, n: int, dtype: str = "float16", chunk: int = 65_536) -> float:
    """Write the synthetic store; returns seconds."""
    from cbir.feature_store import write_store

    def rows() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for start in range(0, n, chunk):
            yield np.abs(rng.standard_normal((min(chunk, n - start), STORE_DIM), dtype=np.float32))

    meta = {"backbone": "synthetic", "weights_id": "synthetic", "dim": STORE_DIM, "complete": True, "n_images": n}
    start = time.perf_counter()
    write_store(out, rows(), synthetic_catalog(n), pd.DataFrame(columns=["path", "reason"]), {}, meta, dtype=dtype)
    return time.perf_counter() - start


def open_store(path: str) -> dict[str, float]:
    """Run in a fresh process: open the store, then read every row once."""
    from cbir.features import load_features

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


def hard_vectors(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32: ReLU of a randomly rotated Gaussian with a decaying spectrum (see the module docstring)."""
    rotation = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))[0].astype(np.float32)
    scale = ((np.arange(dim) + 1.0) ** -0.75).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        latent = rng.standard_normal((stop - start, dim), dtype=np.float32) * scale
        np.maximum(latent @ rotation, 0, out=out[start:stop])
    return out


def bench_indexes(n: int, n_queries: int, lsh: tuple[float, ...], faiss_on: bool) -> pd.DataFrame:
    from cbir.evaluation import default_width, recall_at_k
    from cbir.index import LSHIndex, SequentialScan, warm_up

    warm_up()
    data, queries = hard_vectors(n, INDEX_DIM, seed=0), hard_vectors(n_queries, INDEX_DIM, seed=1)
    g, h, probes, factor = (int(lsh[0]), int(lsh[1]), int(lsh[2]), lsh[3])
    width = float(default_width(data)) * factor
    builders = {
        "SequentialScan": lambda: SequentialScan().fit(data),
        f"LSHIndex g={g} h={h} probes={probes} w={width:.3g}": lambda: LSHIndex(g, h, width, probes=probes, seed=0).fit(
            data
        ),
    }
    if faiss_on:
        try:
            import faiss

            def hnsw() -> object:
                index = faiss.IndexHNSWFlat(INDEX_DIM, 32)
                index.hnsw.efConstruction = 40
                index.add(data)
                index.hnsw.efSearch = 64
                return index

            builders["faiss HNSW M=32 ef=64"] = hnsw
        except ImportError:
            print("faiss is not installed: HNSW skipped")
    rows, exact = [], None
    for name, build in builders.items():
        before = rss_mib()
        start = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - start
        added = rss_mib() - before
        start = time.perf_counter()
        answer = index.search(queries, K)  # type: ignore[attr-defined]  # cbir: (scores, ids, visited); faiss: (D, I)
        ids = answer[1]
        query_ms = (time.perf_counter() - start) * 1000 / n_queries
        exact = ids if exact is None else exact
        rows.append(
            {
                "index": name,
                "build_s": build_s,
                "build_added_rss_mib": added,
                "query_ms": query_ms,
                f"recall@{K}": float(recall_at_k(ids, exact, K).mean()),
                "visited": float(np.mean(answer[2])) if len(answer) == 3 else float("nan"),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        del index
    return pd.DataFrame(rows)


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
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-indexes", action="store_true")
    parser.add_argument("--open-only", default=None, help=argparse.SUPPRESS)  # child processes
    parser.add_argument("--build-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open_only:
        print(json.dumps(open_store(args.open_only)))
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
        table = bench_indexes(args.n, args.queries, lsh, not args.no_faiss)
        print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
