"""`stream: true` through the proxy: native relay without buffering, emulation, errors, disconnects."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import openai
import pytest

from proxy import streaming as streaming_shell
from tests.factories import LOCAL, OPENAI, rules_yaml, serve_fake
from tests.fakes.kling import FakeKling
from tests.fakes.openai import KEY, PNG, FakeOpenAI, tiny_png

RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["openai"]},
        "kling-v2": {"channels": ["kling"]},
        "local-image": {"channels": ["local"]},
        # a retired model's translation, served by a channel without native streams
        "kling-legacy": {"channels": ["kling"], "revised_prompt": "original"},
    },
    channels={
        "openai": OPENAI,
        "kling": {
            "type": "kling",
            "base_url": "${KLING}",
            "api_key": "${KLING_ACCESS}:${KLING_SECRET}",
            "poll_interval": 0.05,
            "max_poll_interval": 0.05,
        },
        "local": LOCAL,
    },
)


async def proxy(make_proxy: Any, aiohttp_server: Any, fake: FakeOpenAI, kling: FakeKling | None = None) -> Any:
    kling = kling or FakeKling()
    env = {
        "UPSTREAM": await serve_fake(aiohttp_server, fake),
        "OPENAI_API_KEY": KEY,
        "KLING": await serve_fake(aiohttp_server, kling),
        "KLING_ACCESS": kling.access_key,
        "KLING_SECRET": kling.secret_key,
    }
    return await make_proxy(RULES, env)


async def read_event(response: Any) -> tuple[str | None, dict[str, Any] | None]:
    """The next event (name, JSON), skipping comments; (None, None) at the end."""
    name: str | None = None
    data: list[str] = []
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            return None, None
        line = line.rstrip("\n")
        if line == "":
            if data:
                return name, json.loads("\n".join(data))
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


async def test_events_reach_the_client_before_the_upstream_has_finished(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(stream_gate=asyncio.Event())
    client = await proxy(make_proxy, aiohttp_server, fake)
    response = await client.post(
        "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "partial_images": 2}
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    name, first = await asyncio.wait_for(read_event(response), timeout=5)
    assert name == "image_generation.partial_image" and first is not None and first["partial_image_index"] == 0
    assert fake.stream_gate is not None and not fake.stream_gate.is_set()  # the upstream is still holding its last event
    fake.stream_gate.set()
    _, second = await read_event(response)
    name, last = await read_event(response)
    assert second is not None and second["partial_image_index"] == 1
    assert name == "image_generation.completed" and last is not None
    assert base64.b64decode(last["b64_json"]) == PNG and last["usage"]["total_tokens"] == 105
    assert await read_event(response) == (None, None)
    sent = fake.recorder.received[0].json()
    assert sent["stream"] is True and sent["partial_images"] == 2


async def test_the_sdk_stream_iterator_consumes_the_proxy(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    events = [
        event async for event in await sdk.images.generate(model="gpt-image-1.5", prompt="p", stream=True, partial_images=1)
    ]
    assert [event.type for event in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert base64.b64decode(events[-1].b64_json) == PNG
    await sdk.close()


async def test_a_streamed_final_image_is_hosted_when_the_client_wants_urls(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    response = await client.post(
        "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "response_format": "url"}
    )
    name, last = await read_event(response)
    assert name == "image_generation.completed" and last is not None
    assert "b64_json" not in last
    hosted = await client.get(last["url"][last["url"].index("/images/") :])
    assert await hosted.read() == PNG


async def test_edits_stream_image_edit_events(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, fake)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    stream = await sdk.images.edit(model="gpt-image-1.5", prompt="p", image=("a.png", tiny_png(), "image/png"), stream=True)
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.completed"]
    assert {part.name: part.text for part in fake.forms[0] if part.filename is None}["stream"] == "true"
    await sdk.close()


async def test_non_streaming_channels_are_emulated_with_keepalives(
    make_proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming_shell, "KEEPALIVE_EVERY", 0.02)
    kling = FakeKling(polls_before_done=4)
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI(), kling)
    response = await client.post("/v1/images/generations", json={"model": "kling-v2", "prompt": "p", "n": 2, "stream": True})
    assert response.status == 200
    text = (await response.read()).decode()
    assert text.count(": keep-alive") >= 2
    events = [json.loads(block.split("data: ", 1)[1]) for block in text.split("\n\n") if "data: " in block]
    assert [event["type"] for event in events] == ["image_generation.completed"] * 2
    # Kling bills no tokens: every event still carries the usage object the SDK types declare, all zeros.
    assert [event["usage"]["total_tokens"] for event in events] == [0, 0]


async def test_stream_from_the_local_model(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    events = [event async for event in await sdk.images.generate(model="local-image", prompt="p", size="64x64", stream=True)]
    assert [event.type for event in events] == ["image_generation.completed"]
    assert base64.b64decode(events[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
    assert events[0].size == "64x64"
    await sdk.close()


async def test_local_completed_events_carry_every_field_of_openais_event(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    before = int(time.time())
    events = [event async for event in await sdk.images.generate(model="local-image", prompt="p", size="48x32", n=2,
                                                                   stream=True)]
    assert [event.type for event in events] == ["image_generation.completed"] * 2
    for event in events:
        assert before <= event.created_at <= time.time()
        assert (event.size, event.quality, event.background, event.output_format) == ("48x32", "auto", "auto", "png")
        assert (event.usage.input_tokens, event.usage.output_tokens, event.usage.total_tokens) == (0, 0, 0)
        assert event.usage.input_tokens_details.image_tokens == 0
    await sdk.close()


async def test_emulated_streams_get_revised_prompts_and_count_against_the_key(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    response = await client.post("/v1/images/generations", json={"model": "kling-legacy", "prompt": "a quiet harbour",
                                                                 "n": 2, "stream": True})
    events = [json.loads(block.split("data: ", 1)[1]) for block in (await response.text()).split("\n\n") if "data: " in block]
    assert [event["revised_prompt"] for event in events] == ["a quiet harbour"] * 2
    metrics = await (await client.get("/metrics")).text()
    assert 'imagegate_key_images_total{key="anonymous"} 2.0' in metrics


async def test_native_streams_count_images_and_tokens_against_the_key(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    response = await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True})
    name, last = await read_event(response)
    assert name == "image_generation.completed" and last is not None
    await response.read()
    metrics = await (await client.get("/metrics")).text()
    assert 'imagegate_key_images_total{key="anonymous"} 1.0' in metrics
    total = last["usage"]["total_tokens"]
    assert total > 0 and f'imagegate_key_tokens_total{{key="anonymous",kind="total"}} {float(total)}' in metrics


async def test_native_streams_take_retry_rounds_like_any_request(
    make_proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeOpenAI()
    fake.failures.append((503, {"error": {"message": "overloaded", "type": "server_error"}}, {"Retry-After": "0"}))
    client = await proxy(make_proxy, aiohttp_server, fake)
    with caplog.at_level(logging.INFO, logger="imagegate.access"):
        response = await client.post("/v1/images/generations",
                                     json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "retries": 1})
        assert response.status == 200
        name, last = await read_event(response)
        await response.read()
    assert name == "image_generation.completed" and last is not None
    assert len(fake.recorder.received) == 2  # the 503, then the stream
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "imagegate.access"]
    assert [(line["status"], line["attempts"]) for line in lines] == [(200, 2)]


async def test_an_error_before_the_first_event_keeps_its_status(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    fake.failures.append((400, {"error": {"message": "Bad size.", "type": "invalid_request_error", "param": "size"}}, {}))
    client = await proxy(make_proxy, aiohttp_server, fake)
    response = await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True})
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "size"


async def test_an_error_mid_stream_is_an_error_event_then_the_end(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(stream_error_after=1)
    client = await proxy(make_proxy, aiohttp_server, fake)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for event in await sdk.images.generate(model="gpt-image-1.5", prompt="p", stream=True, partial_images=2):
            seen.append(event.type)
    assert seen == ["image_generation.partial_image"]
    assert "could not be finished" in str(caught.value)
    await sdk.close()


async def test_a_client_that_leaves_mid_stream_closes_the_upstream(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(stream_gate=asyncio.Event())
    client = await proxy(make_proxy, aiohttp_server, fake)
    response = await client.post(
        "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "partial_images": 1}
    )
    name, _ = await read_event(response)
    assert name == "image_generation.partial_image"
    response.close()  # the client goes away while the upstream is still generating
    await asyncio.sleep(0.2)
    assert fake.stream_gate is not None
    fake.stream_gate.set()
    await asyncio.wait_for(fake.stream_disconnected.wait(), timeout=5)


async def test_stream_and_async_together_are_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    response = await client.post(
        "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "async": True}
    )
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "stream"


async def test_a_stream_that_fails_mid_way_counts_only_what_was_delivered(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI(stream_error_after=1))
    response = await client.post("/v1/images/generations",
                                 json={"model": "gpt-image-1.5", "prompt": "p", "stream": True, "partial_images": 2})
    events = [await read_event(response) for _ in range(3)]
    assert [name for name, _ in events] == ["image_generation.partial_image", "error", None]
    metrics = await (await client.get("/metrics")).text()
    # A preview is no image, and the failed image brought no usage: nothing is counted against the key.
    assert 'imagegate_key_images_total{key="anonymous"} 0.0' in metrics
    assert 'imagegate_key_tokens_total{key="anonymous"' not in metrics
