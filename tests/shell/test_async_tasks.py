"""Seed 001's `async: true`: answer at once with a task id, keep working, serve the result by id."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from proxy.tasks import MemoryTaskStore
from tests.factories import poll_task, proxy_with_fake, rules_yaml
from tests.fakes.openai import PNG, FakeOpenAI

RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["openai"]},
        "local-image": {"channels": ["local"]},
    },
    server={"api_keys": ["key-a", "key-b"], "tasks": {"retention": 600}},
)

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


async def test_async_answers_at_once_then_serves_the_result(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(delay=0.3)
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    created = await client.post(
        "/v1/images/generations",
        json={"model": "gpt-image-1.5", "prompt": "p", "async": True, "response_format": "url"},
        headers=A,
    )
    assert created.status == 200
    first = await created.json()
    assert first["data"] == [] and first["task_status"] == "pending"
    assert len(first["task_id"]) == 36 and isinstance(first["created"], int)
    _, running = await poll_task(client, first["task_id"], A, "running")
    assert running["task_status"] == "running" and running["data"] == []
    response, done = await poll_task(client, first["task_id"], A, "succeed")
    assert response.status == 200
    assert done["task_status"] == "succeed" and done["task_id"] == first["task_id"]
    assert done["metadata"] == {"model": "gpt-image-1.5", "upstream_model": "gpt-image-1.5", "channel": "openai", "attempts": 1}
    url = done["data"][0]["url"]
    assert set(done["data"][0]) == {"url"}
    image = await client.get(url[url.index("/images/") :])
    assert await image.read() == PNG
    assert "async" not in fake.recorder.received[0].json()


async def test_a_task_is_visible_only_to_its_key(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES)
    created = await client.post(
        "/v1/images/generations", json={"model": "local-image", "prompt": "p", "size": "16x16", "async": True}, headers=A
    )
    task_id = (await created.json())["task_id"]
    _, done = await poll_task(client, task_id, A, "succeed")
    assert base64.b64decode(done["data"][0]["b64_json"])[:8] == b"\x89PNG\r\n\x1a\n"
    other = await client.get(f"/v1/images/generations/{task_id}", headers=B)
    assert other.status == 404
    assert (await other.json())["error"]["code"] == "task_not_found"
    unknown = await client.get("/v1/images/generations/3c90c3cc-0d44-4b50-8888-8dd25736052a", headers=A)
    assert unknown.status == 404


async def test_a_failed_task_reports_the_error_with_its_status(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    fake.failures.append((400, {"error": {"message": "Bad prompt.", "type": "invalid_request_error", "param": "prompt"}}, {}))
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    created = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p", "async": True}, headers=A)
    response, body = await poll_task(client, (await created.json())["task_id"], A, "failed")
    assert response.status == 400
    assert body["task_status"] == "failed"
    assert body["error"]["message"] == "Bad prompt." and body["error"]["param"] == "prompt"


async def test_validation_errors_are_immediate_not_tasks(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    response = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "", "async": True}, headers=A)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "prompt"


async def test_the_work_continues_after_the_client_leaves(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(delay=0.2)
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    created = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p", "async": True}, headers=A)
    task_id = (await created.json())["task_id"]
    created.close()
    await asyncio.sleep(0.5)  # nobody polls meanwhile
    _, body = await poll_task(client, task_id, A, "succeed")
    assert body["task_status"] == "succeed"
    assert len(fake.recorder.received) == 1


async def test_expired_tasks_are_gone() -> None:
    now = [1000.0]
    store = MemoryTaskStore(clock=lambda: now[0])
    from proxy.tasks import new_record

    record = new_record("owner", now[0], retention=60)
    await store.put(record)
    assert await store.get(record.id) == record
    now[0] += 61
    assert await store.get(record.id) is None
    assert await store.sweep() == 1
