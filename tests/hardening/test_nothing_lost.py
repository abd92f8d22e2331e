"""Nothing the user paid for is lost: async results survive client disconnects, reloads and a replica
restart (shared Redis), and stay retrievable, images included, until they expire."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.rules import parse_rules
from proxy.ops import reload_rules
from tests.factories import OPENAI, rules_yaml, serve_fake, start_proxy
from tests.fakes.openai import KEY, PNG, FakeOpenAI
from tests.hardening.figures import record

SERVER = {"state": "${STATE:-memory}", "api_keys": ["client-key-1"]}
RULES = rules_yaml({"gpt-image-*": {"channels": ["openai"]}}, {"openai": OPENAI}, server=SERVER)
AUTH = {"Authorization": "Bearer client-key-1"}
BODY = {"model": "gpt-image-1.5", "prompt": "p", "async": True, "response_format": "url"}


async def finished(client: Any, task_id: str) -> dict[str, Any]:
    for _ in range(200):
        answer: dict[str, Any] = await (await client.get(f"/v1/images/generations/{task_id}", headers=AUTH)).json()
        if answer.get("task_status") in ("succeed", "failed"):
            return answer
        await asyncio.sleep(0.03)
    raise AssertionError("the task did not finish")


async def image_of(client: Any, answer: dict[str, Any]) -> bytes:
    url = answer["data"][0]["url"]
    return bytes(await (await client.get(url[url.index("/images/") :])).read())


async def test_async_results_survive_a_disconnect_and_a_reload(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = await serve_fake(aiohttp_server, FakeOpenAI(delay=0.3))
    env = {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # a reload reads the process environment, as SIGHUP does
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    rules = parse_rules(RULES, env, SCHEMAS)
    client = await aiohttp_client(await start_proxy(make_app(rules, rules_path=str(path)), rules))
    held = 0
    created = await client.post("/v1/images/generations", json=BODY, headers=AUTH)
    task_id = (await created.json())["task_id"]
    created.close()  # the client goes away at once
    path.write_text(rules_yaml({"gpt-image-1.5": {"channels": ["openai"]}}, {"openai": OPENAI}, server=SERVER))
    assert await reload_rules(client.server.app)  # and the rules change while the task runs
    answer = await finished(client, task_id)
    held += answer["task_status"] == "succeed" and await image_of(client, answer) == PNG
    record("async results retrievable after disconnect, reload, restart", 1, held)
    assert held == 1


async def test_an_async_result_survives_the_replica_that_made_it(aiohttp_server: Any, redis_server: Any) -> None:
    upstream = await serve_fake(aiohttp_server, FakeOpenAI(delay=0.4))
    env = {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY, "STATE": redis_server.url}
    rules = parse_rules(RULES, env, SCHEMAS)
    a = TestClient(await start_proxy(make_app(rules), rules))
    b = TestClient(await start_proxy(make_app(rules), rules))
    await a.start_server()
    await b.start_server()
    try:
        task_id = (await (await a.post("/v1/images/generations", json=BODY, headers=AUTH)).json())["task_id"]
        await asyncio.sleep(0.1)
        await a.close()  # replica A restarts mid-task: its shutdown lets the task finish into Redis
        answer = await finished(b, task_id)
        held = answer["task_status"] == "succeed" and await image_of(b, answer) == PNG
        record("async results retrievable after disconnect, reload, restart", 1, int(held))
        assert held
    finally:
        await b.close()
