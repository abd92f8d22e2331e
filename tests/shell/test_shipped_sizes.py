"""The shipped rules.yaml through the real app: a size the provider would reject never leaves the proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.adapters import SCHEMAS
from proxy.core.rules import parse_rules
from tests.fakes.openai import KEY, FakeOpenAI

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()
# Models that take any size, each said so beside it in rules.yaml: the built-in generator, a self-hosted
# WebUI, and SeedEdit (whose only size is `adaptive`, always sent whatever the client asked).
ANY_SIZE = frozenset({"local-image", "sd-webui", "doubao-seededit-3.0-i2i"})


async def start(make_proxy: Any, aiohttp_server: Any, fake: FakeOpenAI) -> Any:
    server = await aiohttp_server(fake.app())
    return await make_proxy(SHIPPED, {"OPENAI_BASE_URL": str(server.make_url("/v1")), "OPENAI_API_KEY": KEY})


async def generate(client: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/images/generations", json=body)
    return response.status, await response.json()


async def test_gpt_image_1_5_refuses_512_without_calling_the_upstream(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    status, body = await generate(client, {"model": "gpt-image-1.5", "prompt": "a red fox", "size": "512x512"})
    assert status == 400
    assert body["error"] == {
        "message": "Invalid size '512x512' for model 'gpt-image-1.5'. Supported sizes: 1024x1024, 1536x1024, 1024x1536, auto.",
        "type": "invalid_request_error",
        "param": "size",
        "code": "invalid_size",
    }
    assert fake.recorder.received == []


@pytest.mark.parametrize("model", ["gpt-image-1.5", "gpt-image-1-mini"])
async def test_gpt_image_documented_size_reaches_the_upstream(make_proxy: Any, aiohttp_server: Any, model: str) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    status, body = await generate(client, {"model": model, "prompt": "a red fox", "size": "1536x1024"})
    assert status == 200, body
    assert len(fake.recorder.received) == 1
    sent = fake.recorder.received[0].json()
    assert (sent["model"], sent["size"], sent["quality"]) == (model, "1536x1024", "auto")


async def test_gpt_image_2_refuses_a_size_outside_its_range(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    status, body = await generate(client, {"model": "gpt-image-2", "prompt": "a red fox", "size": "4000x1000"})
    assert status == 400
    assert body["error"]["param"] == "size"
    assert body["error"]["message"] == (
        "Invalid size '4000x1000' for model 'gpt-image-2': width and height must be multiples of 16. Allowed: WIDTHxHEIGHT "
        "with sides multiples of 16, each side at most 3840 px, width x height 655,360 to 8,294,400 pixels, "
        "aspect ratio at most 3:1; or 'auto'."
    )
    status, body = await generate(client, {"model": "gpt-image-2-2026-04-21", "prompt": "a fox", "size": "512x512"})
    assert status == 400 and body["error"]["param"] == "size"
    assert "width x height must be at least 655,360 pixels" in body["error"]["message"]
    assert fake.recorder.received == []


@pytest.mark.parametrize("size", ["3840x2160", "2048x1152", "auto"])
async def test_gpt_image_2_documented_size_reaches_the_upstream(make_proxy: Any, aiohttp_server: Any, size: str) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    status, body = await generate(client, {"model": "gpt-image-2", "prompt": "a red fox", "size": size})
    assert status == 200, body
    assert [received.json()["size"] for received in fake.recorder.received] == [size]


def test_every_shipped_model_says_which_sizes_it_takes() -> None:
    rules = parse_rules(SHIPPED, {}, SCHEMAS)
    unbounded = sorted(rule.pattern for rule in rules.models if rule.sizes is None and rule.size_rules is None)
    assert unbounded == sorted(ANY_SIZE)
