"""The ledger through the real app: one record per image request on every path, with its figures, in the
embedded SQLite file and in a real PostgreSQL; a database that fails never changes the client's answer."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import FormData
from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.ext.asyncio import create_async_engine

import proxy.ledger
from proxy.core.ledger_record import COLUMNS, LedgerRecord
from proxy.database import GENERATIONS, RowInsert, database_url, migrate, open_engine
from proxy.ledger import Ledger
from proxy.services import SERVICES
from tests.factories import LOCAL, OPENAI, free_port, poll_task, rules_yaml, url_of
from tests.factories import ledger_rows as rows
from tests.fakes.openai import KEY, PNG, FakeOpenAI
from tests.fakes.zhipu import FakeZhipu

TOKEN_PRICE = {"per_million_tokens": {"text_input": 5, "image_input": 10, "image_output": 40}}
MODELS: dict[str, Any] = {
    "gpt-image-1": {"channels": ["openai"], "price": TOKEN_PRICE},
    "dall-e-2": {"channels": ["openai"], "price": {"per_image": {"256x256": 0.016, "*": 0.02}}},
    "backed-up": {"channels": ["first", "openai"], "upstream_model": "dall-e-2", "price": {"per_image": 0.02}},
    "cogview-4": {"channels": ["zhipu"], "max_n": 4, "price": {"per_image": 0.04}},
    "local-image": {"channels": ["local"], "price": {"per_megapixel": 0.5}},
}
CHANNELS: dict[str, Any] = {
    "first": OPENAI,
    "openai": OPENAI,
    "local": LOCAL,
    "zhipu": {"type": "zhipu", "base_url": "${ZHIPU}/api/paas/v4", "api_key": "${ZHIPU_API_KEY}"},
}
KEYS = [{"key": "client-key-1", "name": "team-a"}, {"key": "limited", "name": "team-b", "limits": {"requests_per_minute": 1}}]


def rules(**server: Any) -> str:
    return rules_yaml(MODELS, CHANNELS, server={"api_keys": KEYS, "database": "${DATABASE:-}", **server})


def bearer(key: str = "client-key-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(autouse=True)
async def sqlite_threads_end_before_the_loop() -> Any:
    """A failed SQLite connection stops its aiosqlite thread after the test's last await; the thread then
    reports to the loop, and a loop already closed makes that a thread error blamed on the next test."""
    yield
    for _ in range(500):  # 5 s at most
        if not any("_connection_worker_thread" in thread.name for thread in threading.enumerate()):
            return
        await asyncio.sleep(0.01)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    """`server.database` for the test: "" (the embedded SQLite default) or a fresh PostgreSQL database."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


