"""Task providers (Kling, DashScope) through the proxy: create, poll, finish, fail, cancel."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.factories import rules_yaml, serve_fake, url_of
from tests.fakes import dashscope as dashscope_fake
from tests.fakes import kling as kling_fake
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.kling import FakeKling

RULES = rules_yaml(
    {
        "kling-v2": {"channels": ["kling"], "max_n": 9, "passthrough": ["negative_prompt", "watermark"]},
        "wanx2.1-t2i-turbo": {
            "channels": ["dashscope"],
            "max_n": 4,
            "passthrough": ["negative_prompt", "seed", "watermark", "prompt_extend"],
        },
        "qwen-image-plus": {"channels": ["dashscope"], "max_n": 1},
    },
    channels={
        "kling": {
            "type": "kling",
            "base_url": "${KLING}",
            "api_key": "${KLING_ACCESS_KEY}:${KLING_SECRET_KEY}",
            "poll_interval": 0.01,
            "max_poll_interval": 0.02,
            "deadline": "${DEADLINE:-30}",
        },
        "dashscope": {
            "type": "dashscope",
            "base_url": "${DASHSCOPE}/api/v1",
            "api_key": "${DASHSCOPE_API_KEY}",
            "poll_interval": "${POLL:-0.01}",
            "max_poll_interval": "${POLL:-0.02}",
        },
    },
)


async def proxy(make_proxy: Any, aiohttp_server: Any, kling: FakeKling, dashscope: FakeDashScope, **env: str) -> Any:
    values = {
        "KLING": await serve_fake(aiohttp_server, kling),
        "KLING_ACCESS_KEY": kling.access_key,
        "KLING_SECRET_KEY": kling.secret_key,
        "DASHSCOPE": await serve_fake(aiohttp_server, dashscope),
        "DASHSCOPE_API_KEY": dashscope.api_key,
        **env,
    }
    return await make_proxy(RULES, values)


def sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def test_kling_task_runs_to_completion_with_one_jwt(make_proxy: Any, aiohttp_server: Any) -> None:
    kling = FakeKling(polls_before_done=3)
    client = await proxy(make_proxy, aiohttp_server, kling, FakeDashScope())
    images = sdk(client)
    answer = await images.images.generate(model="kling-v2", prompt="a crane", n=3, size="1792x1024", response_format="b64_json")
    assert answer.data is not None and len(answer.data) == 3
    assert base64.b64decode(answer.data[0].b64_json or "") == kling_fake.PNG
    created = kling.recorder.received[0]
    assert created.method == "POST" and created.path == "/v1/images/generations"
    assert created.json() == {"model_name": "kling-v2", "prompt": "a crane", "n": 3, "aspect_ratio": "16:9"}
    polls = [item for item in kling.recorder.received if item.method == "GET" and item.path.startswith("/v1/")]
    assert len(polls) == 4  # three pending answers, then the finished task
    await images.images.generate(model="kling-v2", prompt="again")
    tokens = {item.header("Authorization") for item in kling.recorder.received if item.path.startswith("/v1/")}
    assert len(tokens) == 1  # the JWT is minted once and reused while it is fresh
    token = next(iter(tokens)) or ""
    assert kling.secret_key not in token and token.startswith("Bearer ey")
    await images.close()


async def test_kling_risk_control_is_a_moderation_error(make_proxy: Any, aiohttp_server: Any) -> None:
    kling = FakeKling(moderate=True)
    client = await proxy(make_proxy, aiohttp_server, kling, FakeDashScope())
    images = sdk(client)
    with pytest.raises(openai.BadRequestError) as caught:
        await images.images.generate(model="kling-v2", prompt="x")
    assert caught.value.response.json()["error"]["type"] == "image_generation_user_error"
    await images.close()


async def test_kling_arrears_is_billing_not_a_rate_limit(make_proxy: Any, aiohttp_server: Any) -> None:
    kling = FakeKling(fail_create_with=kling_fake.ARREARS)
    client = await proxy(make_proxy, aiohttp_server, kling, FakeDashScope())
    response = await client.post("/v1/images/generations", json={"model": "kling-v2", "prompt": "x", "retries": 2})
    assert response.status == 429
    body = await response.json()
    assert body["error"]["type"] == "insufficient_quota"
    assert "Retry-After" not in response.headers
    assert len(kling.recorder.received) == 1  # not retried


async def test_wanx_task_sends_n_and_returns_revised_prompts(make_proxy: Any, aiohttp_server: Any) -> None:
    dashscope = FakeDashScope(polls_before_done=2)
    client = await proxy(make_proxy, aiohttp_server, FakeKling(), dashscope)
    images = sdk(client)
    answer = await images.images.generate(
        model="wanx2.1-t2i-turbo", prompt="a teapot", n=2, size="1024x1024", extra_body={"watermark": False}
    )
    assert answer.data is not None and len(answer.data) == 2
    create = dashscope.recorder.received[0]
    assert create.path == dashscope_fake.TASK_ROUTE
    assert create.header("X-DashScope-Async") == "enable"
    assert create.json() == {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": "a teapot"},
        "parameters": {"size": "1024*1024", "n": 2, "watermark": False},
    }
    assert all(item.revised_prompt for item in answer.data)
    await images.close()


async def test_failing_polls_end_the_request_without_a_second_task(make_proxy: Any, aiohttp_server: Any) -> None:
    dashscope = FakeDashScope(polls_before_done=1, fail_polls=10)
    client = await proxy(make_proxy, aiohttp_server, FakeKling(), dashscope)
    response = await client.post("/v1/images/generations", json={"model": "wanx2.1-t2i-turbo", "prompt": "x", "retries": 3})
    assert response.status == 502
    creates = [item for item in dashscope.recorder.received if item.method == "POST"]
    polls = [item for item in dashscope.recorder.received if item.method == "GET"]
    assert len(creates) == 1  # a poll failure never starts (and bills) a second task
    assert len(polls) == 3
    assert (await response.json())["error"]["code"] == "upstream_poll_failed"


async def test_three_failed_kling_polls_are_a_502_poll_failure(make_proxy: Any, aiohttp_server: Any) -> None:
    kling = FakeKling(polls_before_done=1, fail_polls=3)
    client = await proxy(make_proxy, aiohttp_server, kling, FakeDashScope())
    response = await client.post("/v1/images/generations", json={"model": "kling-v2", "prompt": "x", "retries": 3})
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "upstream_poll_failed"
    assert [item.method for item in kling.recorder.received] == ["POST", "GET", "GET", "GET"]


async def test_expired_result_urls_are_reported_not_delivered(make_proxy: Any, aiohttp_server: Any) -> None:
    class Expired(FakeDashScope):
        async def file(self, request: web.Request) -> web.Response:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")

    client = await proxy(make_proxy, aiohttp_server, FakeKling(), Expired(polls_before_done=0))
    response = await client.post(
        "/v1/images/generations", json={"model": "wanx2.1-t2i-turbo", "prompt": "x", "response_format": "b64_json"}
    )
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "image_download_failed"


async def test_qwen_image_runs_synchronously(make_proxy: Any, aiohttp_server: Any) -> None:
    dashscope = FakeDashScope()
    client = await proxy(make_proxy, aiohttp_server, FakeKling(), dashscope)
    response = await client.post("/v1/images/generations", json={"model": "qwen-image-plus", "prompt": "a lamp"})
    assert response.status == 200
    sent = dashscope.recorder.received[0]
    assert sent.path == dashscope_fake.SYNC_ROUTE and sent.header("X-DashScope-Async") is None
    assert sent.json()["input"]["messages"][0]["content"] == [{"text": "a lamp"}]


async def test_deadline_is_504_and_the_task_is_not_restarted(make_proxy: Any, aiohttp_server: Any) -> None:
    kling = FakeKling(polls_before_done=10_000)
    client = await proxy(make_proxy, aiohttp_server, kling, FakeDashScope(), DEADLINE="0.3")
    response = await client.post("/v1/images/generations", json={"model": "kling-v2", "prompt": "x", "retries": 2})
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "upstream_deadline"
    assert len([item for item in kling.recorder.received if item.method == "POST"]) == 1


PATIENT_RULES = rules_yaml(
    {
        "kling-v2": {"channels": ["patient", "backup"]},
    },
    channels={
        "patient": {
            "type": "kling",
            "base_url": "${KLING}",
            "api_key": "${KLING_ACCESS_KEY}:${KLING_SECRET_KEY}",
            "poll_interval": 0.01,
            "timeout": 0.2,
            "deadline": "${DEADLINE:-30}",
            "retry_timeouts": True,
        },
        "backup": {"type": "kling", "base_url": "${KLING}", "api_key": "${KLING_ACCESS_KEY}:${KLING_SECRET_KEY}"},
    },
)


async def test_a_poll_that_times_out_never_fails_over_even_where_timeouts_may(make_proxy: Any, aiohttp_server: Any) -> None:
    # `retry_timeouts` lets a channel retry a call that timed out; once a task exists upstream, a second
    # channel would start (and bill) a second task, so a failing poll is final.
    kling = FakeKling(polls_before_done=10_000, poll_delay=1.0)
    client = await patient(make_proxy, aiohttp_server, kling)
    response = await client.post("/v1/images/generations", json={"model": "kling-v2", "prompt": "x"})
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "upstream_timeout"
    assert len([item for item in kling.recorder.received if item.method == "POST"]) == 1


async def test_a_task_past_its_deadline_never_fails_over_even_where_timeouts_may(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    kling = FakeKling(polls_before_done=10_000)
    client = await patient(make_proxy, aiohttp_server, kling, DEADLINE="0.3")
    response = await client.post("/v1/images/generations", json={"model": "kling-v2", "prompt": "x"})
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "upstream_deadline"
    assert len([item for item in kling.recorder.received if item.method == "POST"]) == 1


async def patient(make_proxy: Any, aiohttp_server: Any, kling: FakeKling, **env: str) -> Any:
    server = await aiohttp_server(kling.app())
    values = {"KLING": url_of(server), "KLING_ACCESS_KEY": kling.access_key,
              "KLING_SECRET_KEY": kling.secret_key, **env}
    return await make_proxy(PATIENT_RULES, values)


async def test_a_client_that_disconnects_cancels_the_task(make_proxy: Any, aiohttp_server: Any) -> None:
    dashscope = FakeDashScope(polls_before_done=100)
    client = await proxy(make_proxy, aiohttp_server, FakeKling(), dashscope, POLL="0.5")
    request = asyncio.ensure_future(client.post("/v1/images/generations", json={"model": "wanx2.1-t2i-turbo", "prompt": "x"}))
    for _ in range(100):
        if dashscope.tasks:
            break
        await asyncio.sleep(0.01)
    request.cancel()
    for _ in range(100):
        if any(task.canceled for task in dashscope.tasks.values()):
            break
        await asyncio.sleep(0.02)
    cancels = [item for item in dashscope.recorder.received if item.path.endswith("/cancel")]
    assert len(cancels) == 1
    assert cancels[0].header("Authorization") == f"Bearer {dashscope.api_key}"
    assert all(task.canceled for task in dashscope.tasks.values())
    assert json.dumps([item.path for item in dashscope.recorder.received]).count("/tasks/") == 1  # no poll after leaving
