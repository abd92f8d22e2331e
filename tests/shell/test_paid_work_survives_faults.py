"""A paid image or a counter is not lost to a fault: an idempotent retry after the client disconnected, a
counter that blips after delivery, one failed download among several images, a stream that errors before its
first event or ends without a final image."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aiohttp import web

from proxy.core.errors import ServiceUnavailable
from proxy.services import SERVICES
from proxy.shared_state import MemoryCounters
from tests.factories import rules_yaml, serve_fake
from tests.fakes.openai import KEY, PNG, FakeOpenAI

RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["first", "second"]},
        # dall-e-2 answers with URLs: the proxy downloads them for b64_json
        "urls-only": {"channels": ["first"], "upstream_model": "dall-e-2"},
    },
    channels={
        "first": {"type": "openai", "base_url": "${FIRST}/v1", "api_key": "${OPENAI_API_KEY}"},
        "second": {"type": "openai", "base_url": "${SECOND}/v1", "api_key": "${OPENAI_API_KEY}"},
    },
    server={
        "api_keys": ["client-key-1", {"key": "one-at-a-time", "name": "solo", "limits": {"concurrent": 1, "images_per_day": 100}}]
    },
)
AUTH = {"Authorization": "Bearer client-key-1"}


async def start(make_proxy: Any, aiohttp_server: Any, first: FakeOpenAI, second: FakeOpenAI | None = None) -> Any:
    urls = [await serve_fake(aiohttp_server, fake) for fake in (first, second or FakeOpenAI())]
    return await make_proxy(RULES, {"FIRST": urls[0], "SECOND": urls[1], "OPENAI_API_KEY": KEY})


async def test_an_idempotent_retry_after_a_disconnect_gets_the_first_answer(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(delay=0.6)
    client = await start(make_proxy, aiohttp_server, fake)
    headers = {**AUTH, "Idempotency-Key": "blip-1"}
    body = {"model": "gpt-image-1.5", "prompt": "p"}
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.2):
            await client.post("/v1/images/generations", json=body, headers=headers)  # the client gives up
    retry = await client.post("/v1/images/generations", json=body, headers=headers)
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert base64.b64decode((await retry.json())["data"][0]["b64_json"]) == PNG
    assert len(fake.recorder.received) == 1  # generated (and paid for) once


async def test_a_counter_blip_after_delivery_does_not_lose_the_answer(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await start(make_proxy, aiohttp_server, FakeOpenAI())
    services = client.server.app[SERVICES]

    class Flaky(MemoryCounters):
        async def decr(self, key: str, amount: int) -> None:
            raise ServiceUnavailable("blip", code="state_unavailable")

    services.counters = Flaky()
    response = await client.post(
        "/v1/images/generations",
        json={"model": "gpt-image-1.5", "prompt": "p"},
        headers={"Authorization": "Bearer one-at-a-time"},
    )
    assert response.status == 200 and len((await response.json())["data"]) == 1


async def test_one_failed_download_does_not_discard_the_other_images(make_proxy: Any, aiohttp_server: Any) -> None:
    class HalfBroken(FakeOpenAI):
        async def files(self, request: web.Request) -> web.Response:
            if request.match_info["name"] == "img-1.png":
                return web.Response(status=404)
            return await super().files(request)

    client = await start(make_proxy, aiohttp_server, HalfBroken())
    response = await client.post(
        "/v1/images/generations", json={"model": "urls-only", "prompt": "p", "n": 2, "response_format": "b64_json"}, headers=AUTH
    )
    assert response.status == 200
    body = await response.json()
    assert [base64.b64decode(item["b64_json"]) for item in body["data"]] == [PNG]
    assert body["metadata"]["failed"]["count"] == 1
    assert body["metadata"]["failed"]["errors"][0]["code"] == "image_download_failed"


async def test_a_stream_error_before_any_event_fails_over_with_a_real_status(make_proxy: Any, aiohttp_server: Any) -> None:
    first, second = FakeOpenAI(stream_error_after=0), FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, first, second)
    response = await client.post(
        "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True}, headers=AUTH
    )
    text = await response.text()
    assert response.status == 200 and "image_generation.completed" in text and '"type":"error"' not in text
    assert len(first.recorder.received) == 1 and len(second.recorder.received) == 1
    only = await start(make_proxy, aiohttp_server, FakeOpenAI(stream_error_after=0), FakeOpenAI(stream_error_after=0))
    failed = await only.post(
        "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True}, headers=AUTH
    )
    assert failed.status == 502 and (await failed.json())["error"]["code"] == "image_generation_failed"


async def test_a_stream_that_ends_without_a_final_image_says_so(make_proxy: Any, aiohttp_server: Any) -> None:
    class Partial(FakeOpenAI):
        async def stream(self, request: web.Request, kind: str, partials: int) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            event = {"type": f"{kind}.partial_image", "b64_json": base64.b64encode(PNG).decode(), "partial_image_index": 0}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await response.write_eof()
            return response

    client = await start(make_proxy, aiohttp_server, Partial(), Partial())
    response = await client.post(
        "/v1/images/generations",
        json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "partial_images": 1},
        headers=AUTH,
    )
    text = await response.text()
    assert "image_generation.partial_image" in text
    assert text.rstrip().endswith("}") and '"code":"upstream_stream_cut"' in text