async def start(make_proxy: Any, aiohttp_server: Any, fake: FakeOpenAI, database: str = "", text: str | None = None) -> Any:
    zhipu = FakeZhipu()
    env = {
        "UPSTREAM": url_of(await aiohttp_server(fake.app())),
        "OPENAI_API_KEY": KEY,
        "ZHIPU": url_of(await aiohttp_server(zhipu.app())),
        "ZHIPU_API_KEY": zhipu.api_key,
        "DATABASE": database,
    }
    return await make_proxy(text or rules(), env)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def metric(client: Any, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    found = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert found, f"{name} is not in /metrics"
    return float(found[0])


async def test_a_generation_is_one_record_with_its_figures(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    client = await start(make_proxy, aiohttp_server, FakeOpenAI(), database)
    before = datetime.now(UTC)
    response = await client.post(
        "/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a heron", "size": "1024x1024", "quality": "low", "output_format": "png"},
        headers={**bearer(), "X-Request-ID": "req-heron", "Idempotency-Key": "heron-1"},
    )
    assert response.status == 200
    (row,) = await rows(client)
    at = row.pop("at")
    assert before.timestamp() - 1 <= (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() <= time.time()
    assert row.pop("id") >= 1 and row.pop("total_ms") >= row.pop("upstream_ms") > 0
    assert row == {
        "request_id": "req-heron", "key_name": "team-a", "operation": "generate", "mode": "sync", "status": 200,
        "images": 1, "model": "gpt-image-1", "rule": "gpt-image-1", "upstream_model": "gpt-image-1", "channel": "openai",
        "attempts": 1, "n": 1, "size": "1024x1024", "quality": "low", "output_format": "png", "error_type": None,
        "error_code": None, "input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170,
        "cost_micro_usd": 10 * 5 + 4160 * 40,  # tokens x USD per million tokens = micro-dollars
        "task_id": None, "idempotency_key": "heron-1", "prompt": None, "prompt_sha256": sha256("a heron"),
        "image_ids": None, "images_expire_at": None,  # delivered as base64: nothing hosted
    }
    assert (await response.json())["metadata"]["cost_usd"] == 0.16645


async def test_hosted_images_are_recorded_by_name_with_their_expiry(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    client = await start(make_proxy, aiohttp_server, FakeOpenAI(), database)
    body = {"model": "gpt-image-1", "prompt": "two herons", "n": 2, "response_format": "url"}
    answer = await (await client.post("/v1/images/generations", json=body, headers=bearer())).json()
    (row,) = await rows(client)
    names = [item["url"].rsplit("/images/", 1)[1] for item in answer["data"]]
    assert sorted(row["image_ids"].split(" ")) == sorted(names) and len(names) == 2  # hosted side by side: any order
    expires = row["images_expire_at"]
    expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
    ttl = client.server.app[SERVICES].store.ttl
    assert time.time() + ttl - 5 <= expires.timestamp() <= time.time() + ttl
    for name in names:  # each name is an image the proxy serves
        assert (await client.get(f"/images/{name}")).status == 200


async def test_failover_failures_and_refusals_are_recorded_with_their_status_and_code(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake, database)
    fake.failures = [(500, {"error": {"message": "busy", "type": "server_error"}}, {})]
    failover = await client.post("/v1/images/generations", json={"model": "backed-up", "prompt": "p", "n": 2}, headers=bearer())
    policy = {"error": {"message": "no", "type": "invalid_request_error", "code": "content_policy_violation"}}
    fake.failures = [(400, policy, {})]
    refused = await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=bearer())
    unknown = await client.post("/v1/images/generations", json={"model": "nope", "prompt": "p"}, headers=bearer())
    limited = [await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=bearer("limited"))
               for _ in range(2)]
    wrong_key = await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=bearer("wrong"))
    answers = [failover, refused, unknown, *limited, wrong_key]
    assert [answer.status for answer in answers] == [200, 400, 404, 200, 429, 401]
    codes = [None] + [(await answer.json())["error"]["code"] for answer in answers[1:3]] + [None] + [
        (await answer.json())["error"]["code"] for answer in answers[4:]]
    found = await rows(client)
    assert [(r["status"], r["error_code"]) for r in found] == [(a.status, code) for a, code in zip(answers, codes, strict=True)]
    assert codes[1:3] == ["content_policy_violation", "model_not_found"]
    first = found[0]
    assert (first["channel"], first["attempts"], first["upstream_model"]) == ("openai", 2, "dall-e-2")
    assert (first["images"], first["n"]) == (2, 2)
    assert first["cost_micro_usd"] == 40_000
    assert (found[1]["images"], found[1]["cost_micro_usd"], found[1]["channel"]) == (0, None, "openai")
    assert (found[2]["model"], found[2]["rule"]) == ("nope", None)
    assert [(r["key_name"], r["n"]) for r in found[3:]] == [("team-b", 1), ("team-b", 1), ("anonymous", None)]
    assert found[4]["error_type"] == (await limited[1].json())["error"]["type"]


