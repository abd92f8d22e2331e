"""The console (`GET /console`): its files and headers, and the pages driven in a headless Chromium against a
proxy serving local-image: sign-in, generations (sync, stream, edit with a painted mask), the gallery, usage,
channels and tasks."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("IMAGEGATE_REQUIRE_BROWSER") != "1":
    pytest.importorskip("selenium")  # the `test` extra has it; without it these tests skip rather than fail to import

from aiohttp import web
from PIL import Image

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.console import FILES
from proxy.core.rules import parse_rules
from proxy.image_store import FileImageStore
from proxy.services import SERVICES
from tests import console_browser as ui
from tests.factories import ROOT, start_proxy

CONSOLE_DIR = ROOT / "proxy" / "console"
MAX_SHIPPED = 200_000


async def served(make_proxy: Any) -> tuple[Any, str]:
    client = await make_proxy(ui.CONSOLE_RULES, {})
    return client, str(client.make_url("/console"))


async def signed_in(make_proxy: Any, browser: Any) -> Any:
    """A fresh proxy with the console open in the browser and the admin signed in; the proxy's client."""
    client, url = await served(make_proxy)
    await asyncio.to_thread(ui.open_console, browser, url)
    await asyncio.to_thread(ui.sign_in, browser, ui.ADMIN_KEY)
    return client


async def written(client: Any) -> None:
    """The ledger writes in the background: the pages that read it are opened once it has."""
    await client.server.app[SERVICES].ledger.write_queued()


# -- the files ------------------------------------------------------------------------------------


def test_the_shipped_files_are_small_self_contained_and_package_data() -> None:
    sizes = {name: (CONSOLE_DIR / name).stat().st_size for name in FILES}
    assert sum(sizes.values()) < MAX_SHIPPED, sizes
    for name in FILES:
        text = (CONSOLE_DIR / name).read_text()
        assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", text), name  # nothing from another origin
        assert "@import" not in text and "localStorage" not in text and "document.cookie" not in text, name
    assert "innerHTML" not in (CONSOLE_DIR / "console.js").read_text()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["proxy"]
    assert {Path(entry).name for entry in package_data} >= set(FILES)


async def test_the_files_are_served_with_a_strict_policy_and_nothing_else_is(make_proxy: Any) -> None:
    client, _ = await served(make_proxy)
    kinds = (("/console", "text/html"), ("/console/console.js", "text/javascript"), ("/console/console.css", "text/css"))
    for path, kind in kinds:
        response = await client.get(path)  # no key: the page itself holds nothing secret
        assert response.status == 200 and response.content_type == kind, path
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'; img-src 'self' data: blob:;")
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer" and response.headers["Cache-Control"] == "no-cache"
    for path in ("/console/secret.txt", "/console/..%2Fapp.py", "/console/../proxy/app.py", "/console/%2e%2e%2fconsole.py"):
        assert (await client.get(path)).status == 404, path


async def test_the_gallery_records_say_which_hosted_images_they_have_and_until_when(make_proxy: Any) -> None:
    client, _ = await served(make_proxy)
    headers = {"Authorization": f"Bearer {ui.ADMIN_KEY}"}
    body = {"model": "local-image", "prompt": "p", "size": "32x32", "response_format": "url"}
    hosted = await (await client.post("/v1/images/generations", json=body, headers=headers)).json()
    await written(client)
    (record,) = (await (await client.get("/admin/generations?limit=48", headers=headers)).json())["data"]
    assert record["image_ids"] == hosted["data"][0]["url"].rsplit("/", 1)[1]
    assert datetime.fromisoformat(record["images_expire_at"]) > datetime.now(UTC)  # JSON text with its zone


# -- in the browser -------------------------------------------------------------------------------


