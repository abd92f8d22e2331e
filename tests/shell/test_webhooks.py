"""Signed webhooks of async tasks (proxy.webhooks), through the real app and a real receiver on loopback: the
Standard Webhooks headers checked by an independent implementation, retries (5xx, 429, timeouts) with the same
webhook-id, no retry on a 4xx, a delivery that outlives the proxy that queued it, and URLs refused at create."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.engine import URL

import proxy.webhooks
from proxy import task_runner
from proxy.database import WEBHOOK_DELIVERIES, open_engine
from proxy.finish import Delivery
from proxy.ledger import Ledger
from proxy.services import SERVICES
from proxy.task_keeper import take_over
from proxy.task_runner import created
from proxy.tasks import FAILED, SUCCEED, owner_of
from proxy.webhooks import DeliveryStore, requested
from tests.factories import LOCAL, ROOT, poll_task, rules_yaml, url_of

SECRET_1 = "whsec_" + base64.b64encode(b"the first webhook secret").decode()
SECRET_2 = "whsec_" + base64.b64encode(b"the second, rotated in").decode()
BOB_SECRET = "whsec_" + base64.b64encode(b"bob's own secret").decode()
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
ADMIN = {"Authorization": "Bearer admin-secret"}
FOX = {"model": "local-image", "prompt": "a fox", "size": "64x64", "async": True}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver answering from a script: a status, or ("sleep", seconds) before a 200; once the
    script runs out, `then` (a status) for every further request."""

    script: list[Any] = field(default_factory=list)
    then: int = 200
    received: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read(), time.time()))
        step = self.script.pop(0) if self.script else self.then
        if isinstance(step, tuple):
            await asyncio.sleep(step[1])
            step = 200
        return web.Response(status=step, text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app


async def receiver_url(aiohttp_server: Any, receiver: Receiver) -> str:
    return url_of(await aiohttp_server(receiver.app()), "/hook")


def server(**webhooks: Any) -> dict[str, Any]:
    hooks = {"secrets": [SECRET_1, SECRET_2], "allow_hosts": ["127.0.0.1"], "min_backoff": 0.05, "timeout": 2, **webhooks}
    return {"api_keys": [{"key": "key-a", "name": "alice"},
                         {"key": "key-b", "name": "bob", "webhook_url": "${BOB_HOOK:-https://example.com/}",
                          "webhook_secrets": [BOB_SECRET]}],
            "admin_keys": ["admin-secret"], "database": "${DATABASE:-}", "webhooks": hooks}


def rules(**webhooks: Any) -> str:
    return rules_yaml({"local-image": {"channels": ["local"], "passthrough": ["extra_body"]}}, {"local": LOCAL},
                      server=server(**webhooks))


def verified(received: Received, *secrets: str) -> bool:
    """The signature as the specification defines it, computed here independently of the proxy: every v1 entry
    must match one of `secrets`, and each secret must have its entry."""
    msg_id, timestamp = received.headers["webhook-id"], received.headers["webhook-timestamp"]
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + received.body
    expected = {base64.b64encode(hmac.new(base64.b64decode(secret[6:]), signed, hashlib.sha256).digest()).decode()
                for secret in secrets}
    entries = received.headers["webhook-signature"].split(" ")
    given = {entry.removeprefix("v1,") for entry in entries if entry.startswith("v1,")}
    return len(entries) == len(secrets) and given == expected


async def create(client: Any, body: dict[str, Any], headers: dict[str, str] = A) -> str:
    response = await client.post("/v1/images/generations", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return str((await response.json())["task_id"])


async def webhook_state(client: Any, task_id: str, headers: dict[str, str] = A, limit: float = 15.0) -> dict[str, Any]:
    """The task's answer once its webhook is delivered or failed."""
    deadline = time.monotonic() + limit
    while True:
        body = await (await client.get(f"/v1/images/generations/{task_id}", headers=headers)).json()
        state = body.get("metadata", {}).get("webhook", {}).get("status")
        if state in ("delivered", "failed") or time.monotonic() > deadline:
            return dict(body)
        await asyncio.sleep(0.05)


def without_webhook(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "metadata": {name: value for name, value in body["metadata"].items() if name != "webhook"}}


async def test_a_finished_task_is_delivered_signed_with_each_secret_and_retried_on_5xx(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    receiver = Receiver(script=[500, 500])
    hook = await receiver_url(aiohttp_server, receiver)
    client = await make_proxy(rules())
    task_id = await create(client, {**FOX, "callback_url": hook})
    body = await webhook_state(client, task_id)
    assert body["task_status"] == SUCCEED and len(body["data"]) == 1
    assert body["metadata"]["webhook"] == {"status": "delivered", "attempts": 3, "last_status": 200}
    assert len(receiver.received) == 3
    ids = {item.headers["webhook-id"] for item in receiver.received}
    assert len(ids) == 1 and re.fullmatch(r"msg_[0-9a-f]{32}", ids.pop())
    stamps = [int(item.headers["webhook-timestamp"]) for item in receiver.received]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time()) < 30
    for item in receiver.received:
        assert item.headers["Content-Type"] == "application/json"
        assert verified(item, SECRET_1, SECRET_2) and not verified(item, SECRET_1)
    # What the receiver got is what a poll answers (the delivery's own state aside).
    assert json.loads(receiver.received[-1].body) == without_webhook(body)
    admin = await (await client.get(f"/admin/tasks/{task_id}", headers=ADMIN)).json()
    assert admin["metadata"]["webhook"] == body["metadata"]["webhook"]
    assert SECRET_1[6:] not in json.dumps(admin) and SECRET_1[6:] not in json.dumps(body)


async def test_a_4xx_is_not_retried(make_proxy: Any, aiohttp_server: Any) -> None:
    receiver = Receiver(then=400)
    client = await make_proxy(rules())
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    body = await webhook_state(client, task_id)
    assert body["metadata"]["webhook"] == {"status": "failed", "attempts": 1, "last_status": 400}
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1


async def test_a_timeout_and_a_429_are_retried_with_the_same_id_and_a_later_timestamp(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    receiver = Receiver(script=[("sleep", 2.0), 429])
    client = await make_proxy(rules(timeout=1))
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    body = await webhook_state(client, task_id)
    assert body["metadata"]["webhook"] == {"status": "delivered", "attempts": 3, "last_status": 200}
    first, second, third = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])  # a second passed
    assert second.at - first.at >= 1.0
    assert all(verified(item, SECRET_1, SECRET_2) for item in receiver.received)
    assert first.body == second.body == third.body


async def test_retries_end_after_retry_for(make_proxy: Any, aiohttp_server: Any) -> None:
    receiver = Receiver(then=503)
    client = await make_proxy(rules(retry_for=0.5))
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    webhook = (await webhook_state(client, task_id))["metadata"]["webhook"]
    assert webhook["status"] == "failed" and webhook["last_status"] == 503
    assert webhook["attempts"] == len(receiver.received) >= 2


async def test_a_failed_task_goes_to_its_keys_default_url_signed_with_its_keys_secret(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client = await make_proxy(rules(), {"BOB_HOOK": await receiver_url(aiohttp_server, receiver)})
    task_id = await create(client, {**FOX, "size": "4097x1024"}, headers=B)
    body = await webhook_state(client, task_id, headers=B)
    assert body["task_status"] == FAILED and body["error"]["param"] == "size"
    assert body["metadata"]["webhook"] == {"status": "delivered", "attempts": 1, "last_status": 200}
    (item,) = receiver.received
    assert verified(item, BOB_SECRET) and not verified(item, SECRET_1, SECRET_2)
    sent = json.loads(item.body)
    assert sent["error"] == body["error"] and sent["task_id"] == task_id and sent["task_status"] == FAILED


async def test_extra_body_carries_a_callback_url_for_sdk_clients(make_proxy: Any, aiohttp_server: Any) -> None:
    receiver = Receiver()
    client = await make_proxy(rules())
    hook = await receiver_url(aiohttp_server, receiver)
    response = await client.post("/v1/images/generations", headers=A,
                                 json={**FOX, "extra_body": {"callback_url": hook, "seed": 7}})
    assert "X-Imagegate-Ignored-Params" not in response.headers
    task_id = (await response.json())["task_id"]
    assert (await webhook_state(client, task_id))["metadata"]["webhook"]["status"] == "delivered"
    assert json.loads(receiver.received[0].body)["task_id"] == task_id
    plain = await create(client, FOX)  # no callback, no default URL for alice: no webhook at all
    _, body = await poll_task(client, plain, A, SUCCEED)
    assert "webhook" not in body["metadata"]


@pytest.mark.parametrize(("extra", "param", "code"), [
    ({"callback_url": "http://10.0.0.1/hook"}, "callback_url", "invalid_callback_url"),
    ({"callback_url": "http://169.254.169.254/latest/meta-data"}, "callback_url", "invalid_callback_url"),
    ({"callback_url": "http://127.0.0.1:9/hook"}, "callback_url", "invalid_callback_url"),  # not allowed here
    ({"callback_url": "ftp://example.com/hook"}, "callback_url", "invalid_callback_url"),
    ({"callback_url": "https://example.com/hook", "async": False}, "callback_url", "invalid_value"),
    ({"callback_url": 7}, "callback_url", "invalid_type"),
])
async def test_callback_urls_refused_at_create(make_proxy: Any, extra: dict[str, Any], param: str, code: str) -> None:
    client = await make_proxy(rules(allow_hosts=[]))
    response = await client.post("/v1/images/generations", json={**FOX, **extra}, headers=A)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["param"], error["code"]) == (param, code)


async def test_a_callback_without_a_secret_to_sign_with_is_refused(make_proxy: Any) -> None:
    text = rules_yaml({"local-image": {"channels": ["local"]}}, {"local": LOCAL},
                      server={"api_keys": [{"key": "key-a", "name": "alice"}], "webhooks": {"allow_hosts": ["127.0.0.1"]}})
    client = await make_proxy(text)
    response = await client.post("/v1/images/generations", json={**FOX, "callback_url": "http://127.0.0.1:9/"}, headers=A)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["param"], error["code"]) == ("callback_url", "webhook_secret_missing")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


