"""One production path: every way of asking for images (sync, async task, native stream, emulated
stream, edit, variation) gets the same channel order and failover, attempt metrics, revised-prompt
handling and usage accounting (ARCHITECTURE.md §2).

Each model's first channel is down (nothing listens on its port): first in the list (`legacy`), or first
by weight though listed last (`weighted`), so every request must fail over to the live one. The models
are retired names whose answers carry the client's prompt as `revised_prompt`.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import FormData

from tests.fakes.kling import FakeKling
from tests.fakes.openai import KEY, FakeOpenAI, tiny_png

RULES = """
channels:
  down:
    type: openai
    base_url: http://127.0.0.1:${DOWN}/v1
    api_key: down-key
  openai:
    type: openai
    base_url: ${UPSTREAM}/v1
    api_key: ${OPENAI_API_KEY}
  down-weighted:                 # load spreading puts a weighted channel first, wherever it is listed
    type: openai
    base_url: http://127.0.0.1:${DOWN}/v1
    api_key: down-key
    weight: 1
  kling-down:
    type: kling
    base_url: http://127.0.0.1:${DOWN}
    api_key: ${KLING_ACCESS}:${KLING_SECRET}
  kling-down-weighted:
    type: kling
    base_url: http://127.0.0.1:${DOWN}
    api_key: ${KLING_ACCESS}:${KLING_SECRET}
    weight: 1
  kling:
    type: kling
    base_url: ${KLING}
    api_key: ${KLING_ACCESS}:${KLING_SECRET}
    poll_interval: 0.02
    max_poll_interval: 0.02
models:
  legacy:                        # native streams (OpenAI's image events)
    channels: [down, openai]
    upstream_model: gpt-image-1
    revised_prompt: original
  only-down:                     # one channel, and it is down: every round fails
    channels: [down]
    upstream_model: gpt-image-1
  only-down-kling:
    channels: [kling-down]
    upstream_model: kling-v2
  legacy-kling:                  # no native stream: emulated
    channels: [kling-down, kling]
    upstream_model: kling-v2
    revised_prompt: original
  weighted:
    channels: [openai, down-weighted]
    upstream_model: gpt-image-1
    revised_prompt: original
  weighted-kling:
    channels: [kling, kling-down-weighted]
    upstream_model: kling-v2
    revised_prompt: original
"""
PROMPT = "a lighthouse at dusk"
Images = list[dict[str, Any]]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(block.split("data: ", 1)[1]) for block in text.split("\n\n") if "data: " in block]


async def sync(client: Any, model: str) -> Images:
    response = await client.post("/v1/images/generations", json={"model": model, "prompt": PROMPT})
    body = await response.json()
    assert response.status == 200, body
    assert (body["metadata"]["channel"], body["metadata"]["attempts"]) == ("openai", 2)
    return list(body["data"])


async def async_task(client: Any, model: str) -> Images:
    created = await client.post("/v1/images/generations", json={"model": model, "prompt": PROMPT, "async": True})
    task_id = (await created.json())["task_id"]
    for _ in range(500):
        body = await (await client.get(f"/v1/images/generations/{task_id}")).json()
        if body["task_status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.02)
    assert body["task_status"] == "succeed", body
    assert (body["metadata"]["channel"], body["metadata"]["attempts"]) == ("openai", 2)
    return list(body["data"])


async def native_stream(client: Any, model: str) -> Images:
    response = await client.post("/v1/images/generations", json={"model": model, "prompt": PROMPT, "stream": True})
    sent = events(await response.text())
    assert [event["type"] for event in sent] == ["image_generation.completed"]
    return sent


async def emulated_stream(client: Any, model: str) -> Images:
    body = {"model": f"{model}-kling", "prompt": PROMPT, "stream": True}
    response = await client.post("/v1/images/generations", json=body)
    sent = events(await response.text())
    assert [event["type"] for event in sent] == ["image_generation.completed"]
    return sent


def upload(route: str) -> Callable[[Any, str], Awaitable[Images]]:
    async def send(client: Any, model: str) -> Images:
        form = FormData()
        form.add_field("model", model)
        if route == "edits":
            form.add_field("prompt", PROMPT)
        form.add_field("image", tiny_png(), filename="in.png", content_type="image/png")
        response = await client.post(f"/v1/images/{route}", data=form)
        body = await response.json()
        assert response.status == 200, body
        assert (body["metadata"]["channel"], body["metadata"]["attempts"]) == ("openai", 2)
        return list(body["data"])

    return send


PATHS = {
    "sync": sync,
    "async": async_task,
    "native stream": native_stream,
    "emulated stream": emulated_stream,
    "edit": upload("edits"),
    "variation": upload("variations"),
}


def metric(text: str, name: str, labels: str) -> float | None:
    """A series' value in the /metrics text; None when the series is not there at all."""
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


