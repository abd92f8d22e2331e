"""Shell tests: the fake Kling upstream checks the JWT like Kling and runs the documented task flow."""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

from yarl import URL

from proxy.adapters.kling import credential
from proxy.core.rules import Channel
from tests.fakes.kling import ARREARS, PNG, RISK, FakeKling

ROUTE = "/v1/images/generations"


def token(fake: FakeKling, now: float, secret: str | None = None) -> dict[str, str]:
    channel = Channel(name="kling", type="kling", settings=MappingProxyType({}))
    jwt, _ = credential(channel, f"{fake.access_key}:{secret or fake.secret_key}", now)
    return {"Authorization": f"Bearer {jwt}"}


async def test_create_poll_and_fetch_the_image(aiohttp_client: Any) -> None:
    fake = FakeKling(polls_before_done=2)
    client = await aiohttp_client(fake.app())
    auth = token(fake, time.time())
    body = {"model_name": "kling-v2", "prompt": "a fox", "n": 2, "aspect_ratio": "16:9"}
    created = await client.post(ROUTE, json=body, headers=auth)
    assert created.status == 200
    data = (await created.json())["data"]
    assert data["task_status"] == "submitted"
    statuses = []
    for _ in range(3):
        polled = await client.get(f"{ROUTE}/{data['task_id']}", headers=auth)
        statuses.append((await polled.json())["data"])
    assert [item["task_status"] for item in statuses] == ["processing", "processing", "succeed"]
    images = statuses[-1]["task_result"]["images"]
    assert [image["index"] for image in images] == [0, 1]
    picture = await client.get(URL(images[0]["url"]).path)
    assert await picture.read() == PNG
    assert fake.recorder.received[0].json() == body


async def test_auth_is_checked_like_kling(aiohttp_client: Any) -> None:
    fake = FakeKling()
    client = await aiohttp_client(fake.app())
    body = {"model_name": "kling-v1", "prompt": "p"}
    cases = [
        ({}, 1001),
        ({"Authorization": "Bearer not-a-jwt"}, 1002),
        (token(fake, time.time(), secret="wrong-secret"), 1002),
        (token(fake, time.time() - 4000), 1004),
        (token(fake, time.time() + 600), 1003),
    ]
    for headers, code in cases:
        response = await client.post(ROUTE, json=body, headers=headers)
        assert response.status == 401
        assert (await response.json())["code"] == code


async def test_knobs(aiohttp_client: Any) -> None:
    fake = FakeKling(polls_before_done=0, fail_task_with=RISK, fail_polls=1)
    client = await aiohttp_client(fake.app())
    auth = token(fake, time.time())
    created = await client.post(ROUTE, json={"model_name": "kling-v1", "prompt": "p"}, headers=auth)
    task_id = (await created.json())["data"]["task_id"]
    first = await client.get(f"{ROUTE}/{task_id}", headers=auth)
    assert (first.status, (await first.json())["code"]) == (500, 5000)
    second = await (await client.get(f"{ROUTE}/{task_id}", headers=auth)).json()
    assert (second["data"]["task_status"], second["data"]["task_status_msg"]) == ("failed", RISK)
    unknown = await client.get(f"{ROUTE}/nope", headers=auth)
    assert (unknown.status, (await unknown.json())["code"]) == (404, 1203)
    fake.moderate = True
    moderated = await client.post(ROUTE, json={"model_name": "kling-v1", "prompt": "p"}, headers=auth)
    assert (moderated.status, (await moderated.json())["code"]) == (400, 1301)
    fake.fail_create_with = ARREARS
    arrears = await client.post(ROUTE, json={"model_name": "kling-v1", "prompt": "p"}, headers=auth)
    assert (arrears.status, (await arrears.json())["code"]) == (429, 1101)