async def test_an_async_task_is_recorded_when_it_ends(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    fake = FakeOpenAI(delay=0.3)
    client = await start(make_proxy, aiohttp_server, fake, database)
    body = {"model": "dall-e-2", "prompt": "p", "n": 2, "size": "256x256", "async": True}
    task_id = (await (await client.post("/v1/images/generations", json=body, headers=bearer())).json())["task_id"]
    assert await rows(client) == []  # the POST answered; the task has not ended
    await poll_task(client, task_id, bearer(), "succeed")
    fake.failures = [(400, {"error": {"message": "no", "type": "invalid_request_error", "code": "bad_prompt"}}, {})]
    failed_id = (await (await client.post("/v1/images/generations", json=body, headers=bearer())).json())["task_id"]
    await poll_task(client, failed_id, bearer(), "failed")
    done, failed = await rows(client)
    assert (done["mode"], done["task_id"], done["status"], done["images"], done["n"]) == ("async", task_id, 200, 2, 2)
    assert (done["cost_micro_usd"], done["channel"], done["attempts"], done["error_code"]) == (32_000, "openai", 1, None)
    assert done["total_ms"] >= 300  # from the POST to the task's end
    assert (failed["mode"], failed["task_id"], failed["status"], failed["error_code"]) == ("async", failed_id, 400, "bad_prompt")
    assert failed["images"] == 0 and failed["cost_micro_usd"] is None


async def test_streams_native_emulated_and_cut_are_recorded(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await start(make_proxy, aiohttp_server, fake)
    native = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p", "stream": True},
                               headers=bearer())
    await native.read()
    emulated = await client.post("/v1/images/generations", json={"model": "cogview-4", "prompt": "p", "n": 2, "stream": True},
                                 headers=bearer())
    await emulated.read()
    drawn = await client.post("/v1/images/generations", json={"model": "local-image", "prompt": "p", "size": "1000x500",
                                                              "stream": True}, headers=bearer())
    await drawn.read()
    fake.stream_error_after = 1
    cut = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p", "stream": True,
                                                            "partial_images": 2}, headers=bearer())
    assert b"event: error" in await cut.read()
    found = await rows(client)
    assert [(r["mode"], r["status"], r["channel"], r["images"]) for r in found] == [
        ("stream", 200, "openai", 1), ("stream", 200, "zhipu", 2), ("stream", 200, "local", 1), ("stream", 200, "openai", 0)]
    assert (found[0]["input_tokens"], found[0]["output_tokens"], found[0]["total_tokens"]) == (5, 100, 105)
    assert [r["cost_micro_usd"] for r in found] == [5 * 5 + 100 * 40, 80_000, 250_000, 0]
    assert found[3]["error_code"] is not None and found[0]["error_code"] is None


async def test_edits_and_variations_are_recorded_as_such(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await start(make_proxy, aiohttp_server, FakeOpenAI())
    for path, fields in (("/v1/images/edits", {"prompt": "add a hat"}), ("/v1/images/variations", {})):
        form = FormData()
        for name, value in {"model": "dall-e-2", "n": "2", "size": "256x256", **fields}.items():
            form.add_field(name, value)
        form.add_field("image", PNG, filename="a.png", content_type="image/png")
        assert (await client.post(path, data=form, headers=bearer())).status == 200
    edit, variation = await rows(client)
    assert (edit["operation"], edit["images"], edit["cost_micro_usd"], edit["prompt_sha256"]) == (
        "edit", 2, 32_000, sha256("add a hat"))
    assert (variation["operation"], variation["images"], variation["size"], variation["prompt_sha256"]) == (
        "variation", 2, "256x256", sha256(""))


async def test_the_prompt_is_kept_only_with_log_prompts(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await start(make_proxy, aiohttp_server, FakeOpenAI(), text=rules(log_prompts=True))
    await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "a heron\u0000"}, headers=bearer())
    (row,) = await rows(client)
    assert (row["prompt"], row["prompt_sha256"]) == ("a heron\ufffd", sha256("a heron\u0000"))


