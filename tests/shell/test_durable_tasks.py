"""Async tasks in the database (proxy.task_table) through the real app: a finished task is answered by the
next process on the same database, a task the previous process left running is failed as interrupted,
expired records are swept, and a database that fails is a 503, never a 500; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.rules import parse_rules
from proxy.database import TASKS, open_engine
from proxy.ledger import Ledger
from proxy.services import SERVICES
from proxy.task_table import DatabaseTaskStore
from proxy.tasks import RUNNING, SUCCEED, finished, new_record, owner_of
from tests.factories import free_port, poll_task, proxy_with_fake, rules_yaml, start_proxy
from tests.fakes.openai import FakeOpenAI


def rules(**server: Any) -> str:
    return rules_yaml(
        {"gpt-image-*": {"channels": ["openai"]}, "local-image": {"channels": ["local"]}},
        server={"api_keys": ["key-a"], "tasks": {"retention": 600}, "database": "${DATABASE:-}", **server},
    )


A = {"Authorization": "Bearer key-a"}
ASYNC = {"model": "gpt-image-1", "prompt": "a heron", "async": True}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    """`server.database`: "" (the SQLite file beside the image store) or a fresh PostgreSQL database."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


async def start(
    make_proxy: Any, aiohttp_server: Any, database: str, fake: FakeOpenAI | None = None, text: str | None = None
) -> Any:
    return await proxy_with_fake(make_proxy, aiohttp_server, fake or FakeOpenAI(), text or rules(), DATABASE=database)


