"""The CLI and the app do not print TensorFlow's start-up log lines (oneDNN, absl, CPU instructions, CUDA) at the
user; real errors printed while TensorFlow loads still come through (cbir.core.config.quiet_native_libraries)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.core import config

NOISE_WORDS = ("oneDNN", "absl::InitializeLog", "This TensorFlow binary is optimized", "cuda drivers", "cuInit")
REAL_ERROR = "E0000 some_kernel.cc:12] a real error the user must see"


def run_python(*args: str, extra_path: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python args…`` from the project root, with TensorFlow's logging settings left to the code it runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    python_path = [str(config.PROJECT_ROOT)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    return subprocess.run(
        [sys.executable, *args],
        cwd=config.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_start_up_lines_are_dropped_and_errors_kept(tmp_path: Path) -> None:
    """A stand-in ``tensorflow`` package writes TensorFlow's start-up lines and one real error straight to file
    descriptor 2 (as its C++ code does) while it is imported."""
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical "
        "results. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
        "I tensorflow/core/platform/cpu_feature_guard.cc:182] This TensorFlow binary is optimized to use available "
        "CPU instructions in performance-critical operations.",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.",
        "I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers on your machine.",
        REAL_ERROR,
    ]
    banner = "".join(f"{line}\n" for line in lines).encode()
    (package / "__init__.py").write_text(f"import os\nos.write(2, {banner!r})\n")
    quiet = run_python(
        "-c",
        "import sys; from cbir.core import config; config.quiet_native_libraries(); import tensorflow; "
        "print('after', file=sys.stderr)",
        extra_path=tmp_path / "fake",
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines() == [REAL_ERROR, "after"], quiet.stderr
    loud = run_python(
        "-c", "import tensorflow", extra_path=tmp_path / "fake"
    )  # without the entry points' setting: all of it
    assert loud.stderr.splitlines() == lines


def test_quiet_native_libraries_twice_installs_one_filter() -> None:
    out = run_python(
        "-c",
        "import sys; from cbir.core import config; config.quiet_native_libraries(); config.quiet_native_libraries(); "
        "print(sum(type(f).__name__ == '_QuietImportFinder' for f in sys.meta_path))",
    )
    assert out.stdout.strip() == "1", out.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_cli_command_that_loads_tensorflow_prints_no_start_up_lines(tmp_path: Path) -> None:
    """``python -m cbir extract`` (loads TensorFlow and runs the model) on a four-image collection."""
    from cbir.features.backbones import available_backbones

    if not available_backbones().get("efficientnet_lite0"):
        pytest.skip("efficientnet_lite0 ImageNet weights are not available offline")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for i in range(2):
            (tmp_path / "collection" / label).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "collection" / label / f"{i}.png")
    result = run_python(
        "-m", "cbir", "extract", "--collection", str(tmp_path / "collection"), "--backbone", "efficientnet_lite0"
    )
    assert result.returncode == 0, result.stderr
    assert "4 images" in result.stdout, result.stdout
    leaked = [line for line in result.stderr.splitlines() if any(word in line for word in NOISE_WORDS)]
    assert leaked == [], result.stderr
