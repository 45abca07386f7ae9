"""The app under a browser, shared by the benchmarks that drive it and by the browser tests: a server on a free
loopback port (:func:`running_server`, :func:`streamlit_server`), its logged exceptions (:func:`server_errors`), a
headless Chromium (:func:`chromium`), and the readers and drivers of a Streamlit page (:func:`wait_for`,
:func:`open_page`, :func:`upload`, :func:`choose_radio`, :func:`metric_text`, ...). Here, not in ``tests/``: imports go
from the tests to the benchmarks, never back (a script run as ``python benchmarks/x.py`` does not reach into the test
tree)."""

from __future__ import annotations

import contextlib
import html
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness import ROOT as PROJECT_ROOT  # first: this checkout's cbir, not an installed one

CHROMIUM = Path(os.environ.get("CBIR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CBIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
LOOPBACK = "127.0.0.1"
T = TypeVar("T")
SERVER_START_S = 90
PAGE_S = 120  # the first query of a server loads the model
# What marks a problem on a page: an exception box, an st.error box.
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')
# Lines of the server log that mean an exception reached Streamlit (it logs uncaught script errors).
SERVER_ERROR_PATTERN = re.compile(r"Traceback|Exception|Error:|Uncaught", re.IGNORECASE)
# The pictures a page shows: not the 1-px one of its hidden container (cbir.app.ui.PRELOAD_KEY)
SHOWN_IMAGES = '[data-testid="stImage"] img:not(.st-key-cbir-preload *)'
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


def server_errors(*logs: str) -> list[str]:
    """The lines of the server logs that report an exception."""
    return [line.strip() for log in logs for line in log.splitlines() if SERVER_ERROR_PATTERN.search(line)]


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


# --- Reading and driving a page ---------------------------------------------------------------------------


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


# Installed by watch_page: the time (performance.now(), ms) of the page's last DOM change and of each script state
SETTLE_JS = """
if (!window.cbirWatch) {
  const watch = {changed: performance.now(), states: []};
  new MutationObserver(() => { watch.changed = performance.now(); }).observe(
    document.documentElement, {subtree: true, childList: true, attributes: true, characterData: true});
  window.cbirWatch = watch;
}
const root = document.querySelector('[data-testid="stApp"]');
if (root && !root.cbirWatched) {
  root.cbirWatched = true;
  new MutationObserver(() => window.cbirWatch.states.push(
    [performance.now(), root.getAttribute('data-test-script-state')])).observe(
    root, {attributes: true, attributeFilter: ['data-test-script-state']});
}
return performance.now();
"""
SETTLED_QUIET_S = 0.3  # settled: no DOM change for this long, the script not running, nothing stale


def watch_page(driver: Any) -> float:
    """Start watching the page (:data:`SETTLE_JS`; again after a page load); returns the page's clock now (ms)."""
    return float(driver.execute_script(SETTLE_JS))


def settled_seconds(driver: Any, since: float, timeout: float, what: str, rerun: bool = True) -> float:
    """Seconds from ``since`` (page clock, ms: :func:`watch_page` before the action; 0 for a page load) to the
    page's last DOM change once settled: the script not running (with ``rerun``: after a run begun since), nothing
    stale, nothing changed for :data:`SETTLED_QUIET_S` — what a person waits for (polled every 50 ms)."""
    watch_page(driver)

    def settled() -> float | None:
        state = driver.execute_script("const w = window.cbirWatch; return [performance.now(), w.changed, w.states];")
        now, changed, states = state
        if rerun and not any(t >= since and s in RUNNING_STATES for t, s in states):
            return None
        if app_running(driver) or elements(driver, '[data-stale="true"]'):
            return None
        return (changed - since) / 1000 if now - changed >= SETTLED_QUIET_S * 1000 else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seconds = settled()
        if seconds is not None:
            return seconds
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} to settle")


def open_page(driver: Any, url: str, ready_selector: str, timeout: float = PAGE_S) -> None:
    """Load ``url`` and wait for an element matching ``ready_selector``."""
    driver.get(url)
    wait_for(lambda: elements(driver, ready_selector), timeout, f"{ready_selector} on {url}")


UPLOAD_SEEN_S = 15.0  # how long the uploader may take to list a file it was given before it is given again


def upload(driver: Any, path: Path, attempts: int = 3) -> None:
    """Give ``path`` to the page's file uploader until it lists the name (a file given while React redraws the
    uploader can be dropped; a person would give it again)."""
    from selenium.common.exceptions import WebDriverException

    def listed() -> bool:  # the markup, not the text: the uploader shortens a long name ("az-liza...ark_01.jpg");
        name = html.escape(path.name, quote=False)  # or the page's: the Search page takes the file out of it
        try:
            uploaders = [str(e.get_attribute("innerHTML")) for e in elements(driver, '[data-testid="stFileUploader"]')]
            return any(name in markup for markup in uploaders) or path.name in body_text(driver)
        except WebDriverException:  # redrawn under us: look again
            return False

    for _ in range(attempts):
        try:
            elements(driver, "input[type=file]")[0].send_keys(str(path))
        except (WebDriverException, IndexError):  # the input is being redrawn: give it again below
            time.sleep(0.5)
            continue
        with contextlib.suppress(TimeoutError):
            wait_for(listed, UPLOAD_SEEN_S, f"the uploader to list {path.name}", interval=0.2)
            return
    raise TimeoutError(f"the uploader never listed {path.name} after {attempts} attempts")


# Installed by :func:`watch_answer`: times (performance.now(), ms) of what the page shows after an upload, taken by the
# page itself (a MutationObserver, image load events: WebDriver polls cost tens of ms each); unlike SETTLE_JS it also
# waits for the answer's images to load.
ANSWER_JS = """
const [name, marker, images] = arguments;
const times = {start: performance.now()};
window.__cbirAnswer = times;
const check = () => {
  if (times.done !== undefined) return;
  const now = performance.now();
  const root = document.querySelector('[data-testid="stApp"]');
  const state = root ? root.getAttribute('data-test-script-state') : null;
  if (state === 'running' && times.running === undefined) times.running = now;
  const text = document.body.textContent;
  if (times.shown === undefined && text.includes('Query: ' + name) && text.includes(marker)) times.shown = now;
  if (times.shown !== undefined && times.finished === undefined && state === 'notRunning') times.finished = now;
  if (times.finished === undefined) return;
  const drawn = [...document.querySelectorAll('[data-testid="stMain"] img:not(.st-key-cbir-preload *)')];
  if (drawn.length >= images && drawn.every((img) => img.complete && img.naturalWidth > 0)) {
    times.done = now;
    observer.disconnect();
    document.removeEventListener('load', check, true);
  }
};
const observer = new MutationObserver(check);
observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
document.addEventListener('load', check, true);
document.addEventListener('change', (event) => {
  if (event.target.type === 'file' && times.picked === undefined) times.picked = performance.now(); }, true);
"""


def watch_answer(driver: Any, name: str, marker: str, images: int) -> Callable[[], dict[str, float] | None]:
    """Start timing, in the page, the answer to the upload of the file ``name`` that is about to be given; returns a
    reader of the times (ms after the start, ``None`` until done): ``picked`` (the file input has the file: what
    came before is WebDriver handing it over), ``running`` (the script started), ``shown`` (the page shows ``Query:
    name`` and ``marker``), ``finished`` (the script ended after that) and ``done`` (then all of at least ``images``
    images of the page loaded)."""
    driver.execute_script(ANSWER_JS, name, marker, images)

    def read() -> dict[str, float] | None:
        times = driver.execute_script("return window.__cbirAnswer")
        if not times or "done" not in times:
            return None
        return {key: float(value) - float(times["start"]) for key, value in times.items() if key != "start"}

    return read


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
    return len(elements(driver, SHOWN_IMAGES))


def query_time_ms(driver: Any) -> float | None:
    """The Search page's "Query time" metric, in milliseconds (it reads "18.7 ms" or "2.30 s")."""
    from cbir.app.formats import parse_duration

    seconds = parse_duration(metric_text(driver, "Query time") or "")
    return None if seconds is None else seconds * 1e3


SLIDER_INPUT = '[data-testid="stSlider"] input[type="range"]'  # React Aria's visually hidden range input


def redrawn_again(read: Callable[[], T], attempts: int = 5) -> T:
    """``read()``, looked up again when Streamlit redrew an element between finding it and using it (a fragment or a
    rerun replaces it: Selenium's StaleElementReferenceException)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(attempts):
        try:
            return read()
        except StaleElementReferenceException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def slider_values(driver: Any) -> list[str]:
    """The values of the page's sliders, as shown."""
    return redrawn_again(lambda: [str(e.get_attribute("aria-valuetext")) for e in elements(driver, SLIDER_INPUT)])


def move_first_slider(driver: Any, steps: int = 1) -> None:
    """Focus the page's first slider and press the right arrow ``steps`` times (left when negative), as a keyboard
    user does (the range input itself is visually hidden, so it is focused by script)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    redrawn_again(lambda: driver.execute_script("arguments[0].focus();", elements(driver, SLIDER_INPUT)[0]))
    key = Keys.ARROW_RIGHT if steps > 0 else Keys.ARROW_LEFT
    ActionChains(driver).send_keys(*([key] * abs(steps))).perform()


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


def choose_option(driver: Any, label: str, option: str, mark: Callable[[], object] | None = None) -> None:
    """In the selectbox labelled ``label``, take the first option containing ``option`` (Streamlit's selectbox is a
    combo box: type to filter its list, then take the option); ``mark()`` just before the option is taken (a timer's
    start)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys

    def combo() -> Any:
        boxes = [e for e in elements(driver, '[data-testid="stSelectbox"]') if str(e.text).startswith(label)]
        inputs = boxes[0].find_elements("css selector", 'input[role="combobox"]') if boxes else []
        return inputs[0] if inputs else None

    def chosen() -> bool:
        try:
            boxes = [e for e in elements(driver, '[data-testid="stSelectbox"]') if str(e.text).startswith(label)]
            if not boxes or app_running(driver):
                return False
            inputs = boxes[0].find_elements("css selector", 'input[role="combobox"]')
            shown = str(boxes[0].get_attribute("textContent")) + (
                str(inputs[0].get_attribute("value")) if inputs else ""
            )
        except StaleElementReferenceException:  # redrawn while being read (the run that the choice started)
            return False
        return option in shown and not elements(driver, '[role="option"]')  # chosen, its list closed

    for _ in range(3):  # a busy page can redraw the box under the typing: try again until it shows the option
        wait_for(combo, PAGE_S, f"the selectbox {label!r}")
        wait_until_idle(driver, PAGE_S, f"the page before choosing in {label!r}")
        with contextlib.suppress(StaleElementReferenceException):
            combo().click()
            combo().send_keys(option)
            if mark is not None:  # the first try is the person's click: a later one chooses what is chosen already
                mark()
                mark = None
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


def show_change_controls(driver: Any) -> None:
    """On the Search page, after an answer: turn on the toggle under "Change the collection" that shows the controls
    to add the query or remove a result (it stays on for the next answers), and wait for them."""
    if "Remove a result from the collection" not in body_text(driver):
        wait_until_idle(driver, PAGE_S, "the answer before the toggle")
        click_text(driver, '[data-testid="stCheckbox"] label', "Add or remove images")
    wait_for(lambda: "Remove a result from the collection" in body_text(driver), PAGE_S, "the controls")
    wait_until_idle(driver, PAGE_S, "the controls")


def add_to_collection(driver: Any, option: str = "Unlabelled", anyway: bool = False) -> str:
    """On the Search page, after a query from an upload: show the controls (:func:`show_change_controls`), choose the
    class ``option`` (the first option containing that text) under "Add … to the collection", tick "add it even if it
    copies" when ``anyway``, click the button and wait; the success or error text (shown in the status line, outside
    any expander)."""
    show_change_controls(driver)
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


SCROLL_JS = """
const boxes = [document.scrollingElement, ...document.querySelectorAll(
    '[data-testid="stMain"], [data-testid="stAppViewContainer"], section.main')];
return Math.max(window.scrollY, ...boxes.filter(box => box).map(box => box.scrollTop));
"""


def scroll_position(driver: Any) -> float:
    """How far the page is scrolled down, in pixels: ``window.scrollY`` or, where Streamlit scrolls its main
    container instead of the window, that container's ``scrollTop`` (the largest of them)."""
    return float(driver.execute_script(SCROLL_JS))


def scroll_to_text(driver: Any, selector: str, text: str) -> None:
    """Scroll the first element matching ``selector`` whose text contains ``text`` to the top of the window."""
    element = next(e for e in elements(driver, selector) if text in str(e.text))
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
