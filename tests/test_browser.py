"""End to end in a real browser: ``streamlit run app.py`` + headless Chromium (selenium); upload an image on the
Search page and see ten result images. The screenshot is left in the test's tmp dir."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require

from benchmarks.browser import PAGE_S, SHOWN_IMAGES, Server, wait_for

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
        return len(driver.find_elements(By.CSS_SELECTOR, SHOWN_IMAGES))

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


# each page by its URL (app.py's url_path), with its title
PAGE_TITLES = {
    "": "Content-based image retrieval",
    "Search": "Search by image",
    "Index_tuning": "Index tuning",
    "Model_comparison": "Model comparison",
}


@pytest.mark.parametrize("url_path", list(PAGE_TITLES))
def test_a_link_to_a_page_opens_it_on_a_fresh_server(server: Server, browser: Any, url_path: str) -> None:
    """A link to the page is the fresh server's first request (app.py has never run in it): the page opens at its
    URL with app.py's sidebar (the feature set, the navigation), not Streamlit's "Page not found"."""
    from benchmarks.browser import body_text, elements

    driver = browser
    url = f"{server.url}/{url_path}"
    driver.get(url)

    def title() -> str:
        return "".join(str(h.text) for h in elements(driver, '[data-testid="stMain"] h1')[:1])

    def sidebar() -> str:
        return "".join(str(bar.text) for bar in elements(driver, '[data-testid="stSidebar"]'))

    wait_for(lambda: title() == PAGE_TITLES[url_path], PAGE_S, f"the title {PAGE_TITLES[url_path]!r} at {url}")
    wait_for(lambda: "Feature set" in sidebar(), PAGE_S, "the sidebar's feature set")
    assert [name for name in ("Home", "Search", "Index tuning", "Model comparison") if name not in sidebar()] == []
    assert driver.current_url.rstrip("/") == url.rstrip("/")
    assert "Page not found" not in body_text(driver), body_text(driver)
    assert "Traceback" not in body_text(driver) and "Traceback" not in server.log(), server.log()


# ----------------------------------------------------------------------------------------------------------
# The journeys of a new user on the default collection (issue 23): every message seen, every number whole and true
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def default_copy_server(tmp_path: Path) -> Any:
    """A server over a copy of the default collection and its newest feature store (hard links: the test adds and
    removes images), with the real weights; the screenshots go to ``CBIR_SHOTS`` when set, else the tmp dir."""
    from builders import REAL_COLLECTION

    from benchmarks.browser import chromium_available, streamlit_server
    from benchmarks.growth import copy_workspace

    if not chromium_available():
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    require(REAL_COLLECTION.is_dir(), "no default collection (python -m cbir openclipart)")
    stores = sorted((REAL_COLLECTION.parents[1] / "features").glob("*/efficientnet_lite0-*imagenet*/meta.json"))
    require(bool(stores), "no EfficientNet-Lite0 features of the default collection (python -m cbir extract)")
    root, store = copy_workspace(REAL_COLLECTION, stores[0].parent, tmp_path / "copy")
    artifacts = tmp_path / "copy" / "artifacts"
    weights = REAL_COLLECTION.parents[1] / "weights"
    if weights.exists():
        (artifacts / "weights").symlink_to(weights.resolve(), target_is_directory=True)
    env = {"CBIR_COLLECTION": str(root), "CBIR_ARTIFACTS": str(artifacts)}
    with streamlit_server(tmp_path / "streamlit.log", env) as running:
        yield running, Path(env["CBIR_COLLECTION"]), store


def test_journeys_on_the_default_collection(default_copy_server: Any, browser: Any, tmp_path: Path) -> None:
    """Search (upload a copy: the refusal shows without a click; add anyway, remove with a confirmation, undo),
    Home, Index tuning (a metric switch, twice), Model comparison (cold): no metric cut, no visited above the
    searchable images, each step's time printed (not asserted: a shared machine's times are noisy)."""
    import os
    import re

    from benchmarks.browser import (
        PAGE_S,
        add_to_collection,
        body_text,
        choose_option,
        choose_radio,
        click_button,
        metric_text,
        open_page,
        page_errors,
        scroll_position,
        scroll_to_text,
        settled_seconds,
        truncated_metrics,
        upload,
        wait_until_idle,
        watch_page,
    )

    server, root, _store = default_copy_server
    driver = browser
    shots = Path(os.environ.get("CBIR_SHOTS", str(tmp_path)))
    shots.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    cut: dict[str, list[str]] = {}

    def step(name: str, action: Any, timeout: float = 600, load: bool = False) -> None:
        """Time ``action`` to the settled page (:func:`benchmarks.browser.settled_seconds`: the run and the browser's
        drawing, not the time spent making sure it ended); ``load``: the action opens a page (timed from its
        navigation), else from just before the action to the page settled after a run it started."""
        since = 0.0 if load else watch_page(driver)
        action()
        times[name] = settled_seconds(driver, since, timeout, name, rerun=not load)
        time.sleep(0.5)
        wait_until_idle(driver, timeout, name)
        print(f"{name}: {times[name]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        slug = re.sub(r"\W+", "-", name)
        driver.save_screenshot(str(shots / f"{len(times):02d}-{slug}.png"))
        if truncated_metrics(driver):
            cut[name] = truncated_metrics(driver)

    def visited_within_the_collection() -> None:
        shown = metric_text(driver, "Visited")
        assert shown is not None and shown.replace(",", "").isdigit(), shown
        visited = int(shown.replace(",", ""))
        searchable = int(re.search(r"over the ([\d,]+) searchable images", body_text(driver))[1].replace(",", ""))
        assert 0 < visited <= searchable, (visited, searchable)

    driver.set_window_size(1400, 2000)
    copy = sorted((root / "validation_set").rglob("*.jpg"))[0]  # an image the collection holds already
    relpath_of_copy = copy.relative_to(root).as_posix()

    step("Search: open", lambda: open_page(driver, f"{server.url}/Search", "input[type=file]"), PAGE_S, load=True)
    step("Search: upload (first query loads the model)", lambda: upload(driver, copy), PAGE_S)
    assert "Most similar images" in body_text(driver)
    visited_within_the_collection()
    refusal = add_to_collection(driver, "Unlabelled")
    assert refusal.startswith("Nothing was added") and "duplicate" in refusal, refusal
    assert "--allow" not in body_text(driver)
    shown = [e for e in driver.find_elements("css selector", '[data-testid="stAlertContentError"]') if e.is_displayed()]
    assert shown, "the refusal is not visible without a click"
    driver.save_screenshot(str(shots / "search-refused.png"))
    step("Search: add anyway", lambda: add_to_collection(driver, "Unlabelled", anyway=True))
    added = re.search(r"Added (\S+) · (\S+) \(", body_text(driver))
    assert added, body_text(driver)
    added_relpath = f"{added[2]}/{added[1]}"
    assert (root / added_relpath).is_file()
    visited_within_the_collection()

    confirmation = f"Remove {added[1]} · {added[2]} from every feature set"
    choose_option(driver, "Image", f"{added[1]} · {added[2]}")  # the added copy, not the image it copies
    wait_until_idle(driver, PAGE_S, "the choice")
    click_button(driver, "Remove…")
    wait_until_idle(driver, PAGE_S, "the confirmation")
    assert confirmation in body_text(driver)
    driver.save_screenshot(str(shots / "search-confirm.png"))
    step("Search: remove (confirmed)", lambda: click_button(driver, "Yes, remove it"))
    assert "Removed" in body_text(driver) and not (root / added_relpath).exists()
    visited_within_the_collection()  # the removed row is a tombstone in the scan: not counted
    step("Search: undo", lambda: click_button(driver, "Undo"))
    assert "Restored" in body_text(driver) and (root / added_relpath).is_file()
    visited_within_the_collection()
    assert (root / relpath_of_copy).is_file()

    step("Home", lambda: driver.get(f"{server.url}/"), PAGE_S, load=True)
    assert "EfficientNet-Lite0" in body_text(driver)
    for width in (1024, 1600):  # labels and numbers fit from a small laptop to a wide screen
        driver.set_window_size(width, 2000)
        time.sleep(1)
        assert truncated_metrics(driver) == [], (width, truncated_metrics(driver))
    driver.set_window_size(1400, 2000)

    step("Index tuning: cold", lambda: driver.get(f"{server.url}/Index_tuning"), load=True)
    step("Index tuning: metric to cosine", lambda: choose_option(driver, "Metric", "Cosine"))
    step("Index tuning: metric back to euclidean", lambda: choose_option(driver, "Metric", "Euclidean"))
    step("Index tuning: metric to cosine again", lambda: choose_option(driver, "Metric", "Cosine"))
    step("Model comparison: cold", lambda: driver.get(f"{server.url}/Model_comparison"), load=True)
    assert page_errors(driver) == [], page_errors(driver)
    step("Model comparison: metric to cosine", lambda: choose_option(driver, "Metric", "Cosine"))
    # the chart chosen and the per-class chart's radio rerun the charts only (a fragment): the page stays where the
    # reader scrolled it
    driver.set_window_size(1400, 900)  # a laptop's height: the radio is reached by scrolling
    step("Model comparison: per-class chart", lambda: choose_radio(driver, "Per-class mAP"))
    scroll_to_text(driver, '[data-testid="stRadio"]', "without")
    time.sleep(1)
    scrolled = scroll_position(driver)
    step("Model comparison: per-class without distractors", lambda: choose_radio(driver, "without"))
    time.sleep(1)
    print(f"scroll position before/after the per-class radio: {scrolled:.0f} / {scroll_position(driver):.0f} px")
    assert scrolled > 300 and abs(scroll_position(driver) - scrolled) < 50, (scrolled, scroll_position(driver))
    driver.set_window_size(1400, 2000)
    step("Search: open again", lambda: driver.get(f"{server.url}/Search"), PAGE_S, load=True)
    step("Search: Fastest at a recall", lambda: choose_radio(driver, "Fastest at a recall"))
    step("Search: Fastest at a recall, cosine", lambda: choose_option(driver, "Metric", "Cosine"))
    assert "validation queries" in body_text(driver)
    assert cut == {}, cut
    print({name: round(seconds, 1) for name, seconds in times.items()})
