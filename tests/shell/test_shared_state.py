"""Several replicas, one state: tasks, hosted images, limits and idempotency through one real Redis.

Two proxy apps share the Redis; a request made on A is read on B, as behind a load balancer.
The same behaviour with the in-memory backend is checked on one app.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy import host_state
from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.limit_windows import Limits
from proxy.core.rules import parse_rules
from proxy.host_state import HostIdempotency
from proxy.key_limits import admit
from proxy.redis_state import RedisIdempotency, connect
from proxy.shared_state import DONE, RUNNING, Idempotency, IdempotentRecord, MemoryCounters, MemoryIdempotency
from tests.factories import OPENAI, rules_yaml, serve_fake, start_proxy
from tests.fakes.openai import KEY, PNG, FakeOpenAI

RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["openai"]},
    },
    channels={"openai": OPENAI},
    server={
        "state": "${STATE:-memory}",
        "api_keys": [
            "client-key-1",
            {"key": "limited-key", "name": "team-a", "limits": {"requests_per_minute": 2}},
            {"key": "one-at-a-time", "name": "team-b", "limits": {"concurrent": 1}},
            {"key": "few-images", "name": "team-c", "limits": {"images_per_day": 3}},
        ],
    },
    default_channel="openai",
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def replicas(aiohttp_client: Any, aiohttp_server: Any, fake: FakeOpenAI, state: str, count: int = 2) -> list[TestClient]:  # type: ignore[type-arg]
    upstream = await serve_fake(aiohttp_server, fake)
    env = {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY, "STATE": state}
    rules = parse_rules(RULES, env, SCHEMAS)
    return [await aiohttp_client(await start_proxy(make_app(rules), rules)) for _ in range(count)]


async def post(client: Any, key: str = "client-key-1", **body: Any) -> Any:
    return await client.post(
        "/v1/images/generations",
        json={"model": "gpt-image-1.5", "prompt": "p", **body},
        headers={**bearer(key), **body.pop("headers", {})},
    )


async def test_a_task_created_on_one_replica_is_read_on_the_other(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: Any
) -> None:
    a, b = await replicas(aiohttp_client, aiohttp_server, FakeOpenAI(delay=0.2), redis_server.url)
    created = await (await post(a, **{"async": True})).json()
    for _ in range(100):
        answer = await (await b.get(f"/v1/images/generations/{created['task_id']}", headers=bearer("client-key-1"))).json()
        if answer["task_status"] == "succeed":
            break
        await asyncio.sleep(0.05)
    assert answer["task_status"] == "succeed"
    assert base64.b64decode(answer["data"][0]["b64_json"]) == PNG
    other = await b.get(f"/v1/images/generations/{created['task_id']}", headers=bearer("limited-key"))
    assert other.status == 404


async def test_a_hosted_url_from_one_replica_is_served_by_the_other(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: Any
) -> None:
    a, b = await replicas(aiohttp_client, aiohttp_server, FakeOpenAI(), redis_server.url)
    url = (await (await post(a, response_format="url")).json())["data"][0]["url"]
    image = await b.get(url[url.index("/images/") :])
    assert image.status == 200 and image.headers["Content-Type"] == "image/png"
    assert await image.read() == PNG


async def test_a_limit_holds_across_replicas(aiohttp_client: Any, aiohttp_server: Any, redis_server: Any) -> None:
    fake = FakeOpenAI()
    a, b = await replicas(aiohttp_client, aiohttp_server, fake, redis_server.url)
    assert (await post(a, "limited-key")).status == 200
    assert (await post(b, "limited-key")).status == 200
    refused = await post(a, "limited-key")
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    error = (await refused.json())["error"]
    assert error["code"] == "requests_per_minute_exceeded" and "requests_per_minute is 2" in error["message"]
    assert (await post(b, "client-key-1")).status == 200  # other keys are not affected
    assert len(fake.recorder.received) == 3


async def test_an_idempotent_retry_on_another_replica_gets_the_first_answer(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: Any
) -> None:
    fake = FakeOpenAI(delay=0.3)
    a, b = await replicas(aiohttp_client, aiohttp_server, fake, redis_server.url)
    headers = {"Idempotency-Key": "order-7"}
    first, retry = await asyncio.gather(post(a, headers=headers), post(b, headers=dict(headers)))
    assert first.status == retry.status == 200
    assert await first.json() == await retry.json()
    assert "true" in (first.headers.get("Idempotent-Replayed"), retry.headers.get("Idempotent-Replayed"))
    late = await post(b, headers=dict(headers))
    assert late.headers["Idempotent-Replayed"] == "true" and await late.json() == await first.json()
    assert len(fake.recorder.received) == 1  # generated (and paid for) once
    reused = await post(a, headers=dict(headers), prompt="another prompt")
    assert reused.status == 422 and (await reused.json())["error"]["code"] == "idempotency_key_reused"


async def test_redis_going_away_is_a_503_and_recovers(aiohttp_client: Any, aiohttp_server: Any, redis_server: Any) -> None:
    (a,) = await replicas(aiohttp_client, aiohttp_server, FakeOpenAI(), redis_server.url, count=1)
    assert (await post(a, response_format="url")).status == 200
    redis_server.stop()
    down = await post(a, response_format="url")
    # The image was made (and paid for): it goes out as base64 rather than being lost with the store.
    body = await down.json()
    assert down.status == 200 and "b64_json" in body["data"][0] and "url" not in body["data"][0]
    assert body["metadata"]["not_hosted"] == {"count": 1, "reason": "image store unavailable"}
    assert (await post(a, **{"async": True})).status == 503
    assert (await post(a)).status == 200  # a plain b64 generation needs no shared state
    redis_server.start()
    assert (await post(a, response_format="url")).status == 200


async def test_memory_backend_keeps_limits_and_idempotency(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(delay=0.2)
    (app,) = await replicas(aiohttp_client, aiohttp_server, fake, "memory", count=1)
    busy = asyncio.ensure_future(post(app, "one-at-a-time"))
    await asyncio.sleep(0.05)
    refused = await post(app, "one-at-a-time")
    assert refused.status == 429 and (await refused.json())["error"]["code"] == "concurrent_exceeded"
    assert (await busy).status == 200
    assert (await post(app, "one-at-a-time")).status == 200  # released when the first ended
    assert (await post(app, "few-images", n=2)).status == 200
    over = await post(app, "few-images", n=2)
    assert over.status == 429 and (await over.json())["error"]["code"] == "images_per_day_exceeded"
    assert (await post(app, "few-images", n=1)).status == 200  # the refused 2 were not counted
    headers = {"Idempotency-Key": "k1"}
    first = await post(app, headers=headers)
    second = await post(app, headers=dict(headers))
    assert await first.json() == await second.json() and second.headers["Idempotent-Replayed"] == "true"
    text = await (await app.get("/metrics")).text()
    assert 'imagegate_key_images_total{key="team-c"} 3.0' in text
    assert "few-images" not in text and "limited-key" not in text


async def test_pass_through_counts_against_the_keys_request_limit(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    (app,) = await replicas(aiohttp_client, aiohttp_server, fake, "memory", count=1)
    statuses = [(await app.get("/v1/files", headers=bearer("limited-key"))).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_model_lists_count_against_the_keys_request_limit_too(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    (app,) = await replicas(aiohttp_client, aiohttp_server, fake, "memory", count=1)
    paths = ("/v1/models", "/v1/models/x", "/v1/models")
    statuses = [(await app.get(path, headers=bearer("limited-key"))).status for path in paths]
    assert statuses == [200, 404, 429]


async def test_a_busy_concurrency_gauge_does_not_expire_under_its_requests() -> None:
    now = [0.0]
    counters = MemoryCounters(clock=lambda: now[0])
    first = await admit(counters, "k", Limits(concurrent=1), 1, clock=lambda: now[0])
    await first.settle(1)
    now[0] = 3590.0
    busy = await admit(counters, "k", Limits(concurrent=1), 1, clock=lambda: now[0])  # still running at 3601
    now[0] = 3601.0
    with pytest.raises(Exception, match="concurrent"):
        await admit(counters, "k", Limits(concurrent=1), 1, clock=lambda: now[0])
    await busy.settle(1)
    assert await counters.incr("k-probe", 0, 10) == 0


async def test_expired_idempotency_records_are_swept() -> None:
    now = [0.0]
    store = MemoryIdempotency(clock=lambda: now[0])
    await store.finish("k", IdempotentRecord("f", DONE, 200, "x" * 1000), ttl=10)
    now[0] = 11.0
    assert await store.sweep() == 1


@pytest.fixture(params=["memory", "host", "redis"])
async def lapsing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Idempotency, Callable[[], Awaitable[None]]]]:
    """An idempotency store of each kind, and how to let a 1-second claim in it lapse."""
    now = [1000.0]

    async def tick() -> None:
        now[0] += 2

    if request.param == "redis":
        client = connect(request.getfixturevalue("redis_server").url)
        yield RedisIdempotency(client), lambda: asyncio.sleep(1.2)
        await client.aclose()
    elif request.param == "host":
        host_state.create(tmp_path / host_state.FILE)
        yield HostIdempotency(tmp_path / host_state.FILE, clock=lambda: now[0]), tick
    else:
        yield MemoryIdempotency(clock=lambda: now[0]), tick


async def test_only_its_own_run_renews_or_releases_a_claim(
    lapsing: tuple[Idempotency, Callable[[], Awaitable[None]]]
) -> None:
    store, lapse = lapsing
    first, retry = IdempotentRecord("fp", RUNNING, claim="first"), IdempotentRecord("fp", RUNNING, claim="retry")
    assert await store.claim("k", first, 1) is None
    assert await store.renew("k", first, 1) is True
    await lapse()
    assert await store.renew("k", first, 60) is False  # lapsed: its run learns it
    assert await store.claim("k", retry, 60) is None  # a retry claims the key and runs
    await store.release("k", first)  # the first run fails at last: the retry's claim is not its to release
    assert await store.renew("k", first, 60) is False
    assert await store.get("k") == retry
    assert await store.renew("k", retry, 60) is True
    await store.release("k", retry)
    assert await store.get("k") is None


def test_idempotency_records_of_other_versions_are_read_and_kept_answers_keep_the_earlier_shape() -> None:
    done = IdempotentRecord("fp", DONE, 200, '{"data":[]}', {"Content-Type": "application/json"})
    assert json.loads(done.dumps()) == {"fingerprint": "fp", "state": DONE, "status": 200, "body": '{"data":[]}',
                                        "headers": {"Content-Type": "application/json"}}  # no `claim`: readable before it
    running = IdempotentRecord("fp", RUNNING, claim="c-1")
    assert IdempotentRecord.loads(running.dumps()) == running
    assert IdempotentRecord.loads(json.dumps({**json.loads(running.dumps()), "added_later": True})) == running
