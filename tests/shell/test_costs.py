"""What an answer cost (`metadata.cost_usd`), at the model's price in the rules: per image by size and
quality, per reported token, per megapixel; only delivered images count."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.factories import LOCAL, OPENAI, auth, poll_task, rules_yaml, url_of
from tests.fakes.openai import KEY, PNG, FakeOpenAI
from tests.fakes.seedream import FakeSeedream
from tests.fakes.zhipu import FakeZhipu

MODELS: dict[str, Any] = {
    "dall-e-2": {"channels": ["openai"], "price": {"per_image": {"256x256": 0.016, "512x512": 0.018, "*": 0.02}}},
    "gpt-image-1": {
        "channels": ["openai"],
        "price": {"per_million_tokens": {"text_input": 5, "image_input": 10, "image_output": 40}, "per_image": 0.25},
    },
    "local-image": {"channels": ["local"], "price": {"per_megapixel": 0.5}},
    "local-unpriced": {"channels": ["local"]},
    "cogview-4": {"channels": ["zhipu"], "max_n": 4, "price": {"per_image": {"* hd": 0.08, "*": 0.04}}},
    "sketch-*": {"channels": ["local"], "price": {"per_image": 0.01}},
}
CHANNELS: dict[str, Any] = {
    "openai": OPENAI,
    "local": LOCAL,
    "zhipu": {"type": "zhipu", "base_url": "${ZHIPU}/api/paas/v4", "api_key": "${ZHIPU_API_KEY}"},
}
RULES = rules_yaml(MODELS, CHANNELS, server={"api_keys": ["client-key-1"]})
SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()


async def proxy(make_proxy: Any, aiohttp_server: Any, fake: FakeOpenAI, zhipu: FakeZhipu | None = None) -> Any:
    zhipu = zhipu or FakeZhipu()
    env = {
        "UPSTREAM": url_of(await aiohttp_server(fake.app())),
        "OPENAI_API_KEY": KEY,
        "ZHIPU": url_of(await aiohttp_server(zhipu.app())),
        "ZHIPU_API_KEY": zhipu.api_key,
    }
    return await make_proxy(RULES, env)


async def generate(client: Any, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/images/generations", json=body, headers=auth())
    answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    return answer


async def test_per_image_prices_follow_the_size_of_each_delivered_image(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    small = await generate(client, model="dall-e-2", prompt="p", n=3, size="256x256")
    assert len(small["data"]) == 3 and small["metadata"]["cost_usd"] == 0.048
    large = await generate(client, model="dall-e-2", prompt="p", size="1024x1024")
    assert large["metadata"]["cost_usd"] == 0.02


async def test_reported_tokens_are_what_a_gpt_image_costs(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    body = await generate(client, model="gpt-image-1", prompt="p")
    # The fake reports 10 text tokens in and 4,160 image tokens out.
    expected = (Decimal(10) * 5 + Decimal(4160) * 40) / Decimal(1_000_000)
    assert body["usage"]["output_tokens"] == 4160
    assert body["metadata"]["cost_usd"] == float(expected)


async def test_megapixels_are_counted_from_the_delivered_size(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    body = await generate(client, model="local-image", prompt="p", n=2, size="1000x500")
    assert body["metadata"]["cost_usd"] == 0.5  # two images of half a megapixel at $0.50 each
    unpriced = await generate(client, model="local-unpriced", prompt="p")
    assert "cost_usd" not in unpriced["metadata"]


async def test_an_async_task_reports_its_cost_and_a_failure_costs_nothing(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, fake)
    created = await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p", "n": 2, "async": True},
                                headers=auth())
    _, task = await poll_task(client, (await created.json())["task_id"], auth(), "succeed")
    assert task["metadata"]["cost_usd"] == 0.04
    fake.failures.append((500, {"error": {"message": "boom", "type": "server_error"}}, {}))
    failed = await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=auth())
    body = await failed.json()
    assert failed.status == 502 and "metadata" not in body


async def test_a_partial_fan_out_costs_what_was_delivered(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu(moderate_every=2)
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI(), zhipu)
    # CogView makes one image per call: four calls, every second refused.
    body = await generate(client, model="cogview-4", prompt="p", n=4, quality="hd")
    assert len(body["data"]) == 2 and body["metadata"]["failed"]["count"] == 2
    assert body["metadata"]["cost_usd"] == 0.16


async def test_cost_and_images_are_counted_by_key_model_and_channel_answered_or_streamed(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    await generate(client, model="dall-e-2", prompt="p", n=2, size="512x512")
    streamed = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p", "stream": True},
                                 headers=auth())
    assert "image_generation.completed" in await streamed.text()
    metrics = await (await client.get("/metrics", headers=auth())).text()
    series = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line.startswith(("imagegate_cost_usd_total{", "imagegate_images_total{"))}
    name = next(key for key in series if "dall-e-2" in key).split('key="')[1].split('"')[0]
    labels = f'channel="openai",key="{name}",model="%s"'
    # The stream's completed event reported 5 input and 100 output tokens (the fake's figures).
    streamed_cost = float((Decimal(5) * 5 + Decimal(100) * 40) / Decimal(1_000_000))
    assert series == {
        "imagegate_images_total{" + labels % "dall-e-2" + "}": 2.0,
        "imagegate_cost_usd_total{" + labels % "dall-e-2" + "}": 0.036,
        "imagegate_images_total{" + labels % "gpt-image-1" + "}": 1.0,
        "imagegate_cost_usd_total{" + labels % "gpt-image-1" + "}": streamed_cost,
    }


async def test_a_shipped_dall_e_3_call_costs_what_gpt_image_2_reports_at_its_token_rates(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    fake = FakeOpenAI()
    upstream = url_of(await aiohttp_server(fake.app()), "/v1")
    client = await make_proxy(SHIPPED, {"OPENAI_BASE_URL": upstream, "OPENAI_API_KEY": KEY})
    response = await client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "p", "quality": "hd"})
    body = await response.json()
    assert response.status == 200, body
    assert fake.recorder.received[0].json()["model"] == "gpt-image-2"
    assert body["data"][0]["url"] and body["metadata"]["upstream_model"] == "gpt-image-2"
    # The fake reports 10 text tokens in and 4,160 image tokens out; gpt-image-2: $5 and $30 per million.
    expected = (Decimal(10) * 5 + Decimal(4160) * 30) / Decimal(1_000_000)
    assert body["metadata"]["cost_usd"] == float(expected) == 0.12485


async def test_the_names_a_glob_serves_are_counted_under_its_pattern(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI())
    for name in ("sketch-a", "sketch-b", "sketch-" + "x" * 2000):  # a client may invent any number of names
        await generate(client, model=name, prompt="p", size="256x256")
    metrics = await (await client.get("/metrics", headers=auth())).text()
    series = [line for line in metrics.splitlines() if line.startswith(("imagegate_images_total{", "imagegate_cost_usd_total{"))]
    assert len(series) == 2 and all('model="sketch-*"' in line for line in series)
    assert [float(line.split(" ")[1]) for line in series] == [3.0, 0.03]


async def test_an_image_lost_on_the_way_costs_nothing_when_priced_by_tokens(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, fake)
    good = base64.b64encode(PNG).decode()
    usage = {"input_tokens": 50, "output_tokens": 2000, "total_tokens": 2050}
    fake.failures.append((200, {"created": 1, "data": [{"b64_json": good}, {"b64_json": "not base64!"}], "usage": usage}, {}))
    body = await generate(client, model="gpt-image-1", prompt="p", n=2, response_format="url")
    assert len(body["data"]) == 1 and body["metadata"]["failed"]["count"] == 1
    assert body["metadata"]["cost_usd"] == 0.04025  # the prompt ($5 a million) and one image's 1,000 tokens ($40)


async def test_a_seedream_stream_is_charged_the_tokens_its_closing_event_reports(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    ark = FakeSeedream()
    rules = rules_yaml(
        {"seedream": {"channels": ["ark"], "upstream_model": "doubao-seedream-4-0-250828",
                      "price": {"per_million_tokens": {"image_output": 10}}}},
        {"ark": {"type": "seedream", "base_url": "${ARK}/api/v3", "api_key": "${ARK_API_KEY}"}},
        server={"api_keys": ["client-key-1"]},
    )
    client = await make_proxy(rules, {"ARK": url_of(await aiohttp_server(ark.app())), "ARK_API_KEY": ark.api_key})
    sync = await generate(client, model="seedream", prompt="p")
    streamed = await client.post("/v1/images/generations", json={"model": "seedream", "prompt": "p", "stream": True},
                                 headers=auth())
    assert "image_generation.completed" in await streamed.text()
    metrics = await (await client.get("/metrics", headers=auth())).text()
    [cost] = [float(line.split(" ")[1]) for line in metrics.splitlines() if line.startswith("imagegate_cost_usd_total{")]
    assert sync["metadata"]["cost_usd"] == 0.16384 and cost == 2 * 0.16384  # 16,384 output tokens at $10 a million, each
