"""Shell tests: the fake Gemini API answers its documented shapes, and accepts the adapter's real calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.adapters.base import Done, Fail, Step
from proxy.adapters.gemini import SPEC
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import round_trip
from tests.fakes.gemini import PNG_B64, FakeGemini

ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MODELS = "/v1beta/models"


async def test_fake_serves_predict_and_generate_content_and_checks_the_key(aiohttp_client: ClientMaker) -> None:
    fake = FakeGemini()
    client = await aiohttp_client(fake.app())
    key = {"x-goog-api-key": fake.api_key}

    predict = await client.post(f"{MODELS}/imagen-4.0-generate-001:predict", headers=key,
                                json={"instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 2}})
    generate = await client.post(f"{MODELS}/gemini-2.5-flash-image:generateContent", headers=key, json={
        "contents": [{"parts": [{"text": "a fox"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "21:9"}}})
    no_key = await client.post(f"{MODELS}/imagen-4.0-generate-001:predict", json={"instances": [{"prompt": "x"}]})
    bad_key = await client.post(f"{MODELS}/imagen-4.0-generate-001:predict", headers={"x-goog-api-key": "nope"},
                                json={"instances": [{"prompt": "x"}]})

    assert predict.status == 200
    assert await predict.json() == {"predictions": [{"mimeType": "image/png", "bytesBase64Encoded": PNG_B64}] * 2}
    assert generate.status == 200
    assert (await generate.json())["candidates"] == [{
        "content": {"role": "model", "parts": [{"text": fake.text}, {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]},
        "finishReason": "STOP", "index": 0}]
    assert (no_key.status, (await no_key.json())["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert (await bad_key.json())["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert fake.recorder.received[1].json()["generationConfig"]["imageConfig"] == {"aspectRatio": "21:9"}


async def run(client: TestClient[Any, Any], fake: FakeGemini, body: dict[str, Any]) -> Step:
    """One adapter round trip against the fake: start, send the Call, advance with what came back."""
    job = factories.make_job(body, spec=SPEC, finished=False,
                             channel="gemini", base_url=str(client.make_url("/v1beta")), api_key=fake.api_key, max_n=4)
    return await round_trip(client, SPEC, job)


async def test_the_adapters_calls_are_accepted_and_moderation_surfaces(aiohttp_client: ClientMaker) -> None:
    fake = FakeGemini()
    client = await aiohttp_client(fake.app())

    imagen = await run(client, fake, {"model": "imagen-4.0-generate-001", "prompt": "a fox", "size": "1792x1024"})
    flash = await run(client, fake, {"model": "gemini-2.5-flash-image", "prompt": "a fox", "size": "1024x1536"})
    fake.image_safety = True
    blocked = await run(client, fake, {"model": "gemini-2.5-flash-image", "prompt": "a fox"})

    assert imagen == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/png"),)))
    assert isinstance(flash, Done)
    assert flash.result.images == (GeneratedImage(b64_json=PNG_B64, content_type="image/png", revised_prompt=fake.text),)
    assert isinstance(blocked, Fail) and blocked.error.code == "moderation_blocked"
    assert fake.recorder.received[0].json()["parameters"] == {"sampleCount": 1, "aspectRatio": "16:9"}
    assert fake.recorder.received[1].json()["generationConfig"]["imageConfig"] == {"aspectRatio": "2:3"}