# Total tokens the fake reports per path (emulated: Kling reports none; variations: OpenAI's have no usage).
TOKENS = {"sync": 4170.0, "async": 4170.0, "native stream": 105.0, "emulated stream": None, "edit": 4170.0, "variation": None}


@pytest.mark.parametrize("order", ["legacy", "weighted"])
@pytest.mark.parametrize("path", PATHS)
async def test_every_path_fails_over_counts_and_revises_the_same_way(
    make_proxy: Any, aiohttp_server: Any, path: str, order: str
) -> None:
    openai, kling = FakeOpenAI(), FakeKling()
    env = {
        "DOWN": str(closed_port()),
        "UPSTREAM": str((await aiohttp_server(openai.app())).make_url("")).rstrip("/"),
        "OPENAI_API_KEY": KEY,
        "KLING": str((await aiohttp_server(kling.app())).make_url("")).rstrip("/"),
        "KLING_ACCESS": kling.access_key,
        "KLING_SECRET": kling.secret_key,
    }
    client = await make_proxy(RULES, env)
    images = await PATHS[path](client, order)
    model = f"{order}-kling" if path == "emulated stream" else order
    # The down channel was tried first, then the live one served the one image asked for.
    served_by = kling if path == "emulated stream" else openai
    assert len([call for call in served_by.recorder.received if call.method == "POST"]) == 1
    assert len(images) == 1 and all(image.get("b64_json") or image.get("url") for image in images)
    # A retired model's answer says the prompt as the client wrote it (a variation has none to say).
    assert [image.get("revised_prompt") for image in images] == [None if path == "variation" else PROMPT]
    metrics = await (await client.get("/metrics")).text()
    assert metric(metrics, "imagegate_attempts_total", f'model="{model}"') == 2.0
    assert metric(metrics, "imagegate_failovers_total", f'model="{model}"') == 1.0
    assert metric(metrics, "imagegate_key_images_total", 'key="anonymous"') == 1.0
    assert metric(metrics, "imagegate_key_tokens_total", 'key="anonymous",kind="total"') == TOKENS[path]


async def refused(client: Any, path: str) -> tuple[int, str]:
    """The status and error code a request on `path` ends with when its only channel is down (retries: 1)."""
    model = "only-down-kling" if path == "emulated stream" else "only-down"
    fields = {"model": model, "prompt": PROMPT, "retries": 1}
    if path in ("edit", "variation"):
        form = FormData({key: str(value) for key, value in fields.items() if path == "edit" or key != "prompt"})
        form.add_field("image", tiny_png(), filename="in.png", content_type="image/png")
        response = await client.post("/v1/images/" + ("edits" if path == "edit" else "variations"), data=form)
        return response.status, (await response.json())["error"]["code"]
    extra = {"async": True} if path == "async" else {"stream": True} if "stream" in path else {}
    response = await client.post("/v1/images/generations", json={**fields, **extra})
    body = await response.json()
    task_id = body.get("task_id")
    for _ in range(500 if path == "async" else 0):
        # The task's own status answers with the error's status once it has failed.
        response = await client.get(f"/v1/images/generations/{task_id}")
        body = await response.json()
        if body["task_status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.02)
    return response.status, body["error"]["code"]


@pytest.mark.parametrize("path", PATHS)
async def test_every_path_takes_the_same_retry_rounds_and_ends_with_the_same_error(make_proxy: Any, path: str) -> None:
    client = await make_proxy(RULES, {"DOWN": str(closed_port()), "UPSTREAM": "http://127.0.0.1:9", "OPENAI_API_KEY": KEY,
                                      "KLING": "http://127.0.0.1:9", "KLING_ACCESS": "a", "KLING_SECRET": "s"})
    assert await refused(client, path) == (502, "upstream_unreachable")
    model = "only-down-kling" if path == "emulated stream" else "only-down"
    metrics = await (await client.get("/metrics")).text()
    assert metric(metrics, "imagegate_attempts_total", f'model="{model}"') == 2.0  # one channel, two rounds
    assert metric(metrics, "imagegate_key_images_total", 'key="anonymous"') in (None, 0.0)  # no image counted