async def test_a_wrong_key_is_refused_and_the_admin_key_signs_in(make_proxy: Any, browser: Any) -> None:
    _, url = await served(make_proxy)
    await asyncio.to_thread(ui.open_console, browser, url)
    await asyncio.to_thread(ui.sign_in, browser, "not-the-key")
    error = await asyncio.to_thread(ui.visible, browser, "#sign-in-error:not(:empty)")
    assert "admin key" in error.text and not browser.find_element("id", "nav").is_displayed()
    await asyncio.to_thread(ui.sign_in, browser, ui.ADMIN_KEY)
    await asyncio.to_thread(ui.visible, browser, "select[name=model]")
    assert browser.execute_script("return sessionStorage.length") == 1
    assert browser.execute_script("return localStorage.length + document.cookie.length") == 0
    assert ui.ADMIN_KEY not in browser.current_url
    # A key the API refuses later (revoked) sends the operator back to the sign-in, with the API's reason.
    browser.execute_script("sessionStorage.setItem(sessionStorage.key(0), 'revoked')")
    browser.execute_script("location.hash = '#/gallery'")
    error = await asyncio.to_thread(ui.visible, browser, "#sign-in-error:not(:empty)")
    assert "admin key" in error.text and browser.execute_script("return sessionStorage.length") == 0
    assert not browser.find_elements("css selector", "#main *")
    # Signing out forgets the key.
    await asyncio.to_thread(ui.sign_in, browser, ui.ADMIN_KEY)
    await asyncio.to_thread(ui.visible, browser, "#sign-out")
    browser.find_element("id", "sign-out").click()
    await asyncio.to_thread(ui.visible, browser, "#admin-key")
    assert browser.execute_script("return sessionStorage.length") == 0


async def test_a_generation_shows_its_image_then_the_gallery_and_usage_count_it(make_proxy: Any, browser: Any) -> None:
    client = await signed_in(make_proxy, browser)
    widths = await asyncio.to_thread(ui.generate, browser, "a <b>lighthouse</b> at dusk")
    assert widths == [64]
    meta = browser.find_element("css selector", "dl.meta").text
    assert "local-image" in meta and "local" in meta and "$0.001" in meta
    curl, python = await asyncio.to_thread(ui.snippet, browser, "curl"), await asyncio.to_thread(ui.snippet, browser, "python")
    assert "$IMAGEGATE_KEY" in curl and '"response_format":"url"' in curl and ui.ADMIN_KEY not in curl + python
    assert 'os.environ["IMAGEGATE_KEY"]' in python and "client.images.generate(" in python
    assert await asyncio.to_thread(ui.generate, browser, "an async fox", "async") == [64]
    await written(client)
    thumbnails = await asyncio.to_thread(ui.gallery_thumbnails, browser)
    assert len(thumbnails) == 2 and all(width == 64 for width in thumbnails)
    text = await asyncio.to_thread(ui.page_text, browser, "usage", "svg.chart rect.bar")
    totals = browser.find_element("css selector", "[data-testid=usage-table-name] tbody tr").text.split()
    assert totals[:3] == ["all", "2", "2"], text  # two requests, two images
    assert "$0.002" in text


async def test_a_stream_shows_partial_images_before_the_final_one(make_proxy: Any, browser: Any) -> None:
    await signed_in(make_proxy, browser)
    seen = await asyncio.to_thread(ui.stream, browser, "a streamed harbour")
    assert "partial" in seen and seen[-1] == "final" and seen.index("partial") < seen.index("final"), seen
    assert '"stream":true' in await asyncio.to_thread(ui.snippet, browser, "curl")


async def test_an_edit_with_a_painted_mask_gives_an_image(make_proxy: Any, browser: Any, tmp_path: Path) -> None:
    await signed_in(make_proxy, browser)
    widths = await asyncio.to_thread(ui.edit_with_mask, browser, "add a boat", ui.png_file(tmp_path))
    assert widths == [96]  # an edit keeps the input's size
    curl = await asyncio.to_thread(ui.snippet, browser, "curl")
    assert "/v1/images/edits" in curl and "mask=@mask.png" in curl and "image=@upload.png" in curl


@pytest.mark.parametrize(("page", "ready"), [("channels", "#main .panel, #main .error:not(:empty)"),
                                             ("tasks", "#main table, #main .error:not(:empty), #main p")])
