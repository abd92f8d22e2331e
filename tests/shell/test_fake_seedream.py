"""Shell tests: the fake Ark Seedream upstream speaks the documented success, batch and error shapes."""

from __future__ import annotations

import base64
from typing import Any

from yarl import URL

from tests.fakes.seedream import CREATED, ITEM_MODERATED, PNG, QUOTA, FakeSeedream

ROUTE = "/api/v3/images/generations"
AUTH = {"Authorization": "Bearer ark-test-key"}


async def test_answers_the_documented_success_shape(aiohttp_client: Any) -> None:
    fake = FakeSeedream()
    client = await aiohttp_client(fake.app())
    body = {"model": "doubao-seedream-4-0-250828", "prompt": "a cat", "size": "2048x2048", "watermark": False}
    response = await client.post(ROUTE, json=body, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer["model"] == "doubao-seedream-4-0-250828"
    assert answer["created"] == CREATED
    assert answer["usage"] == {"generated_images": 1, "output_tokens": 16384, "total_tokens": 16384}
    assert answer["data"][0]["size"] == "2048x2048"
    image = await client.get(URL(answer["data"][0]["url"]).path)
    assert await image.read() == PNG
    assert fake.recorder.received[0].json() == body


async def test_batch_with_a_moderated_item_and_b64(aiohttp_client: Any) -> None:
    fake = FakeSeedream(moderate_items=frozenset({1}))
    client = await aiohttp_client(fake.app())
    body = {
        "model": "doubao-seedream-4-5-251128",
        "prompt": "four seasons",
        "response_format": "b64_json",
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": 2},
    }
    answer = await (await client.post(ROUTE, json=body, headers=AUTH)).json()
    assert base64.b64decode(answer["data"][0]["b64_json"]) == PNG
    assert answer["data"][1] == {"error": ITEM_MODERATED}
    assert answer["usage"]["generated_images"] == 1


async def test_rejects_a_wrong_key_a_small_size_and_answers_canned_failures(aiohttp_client: Any) -> None:
    fake = FakeSeedream()
    client = await aiohttp_client(fake.app())
    wrong = await client.post(ROUTE, json={"model": "m", "prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "AuthenticationError"
    too_small = {"model": "doubao-seedream-4-5-251128", "prompt": "x", "size": "1024x1024"}
    small = await client.post(ROUTE, json=too_small, headers=AUTH)
    assert small.status == 400
    assert (await small.json())["error"]["param"] == "size"
    fake.fail_with = QUOTA
    quota = await client.post(ROUTE, json={"model": "m", "prompt": "x"}, headers=AUTH)
    assert quota.status == 429
    assert (await quota.json())["error"]["code"] == "QuotaExceeded"
