"""Load test: N concurrent users of the app, each a headless Chromium (selenium) against ``streamlit run app.py``
on 127.0.0.1.

    .venv/bin/python benchmarks/load.py                          # 8 sessions, 5 queries each, at most 120 s
    .venv/bin/python benchmarks/load.py --sessions 3 --queries 3 --url http://127.0.0.1:8501   # a running server

Each session opens the Search page and, for each of its queries, switches the index (exact scan ↔ LSH) and
uploads a photo (scikit-image's sample photos, :mod:`cbir.data.samples`, and images of the collection, under names
unique to the session and query), waits for the ten results and reads the page's own "Query time" metric; then it
opens the Index tuning page and moves a slider. With ``--adds N`` the first N sessions also upload a drawing of
their own and add it to the collection from the Search page (unlabelled), and check that their next query finds it
first. It is bounded in count (``--queries``) and time (``--max-seconds``: a session stops starting queries after it).

Adds change the collection, so a server started here serves a temporary copy of the default collection and of its
feature store (hard links; :func:`benchmarks.growth.copy_workspace`), never the real ones; with ``--url`` (a server
started elsewhere) ``--adds`` must be 0 unless ``--allow-adds`` says that server's collection is a copy.

Reported: per session the queries done and the errors seen (any exception or ``st.error`` box on a page, and a
page that did not finish in time), the exceptions in the server log, p50/p95 of the query time, and the check of
the artifacts folder: no temp file left, every ``.joblib`` loads, nothing the app should not have written changed.
The server is started here (on a free loopback port, against ``$CBIR_ARTIFACTS``) unless ``--url`` is given.

The helpers (:func:`streamlit_server`, :func:`chromium`, :func:`wait_for`, the page readers) are shared with the
browser tests (``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one

CHROMIUM = Path(os.environ.get("CBIR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CBIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
LOOPBACK = "127.0.0.1"
SERVER_START_S = 90
PAGE_S = 120  # the first query of a server loads the model
# What marks a problem on a page: an exception box, an st.error box.
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')
# Lines of the server log that mean an exception reached Streamlit (it logs uncaught script errors).
SERVER_ERROR_PATTERN = re.compile(r"Traceback|Exception|Error:|Uncaught", re.IGNORECASE)
# Script states of the app root (``data-test-script-state``) in which a rerun is under way or about to start.
RUNNING_STATES = frozenset({"initial", "running", "rerunRequested"})


def free_port() -> int:
    """A TCP port free on the loopback address now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll ``condition`` until it is truthy; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Server:
    """A running server process (``streamlit run app.py``, ``python -m cbir serve``): its base URL, its process and
    the file its output goes to."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextlib.contextmanager
def running_server(
    command: list[str], port: int, health: str, log_path: Path, env: dict[str, str], start_s: float, name: str
) -> Iterator[Server]:
    """``command`` (a server on ``127.0.0.1:port``) with ``env`` as its environment, its output in ``log_path``,
    until the block ends (then stopped, killed if it does not stop); ready once ``health`` (a path) answers 200
    within ``start_s`` seconds; a :class:`RuntimeError` with its log when it exits first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = Server(f"http://{LOOPBACK}:{port}", log_path, process)

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {server.log()}")
            try:
                with urllib.request.urlopen(f"{server.url}{health}", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        try:
            wait_for(healthy, start_s, f"the {name} server")
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@contextlib.contextmanager
def streamlit_server(log_path: Path, env: dict[str, str] | None = None, port: int | None = None) -> Iterator[Server]:
    """``streamlit run app.py`` on ``127.0.0.1:port`` (a free port by default) with ``env`` added to the
    environment, until the block ends (then it is stopped, killed if it does not stop)."""
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"), "--server.port", str(port)]
    command += ["--server.address", LOOPBACK, "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    command += ["--server.fileWatcherType", "none"]
    with running_server(
        command, port, "/_stcore/health", log_path, {**os.environ, **(env or {})}, SERVER_START_S, "streamlit"
    ) as server:
        yield server


def chromium_available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def chromium(profile: Path, window: tuple[int, int] = (1400, 2000)) -> Any:
    """A headless Chromium (selenium WebDriver) with its own profile folder ``profile``; ``quit()`` it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
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
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_S)
    return driver


# ----------------------------------------------------------------------------------------------------------
# Reading and driving a page
# ----------------------------------------------------------------------------------------------------------


def elements(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def caption_texts(driver: Any) -> list[str]:
    """The text of every caption on the page (those redrawn while being read are skipped)."""
    from selenium.common.exceptions import StaleElementReferenceException

    texts = []
    for element in elements(driver, '[data-testid="stCaptionContainer"]'):
        with contextlib.suppress(StaleElementReferenceException):
            texts.append(str(element.text))
    return texts


def body_text(driver: Any) -> str:
    from selenium.common.exceptions import WebDriverException

    try:
        return str(driver.find_element("tag name", "body").text)
    except WebDriverException:  # the page is being redrawn
        return ""


def page_errors(driver: Any) -> list[str]:
    """The text of every exception and ``st.error`` box on the page."""
    from selenium.common.exceptions import StaleElementReferenceException

    found = []
    for selector in ERROR_SELECTORS:
        for element in elements(driver, selector):
            with contextlib.suppress(StaleElementReferenceException):
                found.append(str(element.text).strip() or selector)
    return found


def page_notes(driver: Any) -> list[str]:
    """The text of every alert box (info, warning, success, error) on the page."""
    from selenium.common.exceptions import StaleElementReferenceException

    found = []
    for element in elements(driver, '[data-testid="stAlert"]'):
        with contextlib.suppress(StaleElementReferenceException):
            found.append(str(element.text).strip())
    return found


def app_running(driver: Any) -> bool:
    """Whether the script is (about to be) running for this session: the app root's ``data-test-script-state``
    (Streamlit's own test hook), or its "Running…" icon."""
    from selenium.common.exceptions import WebDriverException

    try:
        roots = elements(driver, '[data-testid="stApp"]')
        state = str(roots[0].get_attribute("data-test-script-state")) if roots else "initial"
    except WebDriverException:  # redrawn under us: ask again
        return True
    return state in RUNNING_STATES or bool(elements(driver, '[data-testid="stStatusWidgetRunningIcon"]'))


def wait_until_idle(driver: Any, timeout: float, what: str) -> None:
    """Wait until the app is not running, twice in a row half a second apart (a rerun may start just after)."""
    calm = [0]

    def idle() -> bool:
        calm[0] = 0 if app_running(driver) else calm[0] + 1
        return calm[0] >= 2

    wait_for(idle, timeout, what)


def open_page(driver: Any, url: str, ready_selector: str, timeout: float = PAGE_S) -> None:
    """Load ``url`` and wait for an element matching ``ready_selector``."""
    driver.get(url)
    wait_for(lambda: elements(driver, ready_selector), timeout, f"{ready_selector} on {url}")


def upload(driver: Any, path: Path) -> None:
    """Give ``path`` to the page's file uploader."""
    elements(driver, "input[type=file]")[0].send_keys(str(path))


def choose_radio(driver: Any, option: str, timeout: float = PAGE_S) -> bool:
    """Click the radio option labelled ``option``; whether it was not already chosen. The page may still be
    drawing its widgets (a loaded browser renders the uploader before the radio): wait up to ``timeout`` s for it."""
    from selenium.common.exceptions import StaleElementReferenceException

    def find() -> Any:
        try:
            labels = elements(driver, '[data-testid="stRadio"] label')
            return next((label for label in labels if str(label.text).strip() == option), None)
        except StaleElementReferenceException:  # redrawn while being read: look again
            return None

    try:
        wait_for(find, timeout, f"radio option {option!r}")
    except TimeoutError as exc:
        raise LookupError(f"no radio option {option!r}") from exc
    label = find()
    chosen = label.find_elements("css selector", "input")
    if chosen and chosen[0].is_selected():
        return False
    label.click()
    return True


def result_images(driver: Any) -> int:
    return len(elements(driver, '[data-testid="stImage"] img'))


def query_time_ms(driver: Any) -> float | None:
    """The Search page's "Query time" metric, in milliseconds (it reads "18.7 ms" or "2.30 s")."""
    from cbir.app.formats import parse_duration

    seconds = parse_duration(metric_text(driver, "Query time") or "")
    return None if seconds is None else seconds * 1e3


SLIDER_INPUT = '[data-testid="stSlider"] input[type="range"]'  # React Aria's visually hidden range input


def slider_values(driver: Any) -> list[str]:
    """The values of the page's sliders, as shown."""
    return [str(e.get_attribute("aria-valuetext")) for e in elements(driver, SLIDER_INPUT)]


def move_first_slider(driver: Any, steps: int = 1) -> None:
    """Focus the page's first slider and press the right arrow ``steps`` times (left when negative), as a keyboard
    user does (the range input itself is visually hidden, so it is focused by script)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("arguments[0].focus();", elements(driver, SLIDER_INPUT)[0])
    key = Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT
    ActionChains(driver).send_keys(*([key] * abs(steps))).perform()


def unique_drawing(path: Path, seed: int) -> Path:
    """A drawing no collection holds (random coloured strokes on white, seeded): an image a session can add."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed + 1000)
    image = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        points = [tuple(int(v) for v in rng.integers(10, 310, 2)) for _ in range(4)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=int(rng.integers(3, 12)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def click_text(driver: Any, selector: str, text: str, timeout: float = PAGE_S) -> None:
    """Click the first element matching ``selector`` whose text contains ``text`` (waiting for it to be drawn)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def find() -> Any:
        try:
            return next((e for e in elements(driver, selector) if text in str(e.text)), None)
        except StaleElementReferenceException:
            return None

    wait_for(find, timeout, f"{selector} {text!r}")
    find().click()


def choose_option(driver: Any, label: str, option: str) -> None:
    """In the selectbox labelled ``label``, take the first option containing ``option`` (Streamlit's selectbox is a
    combo box: type to filter its list, then take the option)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys

    def combo() -> Any:
        boxes = [e for e in elements(driver, '[data-testid="stSelectbox"]') if str(e.text).startswith(label)]
        inputs = boxes[0].find_elements("css selector", 'input[role="combobox"]') if boxes else []
        return inputs[0] if inputs else None

    def chosen() -> bool:
        boxes = [e for e in elements(driver, '[data-testid="stSelectbox"]') if str(e.text).startswith(label)]
        if not boxes or app_running(driver):
            return False
        inputs = boxes[0].find_elements("css selector", 'input[role="combobox"]')
        shown = str(boxes[0].get_attribute("textContent")) + (str(inputs[0].get_attribute("value")) if inputs else "")
        return option in shown and not elements(driver, '[role="option"]')  # chosen, its list closed

    for _ in range(3):  # a busy page can redraw the box under the typing: try again until it shows the option
        wait_for(combo, PAGE_S, f"the selectbox {label!r}")
        wait_until_idle(driver, PAGE_S, f"the page before choosing in {label!r}")
        with contextlib.suppress(StaleElementReferenceException):
            combo().click()
            combo().send_keys(option)
            try:
                click_text(driver, '[role="option"]', option, timeout=10)
            except TimeoutError:  # the list did not open: let the keyboard choose the filtered option
                combo().send_keys(Keys.ARROW_DOWN, Keys.ENTER)
        with contextlib.suppress(TimeoutError):
            wait_for(chosen, 15, f"{option!r} in {label!r}")
            return
        if elements(driver, '[role="option"]'):  # a list left open: close it before trying again
            with contextlib.suppress(StaleElementReferenceException):
                combo().send_keys(Keys.ESCAPE)
    boxes = [e for e in elements(driver, '[data-testid="stSelectbox"]') if str(e.text).startswith(label)]
    shown = [str(box.get_attribute("innerHTML"))[:2000] for box in boxes]
    raise TimeoutError(f"could not choose {option!r} in {label!r}: it shows {shown}")


def click_button(driver: Any, text: str) -> None:
    """Click the button labelled ``text`` once it is enabled and the page is idle."""

    def enabled() -> bool:  # a choice reruns the page, which enables the button
        found = [e for e in elements(driver, '[data-testid="stButton"] button') if str(e.text).strip() == text]
        return bool(found) and found[0].is_enabled() and not app_running(driver)

    wait_for(enabled, PAGE_S, f"the button {text!r} to be enabled")
    click_text(driver, '[data-testid="stButton"] button', text)


def add_to_collection(driver: Any, option: str = "Unlabelled", anyway: bool = False) -> str:
    """On the Search page, after a query from an upload: choose the class ``option`` (the first option containing
    that text) under "Add … to the collection", tick "add it even if it copies" when ``anyway``, click the button and
    wait; the success or error text (shown in the status line, outside any expander)."""
    choose_option(driver, "Class", option)
    if anyway:
        click_text(driver, '[data-testid="stCheckbox"] label', "even if it copies")
        wait_until_idle(driver, PAGE_S, "the tick")
    click_button(driver, "Add to the collection")

    def done() -> bool:
        return "every session finds it" in body_text(driver) or bool(page_errors(driver))

    wait_for(done, PAGE_S, "the image to be added")
    wait_until_idle(driver, PAGE_S, "the search after adding")
    errors = page_errors(driver)
    return errors[0] if errors else "added"


TRUNCATED_JS = """
return Array.from(document.querySelectorAll('[data-testid="stMetric"]')).filter(metric =>
    Array.from(metric.querySelectorAll('[data-testid="stMetricValue"] *, [data-testid="stMetricLabel"] *,'
        + ' [data-testid="stMetricValue"], [data-testid="stMetricLabel"]'))
        .some(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
).map(metric => metric.innerText);
"""


def truncated_metrics(driver: Any) -> list[str]:
    """The full text of every ``st.metric`` whose label or value the browser cuts (Streamlit ends a value too wide
    for its box with an ellipsis: the element's content is then wider than the element)."""
    return [" | ".join(str(text).split()) for text in driver.execute_script(TRUNCATED_JS)]


def metric_text(driver: Any, label: str) -> str | None:
    """The value of the ``st.metric`` labelled ``label`` (the full text, cut or not)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for metric in elements(driver, '[data-testid="stMetric"]'):
        with contextlib.suppress(StaleElementReferenceException, IndexError):
            name = metric.find_elements("css selector", '[data-testid="stMetricLabel"]')[0]
            if str(name.get_attribute("textContent")).strip() == label:
                value = metric.find_elements("css selector", '[data-testid="stMetricValue"]')[0]
                return str(value.get_attribute("textContent")).strip()
    return None


# ----------------------------------------------------------------------------------------------------------
# One session, many sessions
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SessionReport:
    """What one simulated user did and saw."""

    session: int
    queries: int = 0
    slider_moves: int = 0
    adds: int = 0
    query_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def query_images(folder: Path, collection_images: Sequence[Path], session: int, n: int) -> list[Path]:
    """``n`` query files for one session under ``folder``, names unique to the session and query: sample photos
    (scikit-image) alternating with collection images."""
    from cbir.data.samples import SAMPLE_PHOTOS, sample_photo

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        if i % 2 == 0 or not collection_images:
            name = SAMPLE_PHOTOS[(session + i // 2) % len(SAMPLE_PHOTOS)]
            path = folder / f"s{session}-q{i}-{name}.jpg"
            sample_photo(name).save(path, quality=90)
        else:
            source = collection_images[(session * n + i) % len(collection_images)]
            path = folder / f"s{session}-q{i}-{source.name}"
            shutil.copyfile(source, path)
        files.append(path)
    return files


def run_session(
    url: str,
    session: int,
    images: Sequence[Path],
    profile: Path,
    deadline: float,
    screenshots: Path | None = None,
    tuning: bool = True,
    add: Path | None = None,
) -> SessionReport:
    """One user: on the Search page, per image switch the index and upload it, wait for the results; then (given
    ``add``, an image no collection holds) upload ``add``, add it to the collection and check it comes first; then
    (with ``tuning``) move a slider on the Index tuning page, right and back. Errors are recorded, not raised; no query
    starts after ``deadline`` (the add and tuning steps still run, each page bounded by :data:`PAGE_S`)."""
    report = SessionReport(session)
    driver = None
    try:
        driver = chromium(profile)
        open_page(driver, f"{url}/Search", "input[type=file]")
        _queries(driver, report, images, deadline, screenshots)
        if add is not None:
            _add_step(driver, report, add, screenshots)
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshots / f"load-session{session}-search.png"))
        if tuning:
            _tuning_step(driver, report, url)
    except Exception as exc:  # a session's failure is a finding to report, not a crash
        report.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return report


def _queries(
    driver: Any, report: SessionReport, images: Sequence[Path], deadline: float, screenshots: Path | None
) -> None:
    """Per image: switch the index (exact scan, LSH in turn), upload it, wait for its results and read its time."""
    session = report.session
    for i, image in enumerate(images):
        if time.monotonic() > deadline:
            break
        kind = "LSH" if i % 2 else "Exact scan"
        started = time.monotonic()
        marker = "LSH g=" if kind == "LSH" else "exact scan ("
        if choose_radio(driver, kind):  # reruns the previous query (if any) on the other index
            # wait for that answer, not just an idle moment: a loaded browser may not have sent the rerun yet,
            # and a file given to the uploader while the page reruns can be dropped (seen with 8 sessions)
            if report.queries:
                wait_for(lambda marker=marker: marker in body_text(driver), PAGE_S, f"the switch to {kind}")
            wait_until_idle(driver, PAGE_S, f"the switch to {kind}")
        upload(driver, image)

        def answered(image: Path = image, marker: str = marker) -> bool:
            text = body_text(driver)
            return (
                f"Query: {image.name}" in text
                and marker in text
                and "Most similar images" in text
                and not app_running(driver)
            ) or bool(page_errors(driver))

        try:
            wait_for(answered, PAGE_S, f"the results of {image.name}")
        except TimeoutError as exc:
            state = "running" if app_running(driver) else "idle"
            report.errors.append(
                f"query {i} ({image.name}): {exc}; the app is {state}, the page shows: "
                f"{' | '.join(body_text(driver).splitlines()[8:30])}"
            )
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(screenshots / f"load-session{session}-timeout{i}.png"))
            continue
        report.wall_ms.append((time.monotonic() - started) * 1000)
        if errors := page_errors(driver):
            report.errors.extend(f"query {i} ({image.name}): {e}" for e in errors)
            continue
        readings: list[float] = []  # the metric may be mid-redraw: read it again for a moment

        def read_query_time(readings: list[float] = readings) -> bool:
            ms = query_time_ms(driver)
            return ms is not None and not readings.append(ms)

        try:
            wait_for(read_query_time, 10, f"the query time of {image.name}", interval=0.2)
            report.query_ms.append(readings[0])
        except TimeoutError as exc:
            report.errors.append(f"query {i} ({image.name}): {exc}")
        if kind == "Exact scan" and result_images(driver) < 11:
            report.errors.append(f"query {i} ({image.name}): {result_images(driver) - 1} results, not 10")
        report.queries += 1


def _add_step(driver: Any, report: SessionReport, add: Path, screenshots: Path | None) -> None:
    """Upload ``add``, add it to the collection and check it is among its own results."""
    session = report.session
    choose_radio(driver, "Exact scan")
    wait_until_idle(driver, PAGE_S, "the switch to the exact scan")
    upload(driver, add)
    wait_for(lambda: f"Query: {add.name}" in body_text(driver) and not app_running(driver), PAGE_S, add.name)
    try:
        outcome = add_to_collection(driver)
    except (TimeoutError, LookupError) as exc:
        outcome = str(exc)
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshots / f"load-session{session}-add.png"))
    if outcome != "added":
        report.errors.append(f"add ({add.name}): {outcome}")
    else:
        report.adds += 1
        # the page searched again with the same upload: the added image is its own nearest neighbour
        try:  # the captions are redrawn as the page searches again: read them until the image shows
            wait_for(lambda: any(add.stem in text for text in caption_texts(driver)), 10, add.name)
        except TimeoutError:
            report.errors.append(f"add ({add.name}): not among the results after adding it")


def _tuning_step(driver: Any, report: SessionReport, url: str) -> None:
    """Move the first slider of the Index tuning page right and back, waiting for the page each time."""
    open_page(driver, f"{url}/Index_tuning", SLIDER_INPUT)
    wait_until_idle(driver, PAGE_S, "the Index tuning page")
    for steps in (1, -1):
        before = slider_values(driver)[0]
        move_first_slider(driver, steps)
        wait_for(lambda before=before: slider_values(driver)[0] != before, 10, "the slider to move")
        wait_until_idle(driver, PAGE_S, "the Index tuning page after a slider move")
        report.slider_moves += 1
        if errors := page_errors(driver):
            report.errors.extend(f"tuning: {e}" for e in errors)
            break


@dataclass
class LoadReport:
    """The outcome of :func:`run_load`."""

    sessions: list[SessionReport]
    server_errors: list[str]
    artifact_problems: list[str]
    seconds: float

    @property
    def queries(self) -> int:
        return sum(s.queries for s in self.sessions)

    @property
    def errors(self) -> list[str]:
        return [f"session {s.session}: {e}" for s in self.sessions for e in s.errors] + [
            f"server: {line}" for line in self.server_errors
        ]

    def percentile_ms(self, q: float, wall: bool = False) -> float:
        values = [v for s in self.sessions for v in (s.wall_ms if wall else s.query_ms)]
        return float(np.percentile(values, q)) if values else float("nan")

    def table(self) -> str:
        """A Markdown table: one row per session and a total row."""
        rows = ["| session | queries | adds | slider moves | errors | p50 query ms | p95 query ms | p50 wall ms |"]
        rows.append("|---|---|---|---|---|---|---|---|")
        for s in self.sessions:
            p50 = f"{np.percentile(s.query_ms, 50):.0f}" if s.query_ms else "–"
            p95 = f"{np.percentile(s.query_ms, 95):.0f}" if s.query_ms else "–"
            wall = f"{np.percentile(s.wall_ms, 50):.0f}" if s.wall_ms else "–"
            counts = f"{s.queries} | {s.adds} | {s.slider_moves} | {len(s.errors)}"
            rows.append(f"| {s.session} | {counts} | {p50} | {p95} | {wall} |")
        rows.append(
            f"| all {len(self.sessions)} | {self.queries} | {sum(s.adds for s in self.sessions)} | "
            f"{sum(s.slider_moves for s in self.sessions)} | "
            f"{len(self.errors)} | {self.percentile_ms(50):.0f} | {self.percentile_ms(95):.0f} | "
            f"{self.percentile_ms(50, wall=True):.0f} |"
        )
        return "\n".join(rows)


def artifact_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``root`` (symbolic links not followed)."""
    snapshot = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            with contextlib.suppress(OSError):
                stat = path.lstat()
                snapshot[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def check_artifacts(root: Path, before: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Problems of the artifacts folder: temp files left by an interrupted atomic write (``.NAME.*.tmp``), a
    ``.joblib`` that does not load, and (given ``before``, a snapshot) files that appeared or changed."""
    import joblib

    problems = []
    now = artifact_snapshot(root)
    for relpath in sorted(now):
        name = Path(relpath).name
        if name.endswith(".tmp") or (name.startswith(".") and ".tmp" in name):
            problems.append(f"temp file left: {relpath}")
        elif name.endswith(".joblib"):
            try:
                joblib.load(root / relpath)
            except Exception as exc:  # any failure to load is the finding
                problems.append(f"{relpath} does not load: {type(exc).__name__}: {exc}")
    if before is not None:
        problems.extend(f"written during the run: {p}" for p in sorted(now) if before.get(p) != now[p])
    return problems


def server_errors(log: str) -> list[str]:
    """The lines of the server log that report an exception."""
    return [line.strip() for line in log.splitlines() if SERVER_ERROR_PATTERN.search(line)]


def collection_images(limit: int = 64) -> list[Path]:
    """Up to ``limit`` images of the default collection (sorted, spread over it)."""
    from cbir.core import config
    from cbir.data.images import IMAGE_EXTENSIONS

    root = config.default_collection()
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if root.is_dir() else []
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def run_load(
    url: str,
    sessions: int = 8,
    queries: int = 5,
    max_seconds: float = 120.0,
    work: Path | None = None,
    screenshots: Path | None = None,
    stagger_s: float = 0.5,
    pictures: Sequence[Path] | None = None,
    warm_up: bool = True,
    adds: int = 0,
) -> list[SessionReport]:
    """Run ``sessions`` users at once against ``url`` (threads, one Chromium each); their reports in order.
    ``pictures``: the collection images queries are drawn from (default: :func:`collection_images`); ``warm_up``:
    one user goes through both pages first (not counted), so that the times are those of a running app; ``adds``:
    how many of the sessions add an image of their own to the collection (the server must serve a copy)."""
    work = Path(tempfile.mkdtemp(prefix="cbir-load-")) if work is None else work
    pictures = collection_images() if pictures is None else pictures
    deadline = time.monotonic() + max_seconds
    reports: list[SessionReport | None] = [None] * sessions

    def one(n: int) -> None:
        images = query_images(work / f"queries-{n}", pictures, n, queries)
        new = unique_drawing(work / f"queries-{n}" / f"s{n}-new-drawing.png", n) if n < adds else None
        reports[n] = run_session(url, n, images, work / f"profile-{n}", deadline, screenshots, add=new)

    if warm_up:  # the first query loads the model and the engine, the tuning page its background sweep
        started = time.monotonic()
        images = query_images(work / "queries-warm-up", pictures, sessions, 1)
        warm = run_session(url, -1, images, work / "profile-warm-up", time.monotonic() + PAGE_S)
        print(f"warm-up: {time.monotonic() - started:.0f} s, errors: {warm.errors or 'none'}", flush=True)
        warm_errors = [f"warm-up: {error}" for error in warm.errors]
        deadline += time.monotonic() - started
    else:
        warm_errors = []
    threads = []
    for n in range(sessions):
        thread = threading.Thread(target=one, args=(n,), name=f"load-session-{n}")
        thread.start()
        threads.append(thread)
        time.sleep(stagger_s)  # Chromium start-ups spread out a little, queries still overlap
    for thread in threads:
        # a session may finish its current page after the deadline: allow that, bounded
        thread.join(timeout=max(1.0, deadline - time.monotonic()) + 2 * PAGE_S)
    done = [r if r is not None else SessionReport(n, errors=["did not finish"]) for n, r in enumerate(reports)]
    if warm_errors:  # the warm-up's errors count, its times do not
        done[0].errors[:0] = warm_errors
    return done


def serve_a_copy(work: Path) -> tuple[dict[str, str], Path]:
    """``(server environment, feature store)`` of a temporary copy of the default collection and its newest complete
    feature store, for a run that adds images."""
    from benchmarks.growth import copy_workspace
    from cbir.core import config
    from cbir.features.workspace import resolve_feature_path

    store = resolve_feature_path()
    root, copy = copy_workspace(config.default_collection(), store, work / "copy")
    return {"CBIR_COLLECTION": str(root), "CBIR_ARTIFACTS": str(work / "copy" / "artifacts")}, copy


def growth_check(store: Path, adds: int) -> str:
    """A line saying whether the copied store loads and holds the added images."""
    from cbir.features.sources import load_features
    from cbir.features.store import read_manifest

    manifest = read_manifest(store)
    rows = len(load_features(store).catalog)
    return f"feature store copy: generation {manifest.get('generation')}, {rows:,} rows, {adds} images added, loads"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent users (default 8)")
    parser.add_argument("--queries", type=int, default=5, help="uploads per user (default 5)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="no query starts after this (default 120)")
    parser.add_argument("--url", help="a running app (default: start one on a free loopback port)")
    parser.add_argument("--screenshots", type=Path, help="folder for one screenshot per session")
    parser.add_argument("--adds", type=int, default=2, help="sessions that add an image of their own (default 2)")
    parser.add_argument("--allow-adds", action="store_true", help="--url serves a copy: let --adds change it")
    args = parser.parse_args(argv)
    if args.url and args.adds and not args.allow_adds:
        parser.error("--adds changes the collection the server at --url serves: pass --adds 0, or --allow-adds")

    from cbir.core import config

    config.quiet_native_libraries()
    root = config.artifacts_dir()
    before = artifact_snapshot(root)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cbir-load-") as tmp:
        work = Path(tmp)
        if args.url:
            reports = run_load(
                args.url, args.sessions, args.queries, args.max_seconds, work, args.screenshots, adds=args.adds
            )
            log = ""
        else:
            env, store = serve_a_copy(work) if args.adds else ({}, None)
            with streamlit_server(work / "streamlit.log", env) as server:
                reports = run_load(
                    server.url, args.sessions, args.queries, args.max_seconds, work, args.screenshots, adds=args.adds
                )
                log = server.log()
            if store is not None:
                grown = growth_check(store, sum(r.adds for r in reports))
                print(grown)
    report = LoadReport(reports, server_errors(log), check_artifacts(root, before), time.monotonic() - started)
    print(f"{args.sessions} sessions × up to {args.queries} queries against {args.url or 'a new server'}, ")
    print(f"{report.seconds:.0f} s in all; artifacts: {root}\n")
    print(report.table())
    print()
    for error in report.errors:
        print(f"ERROR {error}")
    for problem in report.artifact_problems:
        print(f"ARTIFACT {problem}")
    if not report.errors and not report.artifact_problems:
        print("0 errors; artifacts intact (no temp file, every .joblib loads, nothing written).")
    return 1 if report.errors or report.artifact_problems else 0


if __name__ == "__main__":
    sys.exit(main())
