"""The console in a real browser, shared by its tests (tests/shell/test_console.py) and the screenshot command
(tests/console_screenshots.py): Debian's headless Chromium through selenium, the rules the console is shown
with, and the steps an operator takes, each a blocking call (run them with `asyncio.to_thread` while the
proxy's loop serves)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.factories import LOCAL, rules_yaml

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ADMIN_KEY = "admin-key"
WAIT = 15.0  # seconds for a page or an image to appear; the local model draws in milliseconds

CLIENT_KEY = "client-key"
OFFLINE = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-offline"}  # nothing listens on port 9


def console_rules(models: dict[str, Any] | None = None, channels: dict[str, Any] | None = None) -> str:
    """local-image on the built-in local channel, priced so usage shows a cost, and offline-image on a channel
    nothing answers (a failed test, a failed task), plus `models` and `channels`. The admin key is listed in
    `server.admin_keys` only: it is a client key too (the playground calls /v1 with it); the one ordinary key
    keeps the proxy closed. The ledger is the default SQLite file beside the image store."""
    return rules_yaml(
        {"local-image": {"channels": ["local"], "price": {"per_image": 0.001}}, "offline-image": {"channels": ["offline"]},
         **(models or {})},
        {"local": LOCAL, "offline": OFFLINE, **(channels or {})},
        server={"api_keys": [{"key": CLIENT_KEY, "name": "client"}], "admin_keys": [ADMIN_KEY]},
    )


CONSOLE_RULES = console_rules()


def browser_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def chromium(width: int = 1280, height: int = 800) -> WebDriver:
    """A headless Chromium (never downloaded: the system's browser and driver)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(width, height)
    return driver


def png_file(directory: Path, size: int = 96) -> Path:
    """An opaque PNG to upload for edits."""
    path = directory / "upload.png"
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (40, 120, 200)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def wait_for(driver: WebDriver, condition: Any, timeout: float = WAIT) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def visible(driver: WebDriver, css: str) -> WebElement:
    return wait_for(driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None))


def open_console(driver: WebDriver, url: str) -> None:
    driver.get(url)
    visible(driver, "#sign-in, #nav")