async def test_the_default_database_is_a_file_beside_the_image_store(
    make_proxy: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client = await start(make_proxy, aiohttp_server, FakeOpenAI())
    assert (tmp_path / "images").is_dir() and (tmp_path / "imagegate.db").is_file()
    assert str(client.server.app[SERVICES].ledger.engine.url.database) == str(tmp_path / "imagegate.db")


async def test_migrations_make_the_schema_and_are_idempotent_on_restart(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    first = await start(make_proxy, aiohttp_server, FakeOpenAI(), database)
    await first.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=bearer())
    await first.close()  # shutdown writes the queue out
    second = await start(make_proxy, aiohttp_server, FakeOpenAI(), database)  # the same database: migrated already
    await second.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=bearer())
    assert len(await rows(second)) == 2
    engine = second.server.app[SERVICES].ledger.engine
    await migrate(engine)  # once more: nothing to do
    async with engine.connect() as connection:
        assert (await connection.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all() == ["0006"]
        columns = await connection.run_sync(lambda sync: sa.inspect(sync).get_columns("generations"))
        indexes = await connection.run_sync(lambda sync: sa.inspect(sync).get_indexes("generations"))
    assert [column["name"] for column in columns] == [column.name for column in GENERATIONS.columns]
    assert {column["name"] for column in columns if not column["nullable"]} == {
        column.name for column in GENERATIONS.columns if not column.nullable}
    assert {index["name"] for index in indexes} == {"ix_generations_at", "ix_generations_key_name_at"}


@pytest.mark.parametrize("broken", ["sqlite", "postgres"])
async def test_a_broken_database_changes_no_answer_and_counts_a_failure(
    make_proxy: Any, aiohttp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    # A path no one can create (root included), or a PostgreSQL that is not running.
    database = str(tmp_path / "a-file" / "ledger.db") if broken == "sqlite" else f"postgresql://u:pw-42@127.0.0.1:{free_port()}/x"
    client = await start(make_proxy, aiohttp_server, FakeOpenAI(), database)
    response = await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p", "n": 2}, headers=bearer())
    assert response.status == 200 and len((await response.json())["data"]) == 2
    ledger = client.server.app[SERVICES].ledger
    await ledger.write_queued()
    assert (ledger.failed, ledger.written) == (1, 0)
    assert await metric(client, "imagegate_ledger_write_failures_total") == 1
    assert "ledger: could not write 1 record(s)" in caplog.text and "pw-42" not in caplog.text


async def test_a_full_queue_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    ledger = Ledger(engine, None, capacity=2)
    for _ in range(3):
        ledger.add(record())
    assert ledger.dropped == 1 and "ledger queue full" in caplog.text
    await ledger.write_queued()
    assert ledger.written == 2
    await engine.dispose()


async def test_shutdown_writes_the_queue_out(
    make_proxy: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.ledger, "EVERY", 3600.0)  # the writer would not wake on its own during the test
    client = await start(make_proxy, aiohttp_server, FakeOpenAI())
    for _ in range(3):
        await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=bearer())
    await client.close()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'imagegate.db'}")
    async with engine.connect() as connection:
        assert (await connection.execute(sa.select(sa.func.count()).select_from(GENERATIONS))).scalar() == 3
    await engine.dispose()


