"""What every benchmark script shares: this checkout first on ``sys.path``, best-of timing, the machine line
(CPUs and load average, printed beside every timing: on two shared cores a busy neighbour moves a ratio by 2×),
tables as text with uniform decimals, and the peak resident memory.

A script starts with ``from harness import ...`` when run as ``python benchmarks/x.py`` (its folder is on
``sys.path``), and importing this module puts the checkout's root first, so ``cbir`` is this checkout's, not an
installed one; the tests import the scripts as ``benchmarks.x`` with the root already on the path.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

T = TypeVar("T")


def add_features_argument(parser: Any) -> None:
    """``--features PATH``: the feature set a script measures; :func:`features_or_default` fills in the default."""
    parser.add_argument("--features", type=Path, default=None, help="feature set (default: the default collection's)")


def features_or_default(path: Path | None) -> Path:
    """``path``, or the default collection's newest feature set."""
    if path is not None:
        return path
    from cbir.features import workspace

    return Path(workspace.resolve_feature_path(None))


def best_of(repeats: int, run: Callable[[], T]) -> tuple[float, T]:
    """Fastest wall time (seconds) of ``repeats`` >= 1 runs of ``run()``, and the last run's result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result  # type: ignore[return-value]


def machine_line() -> str:
    """One line: CPUs and the load averages, for the head of a benchmark's output."""
    one, five, fifteen = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def table_text(table: pd.DataFrame, digits: int = 4) -> str:
    """``table`` as text without its index, floats with ``digits`` significant digits, wide enough not to wrap."""
    with pd.option_context("display.width", 250, "display.max_colwidth", 80):
        return table.to_string(index=False, float_format=lambda v: f"{v:.{digits}g}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB; ``resource.getrusage``: Linux keeps it across fork and exec, so
    measure in a fresh process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def switch_page(at: Any, url_path: str) -> Any:
    """``at``, a ``streamlit.testing.v1.AppTest`` of app.py that has run, switched to the page at ``url_path``
    (``"Search"``, ``"Index_tuning"``, ``"Model_comparison"``) as a link to it would; ``run()`` it next.

    ``AppTest.switch_page`` finds only pages that are files, and app.py's pages are functions: the page is requested
    by the hash ``st.navigation`` registered it under (``AppTest`` keeps them in ``_registered_pages``)."""
    hashes = {info.get("url_pathname"): page_hash for page_hash, info in at._registered_pages.items()}
    if url_path not in hashes:
        raise ValueError(f"no page at /{url_path} in app.py's navigation: {sorted(map(str, hashes))}")
    at._page_hash = hashes[url_path]
    return at