def sign_in(driver: WebDriver, key: str) -> None:
    field = visible(driver, "#admin-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()


def go(driver: WebDriver, page: str) -> None:
    # Always a fresh render, also of the page already shown: no choice of a previous step carries over.
    driver.execute_script("""document.getElementById('main').replaceChildren();
      if (location.hash === arguments[0]) window.dispatchEvent(new HashChangeEvent('hashchange'));
      else location.hash = arguments[0];""", f"#/{page}")
    wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#main h1").text.lower() == page)


def choose(driver: WebDriver, name: str, value: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"input[name={name}][value={value}]").click()


def fill_request(driver: WebDriver, prompt: str, size: str = "64x64") -> None:
    prompt_field = visible(driver, "textarea[name=prompt]")
    prompt_field.clear()
    prompt_field.send_keys(prompt)
    size_field = driver.find_element(By.CSS_SELECTOR, ".fields input[name=size]")
    size_field.clear()
    if size:
        size_field.send_keys(size)


def send_and_wait(driver: WebDriver) -> list[int]:
    """Press Send; the natural widths of the final images once every one has loaded."""
    driver.find_element(By.CSS_SELECTOR, "#main form button[type=submit]").click()
    script = """const imgs = [...document.querySelectorAll('[data-testid=result-images] img.final')];
      const done = document.querySelector('[role=status]')?.textContent.startsWith('Done');
      return done && imgs.length && imgs.every((i) => i.complete) ? imgs.map((i) => i.naturalWidth) : null;"""
    try:
        return list(wait_for(driver, lambda d: d.execute_script(script)))
    except Exception as failure:
        error = driver.find_element(By.CSS_SELECTOR, "section [role=alert]").text
        raise AssertionError(f"no image: {error!r}") from failure


def generate(driver: WebDriver, prompt: str, mode: str = "sync") -> list[int]:
    go(driver, "playground")
    choose(driver, "mode", mode)
    fill_request(driver, prompt)
    return send_and_wait(driver)


def watch_images(driver: WebDriver) -> None:
    """Record the class of every image added to the results, in order (partial previews are removed later)."""
    driver.execute_script("""window.__seen = [];
      new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach((n) => {
        if (n.tagName === 'IMG') window.__seen.push(n.className); }))).observe(document.getElementById('main'),
        {childList: true, subtree: true});""")


def stream(driver: WebDriver, prompt: str) -> list[str]:
    """A streamed generation with two partial images; the classes of the images shown, in order."""
    go(driver, "playground")
    choose(driver, "mode", "stream")
    Select(visible(driver, "select[name=partial_images]")).select_by_value("2")
    fill_request(driver, prompt)
    watch_images(driver)
    send_and_wait(driver)
    return list(driver.execute_script("return window.__seen"))


def edit_with_mask(driver: WebDriver, prompt: str, upload: Path) -> list[int]:
    """An edit of `upload` with a mask painted by dragging across the canvas."""
    go(driver, "playground")
    choose(driver, "operation", "edit")
    driver.find_element(By.CSS_SELECTOR, "input[name=image]").send_keys(str(upload))
    canvas = visible(driver, "canvas[data-testid=mask-canvas]")
    ActionChains(driver).move_to_element_with_offset(canvas, -20, -20).click_and_hold().move_by_offset(30, 10) \
        .move_by_offset(10, 20).release().perform()
    fill_request(driver, prompt, "")
    return send_and_wait(driver)


def snippet(driver: WebDriver, which: str) -> str:
    return str(driver.execute_script(f"return document.querySelector('[data-testid={which}]').textContent"))


def gallery_thumbnails(driver: WebDriver) -> list[int]:
    """The gallery's loaded thumbnails: their natural widths."""
    go(driver, "gallery")
    script = """const imgs = [...document.querySelectorAll('[data-testid=gallery-card] img')];
      return imgs.length && imgs.every((i) => i.complete) ? imgs.map((i) => i.naturalWidth) : null;"""
    return list(wait_for(driver, lambda d: d.execute_script(script)))


def page_text(driver: WebDriver, page: str, ready_css: str) -> str:
    """A page's text once `ready_css` (its data or its error) shows."""
    go(driver, page)
    visible(driver, ready_css)
    return str(driver.find_element(By.ID, "main").text)


def channel_card(driver: WebDriver, name: str) -> WebElement:
    """The channels page's card of channel `name`."""
    return visible(driver, f"#main section.panel[aria-label='Channel {name}']")


def press_test(driver: WebDriver, name: str) -> tuple[str, int]:
    """Press the channel's Test button: the outcome's line and the natural width of its image (0: none)."""
    card = channel_card(driver, name)
    card.find_element(By.XPATH, f".//button[text()='Test {name}']").click()
    script = """const card = arguments[0]; const line = card.querySelector('div[aria-live] p:not([role=status])');
      const img = card.querySelector('div[aria-live] img');
      return line && (!img || img.complete) ? [line.textContent, img ? img.naturalWidth : 0] : null;"""
    text, width = wait_for(driver, lambda d: d.execute_script(script, card))
    return str(text), int(width)


def task_rows(driver: WebDriver) -> list[str]:
    """The tasks page's rows, as text, newest first."""
    go(driver, "tasks")
    visible(driver, "#main table tbody tr")
    return [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#main table tbody tr")]


def open_task(driver: WebDriver, row: int) -> tuple[str, list[int]]:
    """Open the tasks page's row `row`: the task's view once shown, and the natural widths of its loaded images."""
    driver.find_elements(By.CSS_SELECTOR, "#main table tbody tr button")[row].click()
    script = """const view = document.querySelector('#main section[aria-label="Task result"]');
      if (!view.querySelector('h2, .error')) return null;
      const imgs = [...view.querySelectorAll('img')];
      return imgs.every((i) => i.complete) ? [view.innerText, imgs.map((i) => i.naturalWidth)] : null;"""
    text, widths = wait_for(driver, lambda d: d.execute_script(script))
    return str(text), list(widths)


def download_csv(driver: WebDriver, directory: Path) -> str:
    """Press the usage page's Download CSV with Chromium's downloads going to `directory`: the file's text."""
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(directory)})
    go(driver, "usage")
    visible(driver, "svg.chart, #main .error:not(:empty)")
    driver.find_element(By.XPATH, "//main//button[text()='Download CSV']").click()
    target = directory / "imagegate-usage.csv"
    wait_for(driver, lambda d: target.exists() and target.stat().st_size > 0)
    return target.read_text()
