"""The package's shape, checked as the README's "Development" section promises: modules a newcomer can read in one
sitting and functions that fit on a screen (numba kernels excepted: splitting them costs speed), in cbir/, the app,
its pages and the benchmark scripts, and the layer and cycle contracts of import-linter (`lint-imports`, also run by
.ci/run)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# a module may be longer when the comment at its top says why, with this marker
LONG_MODULE_MARKER = "# longer than 600 lines:"
CHECKED = [
    *sorted((ROOT / "cbir").rglob("*.py")),  # the pages are in cbir/app/pages
    ROOT / "app.py",
    *sorted((ROOT / "benchmarks").glob("*.py")),
]


def _is_numba_kernel(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(name in ast.unparse(decorator) for decorator in node.decorator_list for name in ("jit", "RowParallel"))


def test_modules_and_functions_stay_readable() -> None:
    too_long = []
    for path in CHECKED:
        source = path.read_text()
        name = path.relative_to(ROOT)
        if source.count("\n") > MAX_MODULE_LINES and LONG_MODULE_MARKER not in source[:3000]:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_numba_kernel(node):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}() has {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_checker_sees_a_long_function(tmp_path: Path) -> None:
    """The size rule reads real definitions (a guard against a checker that passes everything)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    tree = ast.parse(f"def long():\n{body}\n")
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    assert not _is_numba_kernel(node)


def test_import_contracts_hold() -> None:
    """No layer imports one above it and no two modules import each other (pyproject's import-linter contracts)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (requirements-dev.txt)")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]


def test_no_pages_folder_beside_the_app() -> None:
    """A ``pages/`` folder beside app.py, even an empty one, puts Streamlit in its older multipage mode until app.py's
    first run has called ``st.navigation``: a link to a page as a fresh server's first request then gets "Page not
    found" (test_browser.py shows it). The pages are modules of cbir/app/pages."""
    assert not (ROOT / "pages").exists(), "remove pages/ (the pages live in cbir/app/pages)"