async def test_a_finished_task_is_answered_after_a_restart(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    first = await start(make_proxy, aiohttp_server, database)
    assert isinstance(first.server.app[SERVICES].tasks, DatabaseTaskStore)
    task_id = (await (await first.post("/v1/images/generations", json=ASYNC, headers=A)).json())["task_id"]
    _, before = await poll_task(first, task_id, A, SUCCEED)
    assert before["task_status"] == SUCCEED and len(before["data"]) == 1
    await first.close()
    second = await start(make_proxy, aiohttp_server, database)  # a new process on the same database
    response = await second.get(f"/v1/images/generations/{task_id}", headers=A)
    assert response.status == 200
    assert await response.json() == before


async def test_tasks_left_unfinished_are_failed_as_interrupted_at_start(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    first = await start(make_proxy, aiohttp_server, database)
    store = first.server.app[SERVICES].tasks
    now = time.time()
    # What a process killed mid-task leaves behind: records it never got to finish.
    running = replace(new_record(owner_of("key-a"), now, 600), status=RUNNING)
    pending = new_record(owner_of("key-a"), now, 600)
    done = finished(new_record(owner_of("key-a"), now, 600), {"created": int(now), "data": [{"url": "u"}]})
    for record in (running, pending, done):
        await store.put(record)
    await first.close()
    second = await start(make_proxy, aiohttp_server, database)
    for record in (running, pending):
        response = await second.get(f"/v1/images/generations/{record.id}", headers=A)
        body = await response.json()
        assert response.status == 503 and body["task_status"] == "failed"
        assert body["error"]["code"] == "task_interrupted" and body["error"]["type"] == "server_error"
        assert "restarted" in body["error"]["message"] and "billed" in body["error"]["message"]
    kept = await second.get(f"/v1/images/generations/{done.id}", headers=A)
    assert kept.status == 200 and (await kept.json())["data"] == [{"url": "u"}]
    # A task this process starts is not touched by that start-up pass.
    task_id = (await (await second.post("/v1/images/generations", json=ASYNC, headers=A)).json())["task_id"]
    response, body = await poll_task(second, task_id, A, SUCCEED)
    assert response.status == 200 and body["task_status"] == SUCCEED


async def test_a_task_cut_by_a_shutdown_is_failed_for_the_next_process(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    first = await start(make_proxy, aiohttp_server, database, FakeOpenAI(delay=30), rules(shutdown_grace=0.2))
    task_id = (await (await first.post("/v1/images/generations", json=ASYNC, headers=A)).json())["task_id"]
    await poll_task(first, task_id, A, RUNNING)
    await first.close()  # the grace runs out: the task is cut
    second = await start(make_proxy, aiohttp_server, database)
    response = await second.get(f"/v1/images/generations/{task_id}", headers=A)
    body = await response.json()
    assert response.status == 503 and body["task_status"] == "failed" and body["error"]["code"] == "task_interrupted"


async def test_the_sweep_removes_expired_rows(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    client = await start(make_proxy, aiohttp_server, database)
    store = client.server.app[SERVICES].tasks
    now = time.time()
    old, fresh = new_record("o", now - 700, 600), new_record("o", now, 600)
    await store.put(old)
    await store.put(fresh)
    assert await store.get(old.id) is None and await store.get(fresh.id) == fresh  # expired is gone at once
    assert await store.sweep() == 1
    async with store.engine.connect() as connection:
        ids = (await connection.execute(sa.select(TASKS.c.id))).scalars().all()
    assert ids == [fresh.id]


@pytest.mark.parametrize("broken", ["sqlite", "postgres"])
async def test_a_broken_database_is_a_503_for_tasks_not_a_500(
    make_proxy: Any, aiohttp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    database = str(tmp_path / "a-file" / "db") if broken == "sqlite" else f"postgresql://u:pw-42@127.0.0.1:{free_port()}/x"
    client = await start(make_proxy, aiohttp_server, database)
    created = await client.post("/v1/images/generations", json=ASYNC, headers=A)
    polled = await client.get("/v1/images/generations/0b7e6c1e-0000-4000-8000-000000000000", headers=A)
    for response in (created, polled):
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "state_unavailable"
    sync = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p"}, headers=A)
    assert sync.status == 200  # only tasks need the database
    await client.close()  # the ledger's last write fails too
    # aiosqlite stops the thread of a connection that failed to open through the event loop: let it, before
    # the loop closes (else its thread reports "Event loop is closed" into a later test).
    await asyncio.sleep(0.2)
    assert "pw-42" not in caplog.text


async def test_the_tasks_table_matches_its_migration(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    client = await start(make_proxy, aiohttp_server, database)
    async with client.server.app[SERVICES].ledger.engine.connect() as connection:
        columns = await connection.run_sync(lambda sync: sa.inspect(sync).get_columns("tasks"))
        indexes = await connection.run_sync(lambda sync: sa.inspect(sync).get_indexes("tasks"))
    assert [column["name"] for column in columns] == [column.name for column in TASKS.columns]
    assert {column["name"] for column in columns if not column["nullable"]} == {
        column.name for column in TASKS.columns if not column.nullable}
    assert {index["name"] for index in indexes} == {"ix_tasks_created", "ix_tasks_expires_at", "ix_tasks_status"}


async def test_with_redis_a_replica_starting_leaves_leased_tasks_alone(
    aiohttp_client: Any, aiohttp_server: Any, redis_server: Any, tmp_path: Path
) -> None:
    env = {"UPSTREAM": "http://127.0.0.1:9", "OPENAI_API_KEY": "k", "DATABASE": str(tmp_path / "db")}
    text = rules(state=redis_server.url)
    first = await aiohttp_client(await start_proxy(make_app(parsed := parse_rules(text, env, SCHEMAS)), parsed))
    # A task the first replica runs: it holds the lease (and renews it).
    running = replace(new_record(owner_of("key-a"), time.time(), 600), status=RUNNING, lease_until=time.time() + 30)
    await first.server.app[SERVICES].tasks.put(running)
    second = await aiohttp_client(await start_proxy(make_app(parsed), parsed))  # another replica starts
    assert not isinstance(second.server.app[SERVICES].tasks, DatabaseTaskStore)
    body = await (await second.get(f"/v1/images/generations/{running.id}", headers=A)).json()
    assert body["task_status"] == RUNNING


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A task store as replicas share it: the ledger's database (SQLite, PostgreSQL) or Redis."""
    if request.param == "redis":
        from proxy.redis_state import RedisTaskStore, connect

        client = connect(request.getfixturevalue("redis_server").url)
        yield RedisTaskStore(client)
        await client.aclose()
        return
    sqlite = URL.create("sqlite+aiosqlite", database=str(tmp_path / "t.db"))
    ledger = Ledger(open_engine(sqlite if request.param == "sqlite" else database_url_of(request)), None)
    yield DatabaseTaskStore(ledger.engine, ledger.ensure_schema)
    await ledger.engine.dispose()


async def test_an_orphan_is_claimed_once_and_a_leased_or_finished_task_never(store: Any) -> None:
    now = time.time()
    orphan = replace(new_record("o", now, 600), status=RUNNING, lease_until=now - 1)
    leased = replace(new_record("o", now, 600), status=RUNNING, lease_until=now + 30)
    done = finished(replace(new_record("o", now, 600), lease_until=now - 1), {"created": int(now), "data": []})
    for record in (orphan, leased, done):
        await store.put(record)
    assert [record.id for record in await store.orphans(now, 10)] == [orphan.id]
    claims = await asyncio.gather(*(store.claim(orphan.id, now + 30, now) for _ in range(5)))
    assert [claim.id for claim in claims if claim is not None] == [orphan.id]  # one of five claimants wins
    assert await store.orphans(now, 10) == []  # the winner's lease now covers it
    assert await store.claim(leased.id, now + 30, now) is None and await store.claim(done.id, now + 30, now) is None
    await store.renew([leased.id, orphan.id], now + 60)
    assert await store.orphans(now, 10) == []


async def test_a_finished_record_never_changes(store: Any) -> None:
    """Of two processes that ran one task (one lost its lease while it still ran), the first to end it wins."""
    now = time.time()
    running = replace(new_record("o", now, 600), status=RUNNING, lease_until=now + 30)
    assert await store.put(running) is True
    ended = finished(running, {"created": int(now), "data": [{"url": "first"}]})
    assert await store.put(ended) is True
    assert await store.put(finished(running, {"created": int(now), "data": [{"url": "second"}]})) is False
    assert await store.put(running) is False  # nor back to running
    kept = await store.get(running.id)
    assert kept is not None and kept.status == SUCCEED and kept.body == {"created": int(now), "data": [{"url": "first"}]}
    assert await store.orphans(now + 60, 10) == []


def database_url_of(request: pytest.FixtureRequest) -> URL:
    return make_url(str(request.getfixturevalue("postgres_url"))).set(drivername="postgresql+asyncpg")
