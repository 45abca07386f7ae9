"""End to end in a real browser: ``streamlit run app.py`` + headless Chromium (selenium); upload an image on the
Search page and see ten result images. The screenshot is left in the test's tmp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import install_feature_set, small_feature_path

from cbir import config

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("CBIR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CBIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
SERVER_START_S = 90
PAGE_S = 120  # the first query loads the model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def server(tmp_path: Path, openclipart_small: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``streamlit run app.py`` on a free port against the small collection; always stopped afterwards."""
    install_feature_set(small_feature_path(openclipart_small), openclipart_small)
    port = free_port()
    env = {**os.environ, "CBIR_COLLECTION": str(openclipart_small), "CBIR_ARTIFACTS": str(config.artifacts_dir())}
    log = (tmp_path / "streamlit.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(config.PROJECT_ROOT / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=config.PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"streamlit exited with {process.returncode}: {(tmp_path / 'streamlit.log').read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, SERVER_START_S, "the streamlit server")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,2000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_upload_on_the_search_page_shows_ten_results(
    server: str, browser: object, tmp_path: Path, openclipart_small: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{server}/Search")  # type: ignore[attr-defined]
    query = sorted((openclipart_small / "validation_set").rglob("*.jpg"))[0]

    def upload_field() -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, "input[type=file]"))  # type: ignore[attr-defined]

    wait_for(upload_field, PAGE_S, "the upload field")
    driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(query))  # type: ignore[attr-defined]

    def result_images() -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img'))  # type: ignore[attr-defined]

    shot = tmp_path / "search.png"
    try:
        wait_for(lambda: result_images() >= 11, PAGE_S, "the query image and ten results")
        time.sleep(1)  # let the last tiles paint
    finally:  # a screenshot either way: the evidence when it fails
        driver.set_window_size(1400, 2200)  # type: ignore[attr-defined]
        driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
    text = driver.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
    assert "Most similar images" in text and "#10" in text and "#11" not in text, text
    assert "Feature set" in text, text  # opened through app.py's navigation (its sidebar), even by direct URL
    assert result_images() == 11, text
    assert "cannot be used" not in text and "Traceback" not in text, text
    assert shot.stat().st_size > 10_000
