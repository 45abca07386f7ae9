"""One query image through the model, TensorFlow's graph against TensorFlow Lite's XNNPACK, side by side in one
process (issue 21, :mod:`cbir.features.lite`): the embed of a server's single query, on one thread per op as a
server runs it.

    python benchmarks/query_model.py [--backbone efficientnet_lite0] [--queries 40]

Each runtime embeds the same real photos (the Search page's Example photos), one at a time and in turn, twice:
alone, and beside a Python thread that keeps the interpreter lock busy (as the Search page's script run does while an
upload's query is embedded). Prints the median and 90th percentile per runtime and case, the largest difference
between the two runtimes' features (relative to the largest feature), what the warm start's rule chose
(:func:`cbir.features.lite.use_for_queries`), and the load average.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from harness import machine_line


def busy_python(stop: threading.Event) -> None:
    """Python bytecode in a loop: holds the interpreter lock as much as a thread can."""
    while not stop.is_set():
        sum(range(1000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--queries", type=int, default=40, help="single queries per runtime and case")
    args = parser.parse_args()
    from cbir.core import config

    config.quiet_native_libraries()
    from cbir.data.query import decode_query
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo_png
    from cbir.features import lite
    from cbir.features.extractor import FeatureExtractor
    from cbir.features.query_model import one_thread_per_op

    one_thread_per_op()  # as a server: each op on one thread
    extractor = FeatureExtractor(args.backbone, "imagenet", batch_size=1)
    batches = [extractor.prepare(decode_query(sample_photo_png(name)).image)[None] for name in SAMPLE_PHOTOS]
    graph = extractor.graph_arrays
    expected = [graph(batch) for batch in batches]
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        chosen = lite.use_for_queries(extractor, folder)
        convert_s = time.perf_counter() - began
    forward = extractor.single_forward
    runtimes: dict[str, Callable[[np.ndarray], np.ndarray]] = {"TensorFlow graph": graph}
    if forward is not None:
        runtimes[lite.LITE_RUNTIME] = lambda batch: forward(extractor.spec.preprocess(batch))
        got = [runtimes[lite.LITE_RUNTIME](batch) for batch in batches]
        difference = max(float(np.abs(g - e).max() / np.abs(e).max()) for g, e in zip(got, expected, strict=True))
    rows = []
    for case in ("alone", "beside a busy Python thread"):
        stop = threading.Event()
        busy = threading.Thread(target=busy_python, args=(stop,), daemon=True)
        if case != "alone":
            busy.start()
        times: dict[str, list[float]] = {name: [] for name in runtimes}
        try:
            for query in range(args.queries):
                for name, run in runtimes.items():  # in turn: a neighbour's burst hits both alike
                    started = time.perf_counter()
                    run(batches[query % len(batches)])
                    times[name].append((time.perf_counter() - started) * 1e3)
        finally:
            stop.set()
        for name, values in times.items():
            rows.append(
                {"case": case, "runtime": name, "median_ms": np.median(values), "p90_ms": np.percentile(values, 90)}
            )
    table = pd.DataFrame(rows)
    table["vs_graph"] = table["median_ms"] / table.groupby("case")["median_ms"].transform("first")
    print(f"{args.backbone}, one image ({len(batches)} real photos in turn), {args.queries} queries a runtime and case")
    print(table.round(2).to_string(index=False))
    print(f"warm start's rule: {chosen} (converted and checked in {convert_s:.1f} s)")
    if forward is not None:
        print(f"largest feature difference: {difference:.1e} of the largest feature (allowed {lite.TOLERANCE:g})")
    print(machine_line())


if __name__ == "__main__":
    main()
