"""Retired model names through the proxy on the shipped rules: legacy clients keep working unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai

from tests.fakes.openai import KEY, PNG, FakeOpenAI

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()


async def start(make_proxy: Any, aiohttp_server: Any, fake: FakeOpenAI) -> Any:
    server = await aiohttp_server(fake.app())
    return await make_proxy(SHIPPED, {"OPENAI_BASE_URL": str(server.make_url("/v1")), "OPENAI_API_KEY": KEY})


async def test_dall_e_3_call_is_a_valid_current_request_and_answers_with_a_url(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    raw = await sdk.images.with_raw_response.generate(
        model="dall-e-3", prompt="a red fox", size="1792x1024", quality="hd", style="vivid", response_format="url"
    )
    answer = raw.parse()
    sent = fake.recorder.received[0].json()
    assert sent == {
        "model": "gpt-image-2",
        "prompt": "a red fox\n\nStyle: vivid, hyper-real and dramatic.",
        "n": 1,
        "size": "1536x1024",
        "quality": "high",
    }
    assert answer.data is not None and len(answer.data) == 1
    item = answer.data[0]
    assert item.revised_prompt == "a red fox" and item.b64_json is None
    url = item.url or ""
    image = await client.get(url[url.index("/images/") :])
    assert image.status == 200 and await image.read() == PNG
    metadata = raw.http_response.json()["metadata"]
    assert metadata["model"] == "dall-e-3" and metadata["upstream_model"] == "gpt-image-2"
    await sdk.close()


async def test_dall_e_2_and_gpt_image_1_are_served_too(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    small = await sdk.images.generate(model="dall-e-2", prompt="a cat", size="256x256", n=2)
    assert small.data is not None and all(item.url for item in small.data)
    assert fake.recorder.received[0].json() == {
        "model": "gpt-image-2",
        "prompt": "a cat",
        "n": 2,
        "size": "1024x1024",
        "quality": "low",
    }
    current = await sdk.images.generate(model="gpt-image-1", prompt="a cat", background="transparent")
    assert current.data is not None and current.data[0].b64_json
    assert fake.recorder.received[1].json()["model"] == "gpt-image-2"
    await sdk.close()


async def test_legacy_checks_still_answer_like_the_legacy_model(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    response = await client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "p", "size": "1536x1024"})
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "size"
    assert fake.recorder.received == []
