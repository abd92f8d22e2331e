"""FLUX (BFL) and Replicate through the proxy: polling URLs as given, re-hosting short-lived results, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.factories import rules_yaml, serve_fake
from tests.fakes import flux as flux_fake
from tests.fakes import replicate as replicate_fake
from tests.fakes.flux import FakeFlux
from tests.fakes.replicate import FakeReplicate

RULES = rules_yaml(
    {
        "flux-pro-1.1": {"channels": ["bfl"], "max_n": 4, "passthrough": ["seed", "output_format"]},
        "flux-schnell": {
            "channels": ["replicate"],
            "upstream_model": "black-forest-labs/flux-schnell",
            "max_n": 4,
            "passthrough": ["seed", "output_format", "extra_body"],
        },
    },
    channels={
        "bfl": {
            "type": "flux",
            "base_url": "${BFL}",
            "api_key": "${BFL_API_KEY}",
            "poll_interval": 0.01,
            "max_poll_interval": 0.02,
        },
        "replicate": {
            "type": "replicate",
            "base_url": "${REPLICATE}/v1",
            "api_key": "${REPLICATE_API_TOKEN}",
            "wait": "${WAIT:-60}",
            "poll_interval": "${POLL:-0.01}",
            "max_poll_interval": 0.5,
        },
    },
)


async def proxy(make_proxy: Any, aiohttp_server: Any, bfl: FakeFlux, replicate: FakeReplicate, **env: str) -> Any:
    values = {
        "BFL": await serve_fake(aiohttp_server, bfl),
        "BFL_API_KEY": bfl.api_key,
        "REPLICATE": await serve_fake(aiohttp_server, replicate),
        "REPLICATE_API_TOKEN": replicate.api_key,
        **env,
    }
    return await make_proxy(RULES, values)


async def test_flux_result_is_rehosted_before_its_url_expires(make_proxy: Any, aiohttp_server: Any) -> None:
    bfl = FakeFlux(polls_before_done=2)
    client = await proxy(make_proxy, aiohttp_server, bfl, FakeReplicate())
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    answer = await sdk.images.generate(model="flux-pro-1.1", prompt="a dune", n=2, size="1024x1024", response_format="url")
    assert answer.data is not None and len(answer.data) == 2
    for item in answer.data:
        url = item.url or ""
        assert url.startswith(str(client.make_url("/images/")))  # the proxy's own URL, not BFL's 10-minute one
        hosted = await client.get(url[url.index("/images/") :])
        assert await hosted.read() == flux_fake.PNG
    submits = [item for item in bfl.recorder.received if item.method == "POST"]
    assert len(submits) == 2  # no native n: one task per image
    assert submits[0].json() == {"prompt": "a dune", "width": 1024, "height": 1024}
    assert submits[0].header("x-key") == bfl.api_key
    downloads = [item for item in bfl.recorder.received if item.path.startswith("/files/")]
    assert downloads and all(item.header("x-key") is None for item in downloads)
    await sdk.close()


async def test_flux_content_moderation_is_a_400(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, FakeFlux(moderate="Content Moderated"), FakeReplicate())
    response = await client.post("/v1/images/generations", json={"model": "flux-pro-1.1", "prompt": "x"})
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "image_generation_user_error"


async def test_flux_out_of_credits_is_not_retried(make_proxy: Any, aiohttp_server: Any) -> None:
    bfl = FakeFlux(fail_create_with=flux_fake.NO_CREDITS)
    client = await proxy(make_proxy, aiohttp_server, bfl, FakeReplicate())
    response = await client.post("/v1/images/generations", json={"model": "flux-pro-1.1", "prompt": "x", "retries": 2})
    assert response.status == 402
    assert (await response.json())["error"]["code"] == "insufficient_quota"
    assert len(bfl.recorder.received) == 1


async def test_replicate_finishes_within_prefer_wait(make_proxy: Any, aiohttp_server: Any) -> None:
    replicate = FakeReplicate(finish_within_wait=True)
    client = await proxy(make_proxy, aiohttp_server, FakeFlux(), replicate)
    response = await client.post(
        "/v1/images/generations",
        json={"model": "flux-schnell", "prompt": "a fox", "size": "1792x1024", "extra_body": {"num_inference_steps": 4}},
    )
    assert response.status == 200
    assert len(replicate.recorder.received) == 1  # answered by the create call itself
    sent = replicate.recorder.received[0]
    assert sent.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert sent.header("Prefer") == "wait=60"
    assert sent.header("Authorization") == f"Bearer {replicate.api_key}"
    assert sent.json() == {"input": {"prompt": "a fox", "aspect_ratio": "16:9", "num_inference_steps": 4}}


async def test_replicate_polls_then_fails_on_nsfw(make_proxy: Any, aiohttp_server: Any) -> None:
    replicate = FakeReplicate(moderate=True, polls_before_done=1)
    client = await proxy(make_proxy, aiohttp_server, FakeFlux(), replicate, WAIT="0")
    response = await client.post("/v1/images/generations", json={"model": "flux-schnell", "prompt": "x"})
    assert response.status == 400
    assert replicate_fake.NSFW[:20] in (await response.json())["error"]["message"]


@pytest.mark.parametrize("wait", ["0"])
async def test_replicate_prediction_is_cancelled_when_the_client_leaves(make_proxy: Any, aiohttp_server: Any, wait: str) -> None:
    replicate = FakeReplicate(polls_before_done=10_000)
    client = await proxy(make_proxy, aiohttp_server, FakeFlux(), replicate, WAIT=wait, POLL="0.2")
    request = asyncio.ensure_future(client.post("/v1/images/generations", json={"model": "flux-schnell", "prompt": "x"}))
    for _ in range(100):
        if replicate.predictions:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    request.cancel()
    for _ in range(100):
        if replicate.cancelled:
            break
        await asyncio.sleep(0.02)
    assert replicate.cancelled == list(replicate.predictions)


async def test_three_failed_polls_are_a_502_poll_failure_on_flux_and_replicate(make_proxy: Any, aiohttp_server: Any) -> None:
    bfl, replicate = FakeFlux(polls_before_done=1, fail_polls=3), FakeReplicate(polls_before_done=1, fail_polls=3)
    client = await proxy(make_proxy, aiohttp_server, bfl, replicate, WAIT="0")
    for model, fake in (("flux-pro-1.1", bfl), ("flux-schnell", replicate)):
        response = await client.post("/v1/images/generations", json={"model": model, "prompt": "x", "retries": 3})
        assert response.status == 502, model
        assert (await response.json())["error"]["code"] == "upstream_poll_failed"
        assert [item.method for item in fake.recorder.received] == ["POST", "GET", "GET", "GET"], model
