"""The command line's error contract: a user-facing error (CbirError) is one line on stderr with exit code 2, a bug
raises with its traceback; and importing cbir leaves the environment alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cbir.cli import main as cli
from cbir.core import config
from cbir.core.errors import CbirError, ConfigError


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", "--features", str(tmp_path / "missing.joblib")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing.joblib" in err
    assert "Traceback" not in err


def test_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise ValueError("a bug, not the user's fault")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["info"])


def test_user_caused_argument_errors_are_cbir_errors() -> None:
    from cbir.evaluation.sweep import recommend
    from cbir.indexes.registry import IndexConfig

    assert issubclass(ConfigError, CbirError) and issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="metric"):
        IndexConfig(metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no configuration visits"):
        recommend(pd.DataFrame({"mean_visited": [10.0], "map": [0.5]}), budget=1)


def test_import_sets_no_environment_variable() -> None:
    names = ("OPENBLAS_THREAD_TIMEOUT", "TF_CPP_MIN_LOG_LEVEL", "OMP_WAIT_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    code = (
        "import os, cbir, cbir.evaluation.evaluate, cbir.service.search, cbir.features.workspace; "
        f"print(*(os.environ.get(name) for name in {names!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "None", "None"]


def test_entry_points_quiet_the_native_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # an explicit choice wins
    config.quiet_native_libraries()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_missing_open_clip_art_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    monkeypatch.setenv("CBIR_OPENCLIPART_DIR", str(tmp_path / "not-installed"))
    assert cli.main(["openclipart", "--out", str(tmp_path / "out")]) == 2
    assert "apt-get install openclipart-png" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["evaluate", "--index", "lsh", "-g", "0"], "-g/--n-tables"),
        (["evaluate", "-H", "-2"], "-H/--n-projections"),
        (["evaluate", "-w", "0"], "-w/--bucket-width"),
        (["evaluate", "--probes", "-1"], "--probes"),
        (["evaluate", "--k", "0"], "--k"),
        (["evaluate", "--seed", "x"], "--seed"),
        (["evaluate", "--metric", "manhattan"], "--metric"),
        (["sweep", "--g", "2,0"], "--g"),
        (["sweep", "--w", "1,nan"], "--w"),
        (["sweep", "--budget", "-5"], "--budget"),
        (["extract", "--batch-size", "0"], "--batch-size"),
        (["extract", "--cpus-per-actor", "0"], "--cpus-per-actor"),
        (["openclipart", "--workers", "0"], "--workers"),
        (["analyze", "--max-samples", "0"], "--max-samples"),
        (["report", "--k", "-1"], "--k"),
        (["finetune", "--max-epochs", "0"], "--max-epochs"),
        (["index", "build", "--kind", "lsh", "-w", "-1"], "-w/--bucket-width"),
        (["index", "build", "--kind", "annoy"], "--kind"),
    ],
)
def test_bad_parameters_end_in_one_line_naming_them(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {option}:" in err, err
    assert "Traceback" not in err and "usage:" not in err


def test_the_issue_command_prints_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cbir", "evaluate", "--index", "lsh", "-g", "0"],
        capture_output=True,
        text=True,
        cwd=config.PROJECT_ROOT,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "python -m cbir evaluate: error: argument -g/--n-tables: must be >= 1, got 0\n"


def test_app_warms_first_then_runs_streamlit_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.web import cli as streamlit_cli

    from cbir.cli.serve import APP_SCRIPT
    from cbir.service import search

    calls: list[object] = []
    report = search.WarmStart(configs=["exact scan"])
    report.done.set()
    monkeypatch.setattr(search, "server_warm_start", lambda: calls.append("warm") or report)
    monkeypatch.setattr(streamlit_cli, "main", lambda args, prog_name: calls.append(args))
    assert cli.main(["app", "--port", "8765", "--", "--server.headless", "true"]) == 0
    assert calls == ["warm", ["run", str(APP_SCRIPT), "--server.headless", "true", "--server.port", "8765"]]
    assert APP_SCRIPT.is_file()


def test_app_server_warms_before_any_session(tmp_path: Path) -> None:
    """A real `python -m cbir app`: Streamlit answers from the process that runs the warm start, which began with the
    server, no browser session having opened (here it has nothing to warm and its line says so)."""
    from benchmarks.browser import LOOPBACK, free_port, running_server, wait_for

    port = free_port()
    env = {**os.environ, "CBIR_COLLECTION": str(tmp_path / "none"), "PYTHONPATH": str(config.PROJECT_ROOT)}
    command = [sys.executable, "-m", "cbir", "app", "--port", str(port), "--host", LOOPBACK, "--"]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with running_server(command, port, "/_stcore/health", tmp_path / "app.log", env, 180, "cbir app") as server:
        wait_for(lambda: "cbir: warm start" in server.log(), 900, "the warm start's line")
        assert "cbir: warm start stopped" in server.log() and "no complete feature set" in server.log()
        assert server.alive()


def test_extract_s_precompute_keeps_the_comparison_and_survives_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After extracting the default collection, ``extract`` keeps the comparison page's first view on disk and says
    so; when that cannot be computed, the extraction still succeeds and the reason is printed."""
    from builders import install_feature_set, save_feature_set, synthetic_feature_set

    from cbir.evaluation import comparison

    collection = tmp_path / "collection"
    collection.mkdir()
    monkeypatch.setenv("CBIR_COLLECTION", str(collection))
    install_feature_set(Path(save_feature_set(synthetic_feature_set(), tmp_path / "a.joblib")), collection)
    cli.keep_comparison()
    assert "comparison page: its first view kept on disk" in capsys.readouterr().out
    assert comparison.kept_comparison(comparison.default_feature_sets(), references=True) is not None

    def broken() -> None:
        raise ConfigError('no rows with role "query"')

    monkeypatch.setattr(comparison, "keep_default_comparison", broken)
    cli.keep_comparison()
    assert 'comparison page: not computed ahead (no rows with role "query")' in capsys.readouterr().out
