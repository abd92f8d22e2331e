"""The console (`GET /console`): its files and headers, and the pages driven in a headless Chromium against a
proxy serving local-image and the real admin API: sign-in with a key from `server.admin_keys` alone,
generations (sync, stream, async, edit with a painted mask), the gallery, usage and its CSV, channels with
their figures and test results, tasks (failed ones too), an upstream's error text shown as text."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

if os.environ.get("IMAGEGATE_REQUIRE_BROWSER") != "1":
    pytest.importorskip("selenium")  # the `test` extra has it; without it these tests skip rather than fail to import

from proxy.console import FILES, policy
from proxy.services import SERVICES
from tests import console_browser as ui
from tests.factories import OPENAI, ROOT, poll_task, serve_fake
from tests.fakes.openai import KEY, FakeOpenAI

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
    references = re.findall(r"(?:src|href)=\"([^\"#][^\"]*)\"", (CONSOLE_DIR / "index.html").read_text())
    assert sorted(references) == ["/console/console.css", "/console/console.js"]  # the first page: three files in all
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


def test_images_from_the_public_base_url_are_allowed_too() -> None:
    """Hosted images' URLs are built on server.public_base_url: the console shows them from there."""
    assert "img-src 'self' data: blob: https://img.example.com;" in policy("https://img.example.com")
    assert "img-src 'self' data: blob:;" in policy("")


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


async def test_a_generation_shows_its_image_then_the_gallery_and_usage_count_it(
    make_proxy: Any, browser: Any, tmp_path: Path
) -> None:
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
    lines = (await asyncio.to_thread(ui.download_csv, browser, tmp_path)).splitlines()
    assert lines[0] == "day,model,key,channel,requests,images,cost_usd,errors,p50_ms,p95_ms", lines
    assert len(lines) == 2 and ",local-image,admin,local,2,2,0.002,0," in lines[1], lines


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


async def test_the_channels_page_shows_ledger_figures_and_test_results(make_proxy: Any, browser: Any) -> None:
    client = await signed_in(make_proxy, browser)
    assert await asyncio.to_thread(ui.generate, browser, "a lighthouse") == [64]
    await written(client)
    await asyncio.to_thread(ui.page_text, browser, "channels", "#main section.panel")
    local = (await asyncio.to_thread(ui.channel_card, browser, "local")).text
    assert "local (local)" in local and "Credentials present" in local and "local-image" in local
    assert re.search(r"1h\s+1 requests, 100\.0% ok, p50 \d+ ms", local), local
    text, width = await asyncio.to_thread(ui.press_test, browser, "local")
    assert re.fullmatch(r"ok \(200\) in \d+ ms", text) and width > 0, (text, width)  # its default size
    text, width = await asyncio.to_thread(ui.press_test, browser, "offline")
    assert text.startswith("error (502) in ") and "channel 'offline' could not be reached" in text and width == 0, text
    await written(client)  # the tests are in the ledger: the failed one is among the channel's newest errors
    await asyncio.to_thread(ui.page_text, browser, "channels", "#main section.panel")
    offline = (await asyncio.to_thread(ui.channel_card, browser, "offline")).text
    assert "offline (openai)" in offline and "1 requests, 0.0% ok" in offline and "upstream_unreachable" in offline, offline


async def test_the_tasks_page_lists_async_tasks_and_opens_them_failed_ones_too(make_proxy: Any, browser: Any) -> None:
    client = await signed_in(make_proxy, browser)
    assert await asyncio.to_thread(ui.generate, browser, "an async fox", "async") == [64]
    failed = await client.post("/v1/images/generations", json={"model": "offline-image", "prompt": "p", "async": True},
                               headers={"Authorization": f"Bearer {ui.CLIENT_KEY}"})
    assert failed.status == 200
    await poll_task(client, (await failed.json())["task_id"], {"Authorization": f"Bearer {ui.CLIENT_KEY}"}, "failed")
    await written(client)
    newest, oldest = await asyncio.to_thread(ui.task_rows, browser)
    assert "failed" in newest and "offline-image" in newest and "client" in newest and "could not be reached" in newest
    assert "succeed" in oldest and "local-image" in oldest and "admin" in oldest, oldest
    text, widths = await asyncio.to_thread(ui.open_task, browser, 1)
    assert "succeed" in text and widths == [64], text
    text, widths = await asyncio.to_thread(ui.open_task, browser, 0)  # answered 502: shown all the same
    assert "failed" in text and "channel 'offline' could not be reached" in text and widths == [], text


HOSTILE = '<img src=x onerror="document.title=1">'  # untrusted text: must show as text, never run