async def test_a_delivery_outlives_the_proxy_that_queued_it(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    receiver = Receiver(then=500)  # down until the flag flips
    hook = await receiver_url(aiohttp_server, receiver)
    env = {"DATABASE": database}
    first = await make_proxy(rules(min_backoff=0.2), env)
    task_id = await create(first, {**FOX, "callback_url": hook})
    for _ in range(200):
        if receiver.received:
            break
        await asyncio.sleep(0.02)
    await first.close()
    tried = len(receiver.received)
    assert tried >= 1
    receiver.then = 200
    second = await make_proxy(rules(min_backoff=0.2), env)
    body = await webhook_state(second, task_id)
    assert body["metadata"]["webhook"]["status"] == "delivered"
    assert body["metadata"]["webhook"]["attempts"] == len(receiver.received) > tried
    assert len({item.headers["webhook-id"] for item in receiver.received}) == 1
    assert json.loads(receiver.received[-1].body)["task_id"] == task_id


async def test_with_tasks_in_redis_deliveries_stay_in_the_ledgers_database(
    make_proxy: Any, aiohttp_server: Any, redis_server: Any
) -> None:
    receiver = Receiver(script=[502])
    text = rules().replace("database: ${DATABASE:-}", f"database: ${{DATABASE:-}}\n  state: {redis_server.url}")
    client = await make_proxy(text)
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    body = await webhook_state(client, task_id)
    assert body["metadata"]["webhook"] == {"status": "delivered", "attempts": 2, "last_status": 200}
    services = client.server.app[SERVICES]
    assert type(services.tasks).__name__ == "RedisTaskStore"
    async with services.ledger.engine.connect() as connection:
        rows = (await connection.execute(sa.select(WEBHOOK_DELIVERIES))).all()
    assert [(row.task_id, row.status, row.attempts, row.secret_set) for row in rows] == [(task_id, "delivered", 2, "server")]
    assert SECRET_1[6:] not in rows[0].body and "whsec_" not in str(rows[0])


async def test_settled_deliveries_are_swept_with_their_tasks(make_proxy: Any, aiohttp_server: Any) -> None:
    receiver = Receiver()
    client = await make_proxy(rules())
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    assert (await webhook_state(client, task_id))["metadata"]["webhook"]["status"] == "delivered"
    store = client.server.app[SERVICES].webhooks.store
    assert await store.sweep(time.time() - 3600) == 0  # made just now: kept
    assert await store.sweep(time.time() + 1) == 1
    assert await store.state_of(task_id) is None


def readme_verify() -> Any:
    """The README's receiver example (`<!-- snippet: webhook-receiver -->`), run as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = text.split("<!-- snippet: webhook-receiver -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the documentation's own code, nothing from outside
    return namespace["verify"]


async def test_the_readmes_receiver_accepts_what_the_proxy_sends(make_proxy: Any, aiohttp_server: Any) -> None:
    verify = readme_verify()
    receiver = Receiver()
    client = await make_proxy(rules())
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    assert (await webhook_state(client, task_id))["metadata"]["webhook"]["status"] == "delivered"
    (item,) = receiver.received
    headers = {name.lower(): value for name, value in item.headers.items()}
    assert verify(SECRET_1, headers, item.body) and verify(SECRET_2, headers, item.body)
    assert not verify(BOB_SECRET, headers, item.body)
    assert not verify(SECRET_1, headers, item.body.replace(b"succeed", b"failed!"))
    assert not verify(SECRET_1, {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}, item.body)
    for forged in ({"webhook-signature": "v1,\u00e9"}, {"webhook-timestamp": "soon"}, {"webhook-timestamp": "\u0661\u0662"}):
        assert not verify(SECRET_1, {**headers, **forged}, item.body)  # refused, not a receiver's exception


async def test_a_task_failed_by_the_process_that_took_it_over_is_reported(make_proxy: Any, aiohttp_server: Any) -> None:
    """A task left by a stopped process (lease run out, no upstream task to resume) is ended as interrupted by
    whichever process claims it: that process reports it, from the webhook its checkpoint kept."""
    receiver = Receiver()
    client = await make_proxy(rules())
    services = client.server.app[SERVICES]
    webhook = await requested(services, await receiver_url(aiohttp_server, receiver), "key-a")
    left = created(services, owner_of("key-a"), Delivery("b64_json", "http://127.0.0.1", 60.0), None, webhook)
    await services.tasks.put(replace(left, lease_until=0.0))  # as a crashed process leaves it
    assert await take_over(services) == 1
    body = await webhook_state(client, left.id)
    assert body["task_status"] == FAILED and body["error"]["code"] == "task_interrupted"
    assert body["metadata"]["webhook"] == {"status": "delivered", "attempts": 1, "last_status": 200}
    (item,) = receiver.received
    assert verified(item, SECRET_1, SECRET_2) and json.loads(item.body)["error"]["code"] == "task_interrupted"


async def test_an_attempt_that_outlived_its_claim_does_not_overwrite_the_later_one(tmp_path: Any) -> None:
    """Two processes may send one delivery (at-least-once); the outcome of the attempt claimed last stands."""
    ledger = Ledger(open_engine(URL.create("sqlite+aiosqlite", database=str(tmp_path / "w.db"))), None)
    store = DeliveryStore(ledger.engine, ledger.ensure_schema)
    try:
        now = time.time()
        await store.add({"id": "msg_1", "task_id": "t", "url": "https://example.com/hook", "body": "{}", "attempts": 0,
                         "secret_set": "server", "status": "pending", "next_at": now, "created": now,
                         "deadline": now + 60})
        (first,) = await store.claim_due(now, now + 1)  # its attempt runs long: the claim lapses
        (second,) = await store.claim_due(now + 2, now + 3)
        assert (first.attempts, second.attempts) == (1, 2)
        assert await store.settle(second, "delivered", 204, now + 3) is True
        assert await store.settle(first, "failed", 500, now + 4) is False  # too late: the later outcome stands
        assert await store.state_of("t") == {"status": "delivered", "attempts": 2, "last_status": 204}
    finally:
        await ledger.engine.dispose()


async def test_a_retry_is_sent_when_it_is_due_not_at_the_next_poll(
    make_proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.webhooks, "POLL_EVERY", 3600.0)  # only the retry's own time can wake the sender
    monkeypatch.setattr(proxy.webhooks.random, "uniform", lambda low, high: high)  # no jitter: 0.3 s exactly
    receiver = Receiver(script=[503])
    client = await make_proxy(rules(min_backoff=0.3))
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    body = await webhook_state(client, task_id, limit=5.0)
    assert body["metadata"]["webhook"] == {"status": "delivered", "attempts": 2, "last_status": 200}
    first, second = receiver.received
    assert 0.3 <= second.at - first.at < 2.0  # when the backoff ends, not at the hour-long poll


async def test_a_delivery_no_one_woke_this_process_for_is_found_by_the_poll(
    make_proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery queued by another process (which stopped before sending it) is sent at the next poll."""
    monkeypatch.setattr(proxy.webhooks, "POLL_EVERY", 0.3)
    receiver = Receiver()
    client = await make_proxy(rules())
    services = client.server.app[SERVICES]
    await asyncio.sleep(0.1)  # the sender's first pass is done: it sleeps until the poll
    other = DeliveryStore(services.ledger.engine, services.ledger.ensure_schema)  # another process's, not woken
    now = time.time()
    await other.add({"id": "msg_other", "task_id": "t-other", "url": await receiver_url(aiohttp_server, receiver),
                     "body": "{}", "attempts": 0, "secret_set": "server", "status": "pending", "next_at": now,
                     "created": now, "deadline": now + 60})
    for _ in range(100):
        if receiver.received:
            break
        await asyncio.sleep(0.05)
    (item,) = receiver.received
    assert item.headers["webhook-id"] == "msg_other" and verified(item, SECRET_1, SECRET_2)


async def test_an_idle_sender_does_not_poll_the_database_every_second(make_proxy: Any) -> None:
    client = await make_proxy(rules())  # min_backoff 0.05: the sender used to poll every 50 ms
    store = client.server.app[SERVICES].webhooks.store
    passes = []
    claim_due = store.claim_due

    async def counted(now: float, until: float) -> list[Any]:
        passes.append(now)
        return await claim_due(now, until)

    store.claim_due = counted  # type: ignore[method-assign]
    await asyncio.sleep(1.5)
    assert len(passes) <= 1, passes


async def test_a_callback_url_the_http_client_cannot_send_to_fails_instead_of_staying_pending(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    client = await make_proxy(rules(retry_for=30))
    url = (await receiver_url(aiohttp_server, receiver)).replace("http://", "http://\u20ac@")  # userinfo not Latin-1
    task_id = await create(client, {**FOX, "callback_url": url})
    webhook = (await webhook_state(client, task_id, limit=5))["metadata"]["webhook"]
    assert (webhook["status"], webhook["attempts"]) == ("failed", 1) and not receiver.received


async def test_a_receiver_whose_name_does_not_resolve_for_a_while_is_tried_again(
    make_proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_proxy(rules(retry_for=30, allow_hosts=[]))  # the guard looks the name up
    loop, lookups = asyncio.get_running_loop(), []
    real = loop.getaddrinfo

    async def lookup(host: Any, port: Any, **kwargs: Any) -> Any:
        if host != "hooks.invalid":
            return await real(host, port, **kwargs)
        lookups.append(host)
        if len(lookups) == 1:  # at create: a public address (nothing is sent then)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]
        if len(lookups) <= 3:  # the first two attempts: a DNS outage
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]  # then: an address it refuses

    monkeypatch.setattr(loop, "getaddrinfo", lookup)
    task_id = await create(client, {**FOX, "callback_url": "https://hooks.invalid/hook"})
    webhook = (await webhook_state(client, task_id, limit=10))["metadata"]["webhook"]
    # Each outage was tried again (it failed for good at the first); the third attempt's answer is refused.
    assert (webhook["status"], webhook["attempts"], len(lookups)) == ("failed", 3, 4)


async def test_a_task_cancelled_while_its_end_is_stored_still_queues_its_webhook(
    make_proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    client = await make_proxy(rules())
    entered, go = asyncio.Event(), asyncio.Event()
    real = task_runner.enqueue

    async def slow(*args: Any) -> None:  # the record is final; the delivery is not queued yet
        entered.set()
        await go.wait()
        await real(*args)

    monkeypatch.setattr(task_runner, "enqueue", slow)
    task_id = await create(client, {**FOX, "callback_url": await receiver_url(aiohttp_server, receiver)})
    await asyncio.wait_for(entered.wait(), 10)
    for task in list(client.server.app[SERVICES].background):
        task.cancel()  # what a drain does once its grace has run out
    await asyncio.sleep(0.1)
    go.set()
    webhook = (await webhook_state(client, task_id))["metadata"]["webhook"]
    assert webhook["status"] == "delivered" and len(receiver.received) == 1