async def test_a_ledger_closed_at_once_still_writes_what_it_was_given(tmp_path: Path) -> None:
    ledger = Ledger(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"), None, every=3600.0)
    await ledger.start()
    ledger.add(record())
    await ledger.close(5.0)
    assert (ledger.written, ledger.failed) == (1, 0)


def record(index: int = 0) -> LedgerRecord:
    return LedgerRecord(at=datetime.now(UTC), request_id=f"r{index}", key_name="k", operation="generate", mode="sync",
                        status=200, images=1, total_ms=1.0, upstream_ms=0.5, model="m", cost_micro_usd=40_000)


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_ten_thousand_records_are_written_in_batches(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> None:
    url = f"sqlite:///{tmp_path / 'bulk.db'}" if dialect == "sqlite" else str(request.getfixturevalue("postgres_url"))
    from tests.factories import make_rules

    engine = open_engine(database_url(make_rules({}, {"local": LOCAL}, server={"database": url}), None))
    ledger = Ledger(engine, None)
    await migrate(engine)
    began = time.perf_counter()
    for index in range(10_000):
        ledger.add(record(index))
    await ledger.write_queued()
    took = time.perf_counter() - began
    async with engine.connect() as connection:
        assert (await connection.execute(sa.select(sa.func.count()).select_from(GENERATIONS))).scalar() == 10_000
    await engine.dispose()
    print(f"ledger: 10,000 records written to {dialect} in {took:.2f}s")
    assert took < 30


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_every_column_is_written_as_recorded(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> None:
    url = f"sqlite:///{tmp_path / 'every.db'}" if dialect == "sqlite" else str(request.getfixturevalue("postgres_url"))
    from tests.factories import make_rules

    engine = open_engine(database_url(make_rules({}, {"local": LOCAL}, server={"database": url}), None))
    at = datetime(2026, 3, 4, 5, 6, 7, 891_011, tzinfo=UTC)
    full = LedgerRecord(
        at=at, request_id="r-full", key_name="team-a", operation="edit", mode="async", status=502, images=3,
        total_ms=1234.5, upstream_ms=1000.0, model="m", rule="m*", upstream_model="um", channel="c", attempts=2, n=4,
        size="1024x1024", quality="high", output_format="webp", error_type="server_error", error_code="upstream_error",
        input_tokens=2**40, output_tokens=0, total_tokens=2**40, cost_micro_usd=9_000_000_000, task_id="t-1",
        idempotency_key="i-1", prompt="a heron \u00e9\u4e2d", prompt_sha256="ab" * 32, image_ids="a.png b.png",
        images_expire_at=at + timedelta(days=1),
    )
    sparse = record(7)  # every optional column empty
    ledger = Ledger(engine, None)
    await migrate(engine)
    ledger.add(full)
    ledger.add(sparse)
    await ledger.write_queued()
    async with engine.connect() as connection:
        found = (await connection.execute(sa.select(GENERATIONS).order_by(GENERATIONS.c.id))).mappings().all()
    await engine.dispose()
    as_utc = {"at", "images_expire_at"}  # SQLite gives times back without their zone
    for written, row in zip((full, sparse), found, strict=True):
        assert [(row[name].replace(tzinfo=UTC) if name in as_utc and row[name] is not None else row[name])
                for name in COLUMNS] == list(astuple(written))


async def test_records_queued_during_a_write_wait_for_the_next_round(tmp_path: Path) -> None:
    """Under a steady stream the writer writes what has waited `every` seconds, not a few records per
    transaction chasing the stream (each transaction costs about a millisecond of CPU)."""
    ledger = Ledger(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"), None, every=0.25)
    await migrate(ledger.engine)
    await ledger.start()
    counts = []
    began = time.monotonic()
    while time.monotonic() - began < 1.0:  # a record every 2 ms for a second
        ledger.add(record())
        counts.append(ledger.written)
        await asyncio.sleep(0.002)
    await ledger.close(5.0)
    rounds = len(set(counts))  # each distinct count seen: one more batch was written
    assert ledger.written == len(counts) and ledger.failed == 0
    assert rounds <= 6, rounds  # about one a quarter of a second (and one at close)


async def test_an_idle_writer_stays_asleep_until_a_record_comes(tmp_path: Path) -> None:
    ledger = Ledger(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"), None, every=0.05)
    writes = []
    write_queued = ledger.write_queued

    async def counted() -> None:
        writes.append(len(ledger._queue))
        await write_queued()

    ledger.write_queued = counted  # type: ignore[method-assign]
    await ledger.start()
    await asyncio.sleep(0.3)
    assert writes == []  # no record, no round (an idle proxy's writer wakes for nothing)
    ledger.add(record())
    await asyncio.sleep(0.3)
    assert writes == [1] and ledger.written == 1
    await ledger.close(5.0)


def test_a_row_insert_needs_a_driver_that_binds_by_position() -> None:
    assert RowInsert(GENERATIONS, COLUMNS, aiosqlite.dialect()).sql.startswith("INSERT INTO generations (at, request_id")
    with pytest.raises(ValueError, match="by position"):
        RowInsert(GENERATIONS, COLUMNS, aiosqlite.dialect(paramstyle="named"))


async def test_an_sqlite_ledger_is_in_write_ahead_log_mode(make_proxy: Any, aiohttp_server: Any, tmp_path: Any) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    client = await start(make_proxy, aiohttp_server, FakeOpenAI(), f"sqlite:///{path}")
    response = await client.post("/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p"}, headers=bearer())
    assert response.status == 200
    connection = sqlite3.connect(path)
    try:
        # Workers' readers do not wait for a writer, and the mode is the file's: any connection sees it.
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()