async def test_the_admin_pages_show_their_data_or_a_readable_error(make_proxy: Any, browser: Any, page: str, ready: str) -> None:
    await signed_in(make_proxy, browser)
    text = await asyncio.to_thread(ui.page_text, browser, page, ready)
    assert len(text.strip()) > len(page), text  # more than the heading: the data, "No tasks." or the API's error


# -- the admin pages against the admin API's contract ---------------------------------------------

HOSTILE = '<img src=x onerror="document.title=1">'  # untrusted text: must show as text, never run
CHANNELS = {"object": "list", "data": [{
    "name": "openai", "type": "openai", "credentials": True, "models": ["gpt-image-2"],
    "windows": [{"window": "1h", "requests": 12, "errors": 1, "success_rate": 0.9167, "p50_ms": 5120.0, "p95_ms": 14900.0},
                {"window": "24h", "requests": 40, "errors": 2, "success_rate": 0.95, "p50_ms": 5000.0, "p95_ms": 14000.0}],
    "last_errors": [{"at": "2026-12-04T16:01:02+00:00", "status": 502, "error_code": HOSTILE, "error_type": "server_error",
                     "model": "gpt-image-2", "request_id": "r1"}]}]}
TASKS = {"object": "list", "data": [{"id": "task-1", "status": "succeed", "created": 1764860000, "expires_at": 1764946400.0,
                                     "model": "kling-v2", "key_name": "alice", "channel": "kling", "polls": 3, "images": 1,
                                     "error": None}]}


def tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@web.middleware
async def admin_api(request: web.Request, handler: Any) -> web.StreamResponse:
    """The admin API's channel and task routes as their contract says, for the pages to be checked against."""
    image = [{"b64_json": tiny_png()}]
    answers = {("GET", "/admin/channels"): CHANNELS, ("GET", "/admin/tasks"): TASKS,
               ("GET", "/admin/tasks/task-1"): {"task_id": "task-1", "task_status": "succeed", "data": image},
               ("POST", "/admin/channels/openai/test"): {"channel": "openai", "model": "gpt-image-2", "ok": True, "status": 200,
                                                         "ms": 5120.3, "error": None, "data": image, "metadata": {}}}
    answer = answers.get((request.method, request.path))
    if answer is None:
        return await handler(request)
    if request.headers.get("Authorization") != f"Bearer {ui.ADMIN_KEY}":
        return web.json_response({"error": {"message": "This route needs an admin key."}}, status=401)
    return web.json_response(answer)


async def test_channels_and_tasks_show_the_admin_api_contract(aiohttp_client: Any, browser: Any, tmp_path: Path) -> None:
    rules = parse_rules(ui.CONSOLE_RULES, {}, SCHEMAS)
    app = make_app(rules, store=FileImageStore(tmp_path / "images", rules.server.images.ttl))
    app.middlewares.append(admin_api)
    client = await aiohttp_client(await start_proxy(app, rules))
    await asyncio.to_thread(ui.open_console, browser, str(client.make_url("/console")))
    await asyncio.to_thread(ui.sign_in, browser, ui.ADMIN_KEY)
    text = await asyncio.to_thread(ui.page_text, browser, "channels", "#main section.panel")
    assert "openai (openai)" in text and "Credentials present" in text and "91.7% ok" in text and "p95 14900 ms" in text
    assert HOSTILE in text and browser.title != "1"  # shown as text
    browser.find_element("css selector", "#main section.panel button").click()
    widths = await asyncio.to_thread(ui.wait_for, browser, lambda d: d.execute_script(
        "const i = document.querySelector('#main section.panel img'); return i && i.complete && i.naturalWidth"))
    assert widths == 16 and "ok (200) in 5120 ms" in browser.find_element("id", "main").text
    text = await asyncio.to_thread(ui.page_text, browser, "tasks", "#main table")
    assert "succeed" in text and "3 polls" in text and "alice" in text and "kling-v2" in text
    browser.find_element("css selector", "#main table button").click()
    widths = await asyncio.to_thread(ui.wait_for, browser, lambda d: d.execute_script(
        "const i = document.querySelector('#main section img'); return i && i.complete && i.naturalWidth"))
    assert widths == 16