async def test_an_upstream_error_with_markup_is_shown_as_text(make_proxy: Any, browser: Any, aiohttp_server: Any) -> None:
    upstream = FakeOpenAI()
    upstream.failures.extend([(400, {"error": {"message": HOSTILE, "type": "invalid_request_error"}}, {})] * 2)
    rules = ui.console_rules({"hostile-image": {"channels": ["upstream"]}}, {"upstream": OPENAI})
    client = await make_proxy(rules, {"UPSTREAM": await serve_fake(aiohttp_server, upstream), "OPENAI_API_KEY": KEY})
    task = await (await client.post("/v1/images/generations", json={"model": "hostile-image", "prompt": "p", "async": True},
                                     headers={"Authorization": f"Bearer {ui.ADMIN_KEY}"})).json()
    await poll_task(client, task["task_id"], {"Authorization": f"Bearer {ui.ADMIN_KEY}"}, "failed")
    await asyncio.to_thread(ui.open_console, browser, str(client.make_url("/console")))
    await asyncio.to_thread(ui.sign_in, browser, ui.ADMIN_KEY)
    await asyncio.to_thread(ui.page_text, browser, "channels", "#main section.panel")
    text, _ = await asyncio.to_thread(ui.press_test, browser, "upstream")
    assert text.endswith(f": {HOSTILE}"), text
    (row,) = await asyncio.to_thread(ui.task_rows, browser)
    assert HOSTILE in row
    text, _ = await asyncio.to_thread(ui.open_task, browser, 0)
    assert HOSTILE in text
    assert browser.title != "1" and not browser.find_elements("css selector", "#main img[src=x]")  # shown, never run


async def test_the_admin_routes_refuse_requests_without_the_admin_key(make_proxy: Any) -> None:
    client, _ = await served(make_proxy)
    for path in ("/admin/channels", "/admin/tasks", "/admin/usage"):
        for headers in ({}, {"Authorization": f"Bearer {ui.CLIENT_KEY}"}, {"Authorization": "Bearer wrong"}):
            response = await client.get(path, headers=headers)
            assert response.status == 401, (path, headers)
            assert (await response.json())["error"]["code"] == "admin_key_required"
        assert (await client.get(path, headers={"Authorization": f"Bearer {ui.ADMIN_KEY}"})).status == 200, path
    assert (await client.post("/admin/channels/local/test")).status == 401
    # The admin key alone (in admin_keys, not api_keys) is a client key; the ordinary one is still asked for.
    assert (await client.get("/v1/images/models", headers={"Authorization": f"Bearer {ui.ADMIN_KEY}"})).status == 200
    assert (await client.get("/v1/images/models")).status == 401


async def test_a_proxy_without_keys_opens_the_console_to_loopback_without_a_sign_in(make_proxy: Any, browser: Any) -> None:
    client = await make_proxy(ui.rules_yaml({"local-image": {"channels": ["local"]}}, {"local": ui.LOCAL}), {})
    await asyncio.to_thread(ui.open_console, browser, str(client.make_url("/console")))
    await asyncio.to_thread(ui.visible, browser, "select[name=model]")  # require_admin lets loopback in: no sign-in
    assert not browser.find_element("id", "sign-in").is_displayed() and not browser.find_element("id", "sign-out").is_displayed()
    assert "local (local)" in await asyncio.to_thread(ui.page_text, browser, "channels", "#main section.panel")


async def test_a_tasks_webhook_delivery_shows_on_its_view(make_proxy: Any, browser: Any, aiohttp_server: Any) -> None:
    received: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    hook = str((await aiohttp_server(receiver)).make_url("/hook"))
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    rules = ui.console_rules().replace(
        "server:\n", f"server:\n  webhooks: {{secrets: ['{secret}'], allow_hosts: ['127.0.0.1']}}\n", 1)
    client = await make_proxy(rules, {})
    headers = {"Authorization": f"Bearer {ui.ADMIN_KEY}"}
    body = {"model": "local-image", "prompt": "p", "size": "32x32", "async": True, "callback_url": hook}
    task = await (await client.post("/v1/images/generations", json=body, headers=headers)).json()
    await poll_task(client, task["task_id"], headers, "succeed")
    for _ in range(100):  # the delivery goes out right after the task ends
        if received:
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(ui.open_console, browser, str(client.make_url("/console")))
    await asyncio.to_thread(ui.sign_in, browser, ui.ADMIN_KEY)
    await asyncio.to_thread(ui.task_rows, browser)
    text, widths = await asyncio.to_thread(ui.open_task, browser, 0)
    assert len(received) == 1 and widths == [32]
    assert "delivered, 1 attempt(s), last HTTP 204" in text, text
