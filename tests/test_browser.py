"""End to end in a real browser: ``streamlit run app.py`` + headless Chromium (selenium); upload an image on the
Search page and see ten result images. The screenshot is left in the test's tmp dir."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load import PAGE_S, Server, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]


def test_upload_on_the_search_page_shows_ten_results(
    server: Server, browser: Any, tmp_path: Path, openclipart_small: Path
) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{server.url}/Search")
    query = sorted((openclipart_small / "validation_set").rglob("*.jpg"))[0]

    def upload_field() -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, "input[type=file]"))

    wait_for(upload_field, PAGE_S, "the upload field")
    driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(query))

    def result_images() -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img'))

    shot = tmp_path / "search.png"
    try:
        wait_for(lambda: result_images() >= 11, PAGE_S, "the query image and ten results")
        time.sleep(1)  # let the last tiles paint
    finally:  # a screenshot either way: the evidence when it fails
        driver.set_window_size(1400, 2200)
        driver.save_screenshot(str(shot))
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "Most similar images" in text and "#10" in text and "#11" not in text, text
    assert "Feature set" in text, text  # opened through app.py's navigation (its sidebar), even by direct URL
    assert result_images() == 11, text
    assert "cannot be used" not in text and "Traceback" not in text, text
    assert shot.stat().st_size > 10_000
