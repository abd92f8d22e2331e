"""The admin API the console calls (proxy.admin), through the real app: channels with their ledger figures and
newest errors, the channel test button, every owner's tasks, the `/admin/generations` filters, admin keys as
client keys, the loopback rule of an open proxy; on SQLite and PostgreSQL (tasks' `recent` also on Redis)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request
from PIL import Image
from sqlalchemy.engine import URL, make_url

from proxy import redis_state
from proxy.core.errors import AuthenticationFailed
from proxy.database import open_engine
from proxy.ledger import Ledger
from proxy.middleware import require_admin
from proxy.services import SERVICES
from proxy.task_table import DatabaseTaskStore
from proxy.tasks import FAILED, RUNNING, MemoryTaskStore, finished, new_record
from tests.factories import LOCAL, OPENAI, ledger_rows, poll_task, rules_yaml, serve_fake
from tests.fakes.kling import FakeKling
from tests.fakes.openai import KEY, FakeOpenAI

ADMIN = {"Authorization": "Bearer admin-secret"}
A = {"Authorization": "Bearer key-a"}
SPARE = {"type": "openai", "base_url": "${UPSTREAM}/v1", "api_key": "${SPARE_API_KEY}"}  # its key is never set
KLING = {"type": "kling", "base_url": "${KLING}", "api_key": "${KLING_ACCESS_KEY}:${KLING_SECRET_KEY}",
         "poll_interval": 0.05, "max_poll_interval": 0.05}
MODELS: dict[str, Any] = {
    "gpt-image-2": {"channels": ["openai", "spare"]},
    "dall-e-3": {"channels": ["openai"], "sizes": ["1024x1024", "1792x1024"], "max_n": 1},
    "local-image": {"channels": ["local"], "sizes": ["256x256", "64x64"]},
    "kling-v2": {"channels": ["kling"]},
}
SERVER = {"api_keys": [{"key": "key-a", "name": "alice"}], "admin_keys": ["admin-secret"], "database": "${DATABASE:-}"}
RULES = rules_yaml(MODELS, {"openai": OPENAI, "local": LOCAL, "spare": SPARE, "kling": KLING}, server=SERVER)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


async def proxy(make_proxy: Any, aiohttp_server: Any, database: str, openai: FakeOpenAI, kling: FakeKling | None = None,
                rules: str = RULES) -> Any:
    kling = kling or FakeKling()
    return await make_proxy(rules, {
        "UPSTREAM": await serve_fake(aiohttp_server, openai), "OPENAI_API_KEY": KEY, "DATABASE": database,
        "KLING": await serve_fake(aiohttp_server, kling), "KLING_ACCESS_KEY": kling.access_key,
        "KLING_SECRET_KEY": kling.secret_key})


async def generate(client: Any, body: dict[str, Any], request_id: str, headers: dict[str, str] = A) -> Any:
    return await client.post("/v1/images/generations", json={"prompt": "p", **body},
                             headers={**headers, "X-Request-ID": request_id})


async def test_channels_report_their_models_windows_and_newest_errors(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    openai = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, database, openai)
    assert (await generate(client, {"model": "gpt-image-2"}, "good-1")).status == 200
    openai.failures.append((500, {"error": {"message": "boom", "type": "server_error"}}, {}))
    assert (await generate(client, {"model": "gpt-image-2"}, "bad-1")).status == 502
    await client.server.app[SERVICES].ledger.write_queued()
    response = await client.get("/admin/channels", headers=ADMIN)
    text = await response.text()
    assert response.status == 200, text
    assert KEY not in text and "kling-secret" not in text and "admin-secret" not in text
    body = await response.json()
    assert body["object"] == "list"
    assert [(c["name"], c["type"], c["credentials"], c["models"]) for c in body["data"]] == [
        ("openai", "openai", True, ["gpt-image-2", "dall-e-3"]), ("local", "local", True, ["local-image"]),
        ("spare", "openai", False, ["gpt-image-2"]), ("kling", "kling", True, ["kling-v2"])]
    openai_row = body["data"][0]
    usage = await (await client.get("/admin/usage?group_by=channel", headers=ADMIN)).json()
    (expected,) = usage["data"]  # the same two records, bucketed by the usage API's query
    for window, label in zip(openai_row["windows"], ("1h", "24h"), strict=True):
        assert window == {"window": label, "requests": 2, "errors": 1, "success_rate": 0.5,
                          "p50_ms": expected["p50_ms"], "p95_ms": expected["p95_ms"]}
    assert 0 < openai_row["windows"][0]["p50_ms"] <= openai_row["windows"][0]["p95_ms"]
    (error,) = openai_row["last_errors"]
    assert error.pop("at").startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
    assert error == {"status": 502, "error_code": "upstream_error", "error_type": "upstream_error",
                     "model": "gpt-image-2", "request_id": "bad-1"}
    quiet = body["data"][3]["windows"]
    assert quiet[0] == {"window": "1h", "requests": 0, "errors": 0, "success_rate": None, "p50_ms": None, "p95_ms": None}
    assert body["data"][3]["last_errors"] == []


async def test_the_test_button_runs_one_small_generation_on_that_channel_alone(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    openai = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, database, openai)
    local = await (await client.post("/admin/channels/local/test", headers=ADMIN)).json()
    assert {k: local[k] for k in ("channel", "model", "ok", "status", "error")} == {
        "channel": "local", "model": "local-image", "ok": True, "status": 200, "error": None}
    assert local["ms"] > 0 and local["metadata"]["channel"] == "local"
    (image,) = local["data"]
    assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (64, 64)  # the smallest size the rule lists
    openai.failures.extend([(500, {"error": {"message": "boom", "type": "server_error"}}, {})] * 3)
    failed_response = await client.post("/admin/channels/openai/test", headers=ADMIN)
    failed = await failed_response.json()
    assert failed_response.status == 200
    assert {k: failed[k] for k in ("channel", "model", "ok", "status", "data")} == {
        "channel": "openai", "model": "gpt-image-2", "ok": False, "status": 502, "data": []}
    assert set(failed["error"]) == {"message", "type", "code", "param"} and failed["error"]["code"] == "upstream_error"
    sent = openai.recorder.received[-1].json()
    assert {k: sent[k] for k in ("model", "prompt", "n", "size")} == {
        "model": "gpt-image-2", "prompt": "a small red circle", "n": 1, "size": "1024x1024"}
    spare = await (await client.post("/admin/channels/spare/test", headers=ADMIN)).json()
    assert (spare["ok"], spare["status"], spare["error"]["code"]) == (False, 503, "channel_unavailable")
    missing = await client.post("/admin/channels/nope/test", headers=ADMIN)
    assert missing.status == 404 and (await missing.json())["error"]["param"] == "name"
    rows = await ledger_rows(client)
    assert [(r["key_name"], r["channel"], r["model"], r["status"], r["error_code"]) for r in rows] == [
        ("admin", "local", "local-image", 200, None), ("admin", "openai", "gpt-image-2", 502, "upstream_error"),
        ("admin", None, "gpt-image-2", 503, "channel_unavailable")]
    assert len(openai.recorder.received) == 1  # only the test sent to openai, once: no other channel, no retry round


async def test_tasks_of_every_owner_are_listed_newest_first_and_shown_whole(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    kling = FakeKling(polls_before_done=10_000)
    client = await proxy(make_proxy, aiohttp_server, database, FakeOpenAI(), kling)
    running_id = (await (await generate(client, {"model": "kling-v2", "async": True}, "k")).json())["task_id"]
    done_id = (await (await generate(client, {"model": "local-image", "size": "64x64", "async": True}, "l")).json())["task_id"]
    await poll_task(client, done_id, A, "succeed")
    store = client.server.app[SERVICES].tasks
    for _ in range(200):  # until the upstream task exists and the checkpoint names its channel
        running = await store.get(running_id)
        if running.checkpoint and running.checkpoint.get("channel"):
            break
        await asyncio.sleep(0.02)
    await client.server.app[SERVICES].ledger.write_queued()  # the ended task's ledger record names its key
    listed = await (await client.get("/admin/tasks?limit=50", headers=ADMIN)).json()
    by_id = {row["id"]: row for row in listed["data"]}
    assert set(by_id) == {running_id, done_id} and listed["object"] == "list"
    assert [row["created"] for row in listed["data"]] == sorted((row["created"] for row in listed["data"]), reverse=True)
    polls = running.checkpoint["state"]["fields"]["polls"]
    assert by_id[running_id] == {"id": running_id, "status": RUNNING, "created": running.created,
                                 "expires_at": running.expires_at, "model": "kling-v2", "key_name": "alice",
                                 "channel": "kling", "polls": polls, "images": 0, "error": None}
    done = by_id[done_id]
    assert {k: done[k] for k in ("status", "model", "key_name", "channel", "images", "error")} == {
        "status": "succeed", "model": "local-image", "key_name": "alice", "channel": "local", "images": 1, "error": None}
    detail = await client.get(f"/admin/tasks/{running_id}", headers=ADMIN)  # not the owner's key
    assert detail.status == 200 and (await detail.json())["task_status"] == RUNNING
    whole = await (await client.get(f"/admin/tasks/{done_id}", headers=ADMIN)).json()
    assert whole["task_status"] == "succeed" and len(whole["data"]) == 1 and whole["metadata"]["channel"] == "local"
    missing = await client.get("/admin/tasks/nope", headers=ADMIN)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "task_not_found"
    for bad in ("0", "501", "x"):
        refused = await client.get(f"/admin/tasks?limit={bad}", headers=ADMIN)
        assert refused.status == 400 and (await refused.json())["error"]["param"] == "limit"
    for query, param in (("before=abc", "before"), ("limit=x", "limit"), ("end_time=253402300800", "end_time")):
        refused = await client.get(f"/admin/generations?{query}", headers=ADMIN)
        assert refused.status == 400 and (await refused.json())["error"]["param"] == param, query


async def test_a_failed_task_lists_its_error(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, "", FakeOpenAI(), FakeKling(polls_before_done=0, moderate=True))
    task_id = (await (await generate(client, {"model": "kling-v2", "async": True}, "m")).json())["task_id"]
    await poll_task(client, task_id, A, FAILED)
    await client.server.app[SERVICES].ledger.write_queued()
    (row,) = (await (await client.get("/admin/tasks", headers=ADMIN)).json())["data"]
    assert row["status"] == FAILED and row["images"] == 0 and row["error"]["type"] == "image_generation_user_error"
    assert (row["key_name"], row["model"], row["channel"]) == ("alice", "kling-v2", "kling")  # from the ledger
    detail = await client.get(f"/admin/tasks/{task_id}", headers=ADMIN)
    assert detail.status == 400 and (await detail.json())["error"]["code"] == row["error"]["code"]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield MemoryTaskStore()
        return
    if request.param == "redis":
        client = redis_state.connect(request.getfixturevalue("redis_server").url)
        yield redis_state.RedisTaskStore(client)
        await client.aclose()
        return
    url = (URL.create("sqlite+aiosqlite", database=str(tmp_path / "t.db")) if request.param == "sqlite"
           else make_url(str(request.getfixturevalue("postgres_url"))).set(drivername="postgresql+asyncpg"))
    ledger = Ledger(open_engine(url), None)
    yield DatabaseTaskStore(ledger.engine, ledger.ensure_schema)
    await ledger.engine.dispose()


async def test_recent_lists_the_newest_records_of_every_owner(store: Any) -> None:
    now = time.time()
    records = [replace(new_record(owner, now, 600), created=int(now) - age) for owner, age in (("a", 30), ("b", 10), ("c", 20))]
    records[1] = finished(records[1], {"created": records[1].created, "data": []})
    for record in records:
        await store.put(record)
    assert [record.id for record in await store.recent(2)] == [records[1].id, records[2].id]
    assert [record.owner for record in await store.recent(500)] == ["b", "c", "a"]


async def test_redis_keeps_the_newest_ids_only(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_state, "RECENT_KEPT", 2)
    client = redis_state.connect(redis_server.url)
    store = redis_state.RedisTaskStore(client)
    now = time.time()
    records = [replace(new_record("o", now, 600), created=int(now) + offset) for offset in range(3)]
    for record in records:
        await store.put(record)
    assert await client.zcard(redis_state.RECENT_TASKS) == 2
    assert [record.id for record in await store.recent(10)] == [records[2].id, records[1].id]
    await client.aclose()


async def test_generations_filter_by_model_and_status(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    openai = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, database, openai)
    local = {"model": "local-image", "size": "64x64", "response_format": "url"}  # the proxy hosts its image
    assert (await generate(client, local, "url-1")).status == 200
    openai.failures.append((500, {"error": {"message": "boom", "type": "server_error"}}, {}))
    assert (await generate(client, {"model": "gpt-image-2"}, "bad-1")).status == 502
    assert (await generate(client, {"model": "dall-e-3"}, "dalle-1")).status == 200
    await client.server.app[SERVICES].ledger.write_queued()

    async def ids(query: str) -> list[str]:
        response = await client.get(f"/admin/generations?{query}", headers=ADMIN)
        assert response.status == 200, await response.text()
        return [row["request_id"] for row in (await response.json())["data"]]

    assert await ids("status=error") == ["bad-1"]
    assert await ids("status=ok") == ["dalle-1", "url-1"]
    assert await ids("model=local-image&status=ok") == ["url-1"] and await ids("model=local-image&status=error") == []
    assert await ids("model=gpt-image-2&key=alice") == ["bad-1"] and await ids("model=gpt-image-2&key=bob") == []
    (hosted,) = (await (await client.get("/admin/generations?model=local-image", headers=ADMIN)).json())["data"]
    assert len(hosted["image_ids"].split()) == 1 and hosted["images_expire_at"] > hosted["at"]
    bad = await client.get("/admin/generations?status=maybe", headers=ADMIN)
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "status"


async def test_an_admin_key_is_a_client_key_named_admin(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, "", FakeOpenAI())
    assert (await generate(client, {"model": "local-image", "size": "64x64"}, "by-admin", ADMIN)).status == 200
    assert (await client.get("/v1/images/models", headers=ADMIN)).status == 200
    assert (await generate(client, {"model": "local-image", "size": "64x64"}, "by-nobody", {})).status == 401
    wrong = await generate(client, {"model": "local-image", "size": "64x64"}, "by-wrong", {"Authorization": "Bearer x"})
    assert wrong.status == 401
    by_admin = [row for row in await ledger_rows(client) if row["request_id"] == "by-admin"]
    assert [(row["key_name"], row["status"]) for row in by_admin] == [("admin", 200)]
    own = await (await client.get("/v1/usage", headers=ADMIN)).json()
    assert own["data"][0]["requests"] == 1


async def test_admin_routes_need_an_admin_key_when_keys_are_set(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy(make_proxy, aiohttp_server, "", FakeOpenAI())
    for method, path in (("GET", "/admin/channels"), ("POST", "/admin/channels/local/test"), ("GET", "/admin/tasks"),
                         ("GET", "/admin/tasks/x"), ("GET", "/admin/generations"), ("GET", "/admin/usage")):
        for headers in ({}, A):  # loopback is no excuse once keys exist, and a client key is no admin key
            refused = await client.request(method, path, headers=headers)
            assert refused.status == 401, path
            assert (await refused.json())["error"]["code"] == "admin_key_required"


async def test_an_open_proxy_answers_admin_routes_on_loopback_only(make_proxy: Any, aiohttp_server: Any) -> None:
    rules = rules_yaml(MODELS, {"openai": OPENAI, "local": LOCAL, "spare": SPARE, "kling": KLING},
                       server={"database": "${DATABASE:-}"})
    client = await proxy(make_proxy, aiohttp_server, "", FakeOpenAI(), rules=rules)
    for path in ("/admin/channels", "/admin/tasks", "/admin/usage"):  # the test client connects from 127.0.0.1
        assert (await client.get(path)).status == 200, path
    app = client.server.app
    for remote, allowed in (("203.0.113.7", False), ("10.0.0.2", False), ("::1", True), ("127.0.0.1", True)):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None, r=remote: (r, 40000) if name == "peername" else default
        request = make_mocked_request("GET", "/admin/channels", headers={"Host": "127.0.0.1:8080"}, app=app,
                                      transport=transport)
        assert request.remote == remote
        if allowed:
            require_admin(request)
            continue
        with pytest.raises(AuthenticationFailed) as refused:
            require_admin(request)
        assert (refused.value.status, refused.value.code) == (403, "admin_loopback_only")
        assert refused.value.envelope()["error"]["type"] == "invalid_request_error"


async def test_an_open_proxy_refuses_other_hosts_and_other_sites(make_proxy: Any, aiohttp_server: Any) -> None:
    """Loopback is not enough: a reverse proxy on the machine forwards the public Host, and a web page elsewhere
    (DNS rebinding, a cross-site form) reaches loopback with its own Host or Origin."""
    rules = rules_yaml(MODELS, {"openai": OPENAI, "local": LOCAL, "spare": SPARE, "kling": KLING},
                       server={"database": "${DATABASE:-}"})
    client = await proxy(make_proxy, aiohttp_server, "", FakeOpenAI(), rules=rules)
    port = client.server.port
    # A reverse proxy on the machine that forwards its own upstream Host (nginx's default) still says, in its
    # forwarding headers, that the client is elsewhere; a page on another local port is another origin.
    for headers in ({"Host": "imagegate.example.com"}, {"Host": f"rebound.example:{port}"},
                    {"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"X-Forwarded-For": "203.0.113.7"}, {"X-Real-IP": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"},
                    {"Origin": "http://127.0.0.1:5173", "Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "http://127.0.0.1:5173"}, {"Origin": "null"}):
        refused = await client.post("/admin/channels/local/test", headers=headers)
        assert refused.status == 403, headers
        assert (await refused.json())["error"]["code"] == "admin_loopback_only"
    for headers in ({"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"},
                    {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}):
        assert (await client.get("/admin/channels", headers=headers)).status == 200, headers


async def test_an_admin_key_is_never_sent_upstream(make_proxy: Any, aiohttp_server: Any) -> None:
    openai = FakeOpenAI()
    own_key = {"type": "openai", "base_url": "${UPSTREAM}/v1", "api_key": "passthrough"}
    rules = rules_yaml({"byok": {"channels": ["own"], "upstream_model": "gpt-image-2"}}, {"own": own_key},
                       server=SERVER, default_channel="own")
    client = await make_proxy(rules, {"UPSTREAM": await serve_fake(aiohttp_server, openai), "DATABASE": ""})
    refused = await client.post("/v1/images/generations", json={"model": "byok", "prompt": "p"}, headers=ADMIN)
    assert refused.status == 400 and (await refused.json())["error"]["code"] == "admin_key_not_forwarded"
    relayed = await client.get("/v1/files", headers=ADMIN)  # pass-through routes too
    assert relayed.status == 400 and (await relayed.json())["error"]["code"] == "admin_key_not_forwarded"
    tested = await client.post("/admin/channels/own/test", headers=ADMIN)
    assert tested.status == 400 and (await tested.json())["error"]["code"] == "admin_key_not_forwarded"
    assert openai.recorder.received == []  # the admin key went nowhere
    await client.post("/v1/images/generations", json={"model": "byok", "prompt": "p"}, headers=A)
    # A client's own key is what such a channel sends.
    assert [item.header("Authorization") for item in openai.recorder.received] == ["Bearer key-a"]


async def test_a_channel_listed_only_by_a_pattern_is_tested_under_its_upstream_name(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    openai = FakeOpenAI()
    rules = rules_yaml({"gpt-image-*": {"channels": ["openai"]}, "any-*": {"channels": ["named"],
                        "upstream_model": "gpt-image-2"}}, {"openai": OPENAI, "named": OPENAI}, server=SERVER)
    client = await make_proxy(rules, {"UPSTREAM": await serve_fake(aiohttp_server, openai), "OPENAI_API_KEY": KEY,
                                      "DATABASE": ""})
    unnamed = await client.post("/admin/channels/openai/test", headers=ADMIN)
    assert unnamed.status == 400 and (await unnamed.json())["error"]["code"] == "channel_without_models"
    named = await (await client.post("/admin/channels/named/test", headers=ADMIN)).json()
    assert named["ok"] is True and named["model"] == "gpt-image-2"
    assert openai.recorder.received[-1].json()["model"] == "gpt-image-2"
