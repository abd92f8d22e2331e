"""Screenshots of the console: `python -m tests.console_screenshots --out DIR`.

Starts a proxy serving local-image in this process (its images and ledger in a temporary directory), signs
in to the console in headless Chromium, makes a few generations, and saves a PNG of every page at
1280x800 and 390x844 into DIR (`<page>-<width>.png`)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

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
