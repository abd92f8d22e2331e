"""Screenshots of the console: `python -m tests.console_screenshots --out DIR`.

Needs Chromium and chromedriver (Debian's `chromium` and `chromium-driver` packages: /usr/bin/chromium and
/usr/bin/chromedriver; nothing is downloaded). Starts a proxy serving local-image in this process, signs in
to the console in headless Chromium, makes a few generations (and a task that fails, on a channel nothing
answers), and saves a PNG of every page at 1280x800 and 390x844 into DIR (`<page>-<width>.png`). The
proxy's images and ledger live in a temporary directory, removed on exit: only DIR is written."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.rules import parse_rules
from proxy.image_store import FileImageStore
from proxy.services import SERVICES
from tests import console_browser as ui
from tests.factories import start_proxy, url_of

VIEWPORTS = ((1280, 800), (390, 844))
PAGES = (("gallery", "[data-testid=gallery-card], #main .error:not(:empty)"), ("usage", "svg.chart, #main .error:not(:empty)"),
         ("channels", "#main .panel, #main .error:not(:empty)"), ("tasks", "#main table, #main .error:not(:empty), #main p"))


def make_generations(url: str, upload: Path) -> None:
    """A few requests of each kind, so the gallery and usage pages have something to show."""
    driver = ui.chromium()
    try:
        ui.open_console(driver, url)
        ui.sign_in(driver, ui.ADMIN_KEY)
        ui.generate(driver, "a lighthouse at dusk")
        ui.generate(driver, "a fox in the snow", "async")
        ui.stream(driver, "a harbour at dawn")
        ui.edit_with_mask(driver, "add a boat", upload)
    finally:
        driver.quit()


async def failed_task(server: TestServer) -> None:
    """An async request on the channel nothing answers: the tasks page shows a failed task too."""
    body = {"model": "offline-image", "prompt": "a harbour at night", "async": True}
    async with ClientSession(headers={"Authorization": f"Bearer {ui.ADMIN_KEY}"}) as session:
        async with session.post(url_of(server, "/v1/images/generations"), json=body) as response:
            task_id = (await response.json())["task_id"]
        for _ in range(100):
            async with session.get(url_of(server, f"/v1/images/generations/{task_id}")) as response:
                if (await response.json()).get("task_status") == "failed":
                    return
            await asyncio.sleep(0.05)


def shoot_playground(driver: ui.WebDriver, url: str, out: Path, upload: Path) -> list[Path]:
    """The sign-in, then the playground with a generation and with an edit (a painted mask)."""
    width = driver.get_window_size()["width"]
    ui.open_console(driver, url)
    saved = [save(driver, out / f"sign-in-{width}.png")]
    ui.sign_in(driver, ui.ADMIN_KEY)
    ui.generate(driver, "a lighthouse at dusk")
    saved.append(save(driver, out / f"playground-{width}.png"))
    ui.edit_with_mask(driver, "add a boat", upload)
    saved.append(save(driver, out / f"playground-edit-{width}.png"))
    return saved


def shoot_pages(driver: ui.WebDriver, out: Path) -> list[Path]:
    width = driver.get_window_size()["width"]
    saved = []
    for page, ready in PAGES:
        ui.page_text(driver, page, ready)
        if page == "channels":  # each channel's test: one ok, one failed
            for channel in ("local", "offline"):
                ui.press_test(driver, channel)
        saved.append(save(driver, out / f"{page}-{width}.png"))
    return saved


def save(driver: ui.WebDriver, path: Path) -> Path:
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))
    return path


async def run(out: Path) -> list[Path]:
    directory = Path(tempfile.mkdtemp(prefix="imagegate-console-"))
    tempfile.tempdir = str(directory)  # the default ledger lives beside the image store: both here
    try:
        rules = parse_rules(ui.CONSOLE_RULES, {}, SCHEMAS)
        store = FileImageStore(directory / "images", rules.server.images.ttl)
        server = await start_proxy(make_app(rules, store=store), rules)
        try:
            url = url_of(server, "/console")
            upload = ui.png_file(directory)
            await asyncio.to_thread(make_generations, url, upload)
            await failed_task(server)
            await server.app[SERVICES].ledger.write_queued()  # the pages read the ledger: written first
            saved: list[Path] = []
            for width, height in VIEWPORTS:
                driver = await asyncio.to_thread(ui.chromium, width, height)
                try:
                    saved += await asyncio.to_thread(shoot_playground, driver, url, out, upload)
                    await server.app[SERVICES].ledger.write_queued()
                    saved += await asyncio.to_thread(shoot_pages, driver, out)
                finally:
                    await asyncio.to_thread(driver.quit)
            return saved
        finally:
            await server.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG files")
    arguments = parser.parse_args()
    if not ui.browser_available():
        raise SystemExit(f"needs {ui.CHROMIUM} and {ui.CHROMEDRIVER}")
    arguments.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(run(arguments.out)):
        print(path)


if __name__ == "__main__":
    main()
