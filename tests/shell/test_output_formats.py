"""`output_format` on every channel, through the real app and wire-faithful fakes: asked of providers that make
the format, converted by the proxy (Pillow) for the rest, and refused before any upstream call when no image
format the API defines."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from PIL import Image

from tests.factories import poll_task, url_of
from tests.fakes import flux as flux_fake
from tests.fakes import seedream as seedream_fake
from tests.fakes import zhipu as zhipu_fake
from tests.fakes.flux import FakeFlux
from tests.fakes.seedream import FakeSeedream
from tests.fakes.zhipu import FakeZhipu

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()


def is_webp(data: bytes) -> bool:
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return False
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format == "WEBP"


def dimensions(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def shipped(make_proxy: Any, aiohttp_server: Any, zhipu: FakeZhipu, bfl: FakeFlux, ark: FakeSeedream) -> Any:
    zhipu_server, bfl_server, ark_server = [await aiohttp_server(fake.app()) for fake in (zhipu, bfl, ark)]
    env = {
        "ZHIPU_BASE_URL": str(zhipu_server.make_url(zhipu_fake.PREFIX)),
        "ZHIPU_API_KEY": zhipu.api_key,
        "BFL_BASE_URL": url_of(bfl_server),
        "BFL_API_KEY": bfl.api_key,
        "ARK_BASE_URL": str(ark_server.make_url(seedream_fake.PREFIX)),
        "ARK_API_KEY": ark.api_key,
    }
    return await make_proxy(SHIPPED, env)


def sdk_for(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def test_a_provider_without_webp_gets_its_png_converted(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu()
    client = await shipped(make_proxy, aiohttp_server, zhipu, FakeFlux(), FakeSeedream())
    sdk = sdk_for(client)
    raw = await sdk.images.with_raw_response.generate(
        model="cogview-4", prompt="山水画", n=2, response_format="b64_json", extra_body={"output_format": "webp"}
    )
    body = raw.http_response.json()
    answer = raw.parse()
    assert answer.data is not None and len(answer.data) == 2
    for item in answer.data:
        data = base64.b64decode(item.b64_json or "")
        assert is_webp(data)
        assert dimensions(data) == dimensions(zhipu_fake.PNG) == (2, 2)  # the picture CogView made, re-encoded
    assert body["output_format"] == "webp"
    assert body["metadata"]["converted"] == {"from": "png", "to": "webp"}
    assert "X-Imagegate-Ignored-Params" not in raw.http_response.headers
    # CogView takes no output format: it was asked for none.
    assert [sorted(item.json()) for item in zhipu.recorder.received] == [["model", "prompt", "size"]] * 2
    await sdk.close()


class UnreadableZhipu(FakeZhipu):
    """Serves a PNG signature over bytes no decoder can read: an image the provider made and billed."""

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=UNREADABLE, content_type="image/png")


UNREADABLE = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_an_image_that_cannot_be_converted_is_delivered_as_made(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await shipped(make_proxy, aiohttp_server, UnreadableZhipu(), FakeFlux(), FakeSeedream())
    response = await client.post("/v1/images/generations", json={
        "model": "cogview-4", "prompt": "p", "output_format": "webp", "response_format": "b64_json",
    })
    body = await response.json()
    assert response.status == 200, body
    assert base64.b64decode(body["data"][0]["b64_json"]) == UNREADABLE  # paid for: never lost to a 502
    assert "output_format" not in body  # not claimed: the image is not webp
    assert body["metadata"]["not_converted"]["count"] == 1
    assert "could not be converted to webp" in body["metadata"]["not_converted"]["reason"]


async def test_compression_is_applied_by_the_conversion(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), FakeFlux(), FakeSeedream())
    sizes = []
    for compression in (100, 1):
        response = await client.post("/v1/images/generations", json={
            "model": "cogview-4", "prompt": "p", "output_format": "jpg", "output_compression": compression,
            "response_format": "b64_json",
        })
        body = await response.json()
        data = base64.b64decode(body["data"][0]["b64_json"])
        assert data.startswith(b"\xff\xd8\xff") and body["metadata"]["converted"] == {"from": "png", "to": "jpeg"}
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
        sizes.append(len(data))
    assert sizes[1] < sizes[0]


async def test_a_url_answer_serves_the_converted_bytes_as_webp(make_proxy: Any, aiohttp_server: Any) -> None:
    bfl = FakeFlux(polls_before_done=0)
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), bfl, FakeSeedream())
    response = await client.post(
        "/v1/images/generations",
        json={"model": "flux-pro-1.1", "prompt": "p", "output_format": "webp", "response_format": "url"},
    )
    assert response.status == 200
    body = await response.json()
    url = body["data"][0]["url"]
    assert "b64_json" not in body["data"][0] and url.endswith(".webp")
    assert body["metadata"]["converted"] == {"from": "png", "to": "webp"}
    hosted = await client.get(url[url.index("/images/"):])
    assert hosted.status == 200 and hosted.headers["Content-Type"] == "image/webp"
    assert is_webp(await hosted.read())
    # BFL makes no webp: it was asked for lossless png, which the proxy converted.
    submits = [item.json() for item in bfl.recorder.received if item.method == "POST"]
    assert [submit["output_format"] for submit in submits] == ["png"]


async def test_a_format_the_provider_makes_is_forwarded_and_not_converted(make_proxy: Any, aiohttp_server: Any) -> None:
    bfl = FakeFlux(polls_before_done=0)
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), bfl, FakeSeedream())
    response = await client.post(
        "/v1/images/generations",
        json={"model": "flux-pro-1.1", "prompt": "p", "output_format": "jpg", "response_format": "b64_json"},
    )
    body = await response.json()
    assert response.status == 200
    submits = [item.json() for item in bfl.recorder.received if item.method == "POST"]
    assert [submit["output_format"] for submit in submits] == ["jpeg"]
    assert "converted" not in body["metadata"] and "output_format" not in body
    # What BFL sent is delivered untouched (the fake's file).
    assert base64.b64decode(body["data"][0]["b64_json"]) == flux_fake.PNG


async def test_an_emulated_stream_delivers_the_converted_format(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), FakeFlux(), FakeSeedream())
    sdk = sdk_for(client)
    # Zhipu writes its own format (PNG): the proxy converts on the emulated stream's production path.
    stream = await sdk.images.generate(
        model="cogview-4", prompt="p", size="1024x1024", stream=True, extra_body={"output_format": "webp"}
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_generation.completed"]
    completed = events[0]
    assert completed.output_format == "webp"
    assert is_webp(base64.b64decode(completed.b64_json))
    await sdk.close()


async def test_an_async_task_delivers_the_converted_format(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), FakeFlux(), FakeSeedream())
    created = await client.post("/v1/images/generations", json={
        "model": "cogview-4", "prompt": "p", "size": "1024x1024", "async": True, "output_format": "jpeg",
        "response_format": "b64_json",
    })
    task = await created.json()
    _, done = await poll_task(client, task["task_id"], {}, "succeed")
    assert done["task_status"] == "succeed"
    assert base64.b64decode(done["data"][0]["b64_json"]).startswith(b"\xff\xd8\xff")
    assert done["metadata"]["converted"] == {"from": "png", "to": "jpeg"} and done["output_format"] == "jpeg"


async def test_a_native_seedream_stream_converts_its_final_images(make_proxy: Any, aiohttp_server: Any) -> None:
    ark = FakeSeedream()
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), FakeFlux(), ark)
    response = await client.post("/v1/images/generations", json={
        "model": "doubao-seedream-4.0", "prompt": "p", "stream": True, "output_format": "webp", "response_format": "url",
    })
    text = await response.text()
    events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: {")]
    completed = [event for event in events if event["type"] == "image_generation.completed"]
    assert len(completed) == 1 and completed[0]["output_format"] == "webp"
    url = completed[0]["url"]
    hosted = await client.get(url[url.index("/images/"):])
    assert hosted.headers["Content-Type"] == "image/webp" and is_webp(await hosted.read())
    sent = ark.recorder.received[0].json()
    assert sent["stream"] is True and "output_format" not in sent  # Seedream 4 makes JPEG only: not asked


@pytest.mark.parametrize("asked", [{}, {"response_format": "b64_json"}, {"output_format": "webp"}])
async def test_a_native_seedream_stream_delivers_its_final_image_as_base64(
    make_proxy: Any, aiohttp_server: Any, asked: dict[str, str]
) -> None:
    # Seedream streams a URL; the stream's default delivery is base64, so the proxy downloads (and converts) it.
    client = await shipped(make_proxy, aiohttp_server, FakeZhipu(), FakeFlux(), FakeSeedream())
    body = {"model": "doubao-seedream-4.0", "prompt": "p", "stream": True, **asked}
    response = await client.post("/v1/images/generations", json=body)
    text = await response.text()
    events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: {")]
    assert [event["type"] for event in events][-1] == "image_generation.completed"
    image = base64.b64decode(events[-1]["b64_json"], validate=True)
    assert is_webp(image) if asked.get("output_format") == "webp" else image == seedream_fake.PNG  # the image served
    assert "url" not in events[-1]


async def test_a_format_the_api_does_not_define_is_a_400_before_any_upstream_call(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    zhipu, bfl = FakeZhipu(), FakeFlux()
    client = await shipped(make_proxy, aiohttp_server, zhipu, bfl, FakeSeedream())
    for model in ("cogview-4", "flux-pro-1.1", "gpt-image-1"):
        for value in ("gif", "bmp", ""):
            response = await client.post("/v1/images/generations", json={"model": model, "prompt": "p", "output_format": value})
            error = (await response.json())["error"]
            assert response.status == 400
            assert (error["param"], error["code"], error["type"]) == ("output_format", "invalid_value", "invalid_request_error")
    for compression in (-1, 101):
        response = await client.post("/v1/images/generations", json={
            "model": "cogview-4", "prompt": "p", "output_format": "webp", "output_compression": compression,
        })
        assert response.status == 400 and (await response.json())["error"]["param"] == "output_compression"
    assert zhipu.recorder.received == [] and bfl.recorder.received == []
