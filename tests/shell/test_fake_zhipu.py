"""Shell tests: the fake Zhipu upstream speaks CogView's documented success and error shapes."""

from __future__ import annotations

from typing import Any

from yarl import URL

from tests.fakes.zhipu import ARREARS, CREATED, PNG, FakeZhipu

ROUTE = "/api/paas/v4/images/generations"
AUTH = {"Authorization": "Bearer zhipu-test-key"}


async def test_answers_the_documented_success_shape(aiohttp_client: Any) -> None:
    fake = FakeZhipu()
    client = await aiohttp_client(fake.app())
    body = {"model": "cogview-4-250304", "prompt": "a cat", "size": "1344x768", "watermark_enabled": False}
    response = await client.post(ROUTE, json=body, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer["created"] == CREATED
    assert answer["content_filter"] == [{"role": "assistant", "level": 3}]
    assert len(answer["data"]) == 1
    image = await client.get(URL(answer["data"][0]["url"]).path)
    assert image.status == 200
    assert await image.read() == PNG
    assert fake.recorder.received[0].json() == body
    assert fake.recorder.received[0].header("authorization") == "Bearer zhipu-test-key"


async def test_rejects_a_wrong_key_and_answers_canned_failures(aiohttp_client: Any) -> None:
    fake = FakeZhipu()
    client = await aiohttp_client(fake.app())
    wrong = await client.post(ROUTE, json={"model": "cogview-4", "prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "1002"
    bad_size = await client.post(ROUTE, json={"model": "cogview-3-flash", "prompt": "x", "size": "1000x1000"}, headers=AUTH)
    assert bad_size.status == 400
    assert (await bad_size.json())["error"]["code"] == "1214"
    fake.fail_with = ARREARS
    arrears = await client.post(ROUTE, json={"model": "cogview-4", "prompt": "x"}, headers=AUTH)
    assert arrears.status == 429
    assert (await arrears.json())["error"]["code"] == "1113"
