"""The usage API over the ledger: `/v1/usage` for the calling key, `/admin/usage` and `/admin/generations`
for admin keys; groupings, totals, latency percentiles, CSV and paging, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.core.ledger_record import LedgerRecord
from proxy.services import SERVICES
from tests.factories import LOCAL, OPENAI, rules_yaml, url_of
from tests.fakes.openai import KEY, FakeOpenAI

RULES = rules_yaml(
    {
        "dall-e-2": {"channels": ["openai"], "price": {"per_image": {"256x256": 0.016, "*": 0.02}}},
        "local-image": {"channels": ["local"], "price": {"per_image": 0.001}},
    },
    {"openai": OPENAI, "local": LOCAL},
    server={
        "api_keys": [{"key": "key-a", "name": "team-a"}, {"key": "key-b", "name": "team-b"}],
        "admin_keys": ["admin-secret"],
        "database": "${DATABASE:-}",
    },
)
ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


async def served(make_proxy: Any, aiohttp_server: Any, database: str) -> Any:
    """A proxy whose ledger holds: team-a 3 dall-e-2 requests (5 images, one 500), team-b 2 local-image ones."""
    fake = FakeOpenAI()
    client = await make_proxy(RULES, {"UPSTREAM": url_of(await aiohttp_server(fake.app())), "OPENAI_API_KEY": KEY,
                                      "DATABASE": database})
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    for body, headers in (({"model": "dall-e-2", "n": 2, "size": "256x256"}, a), ({"model": "dall-e-2", "n": 3}, a),
                          ({"model": "local-image", "size": "64x64"}, b), ({"model": "local-image", "size": "64x64"}, b)):
        assert (await client.post("/v1/images/generations", json={"prompt": "p", **body}, headers=headers)).status == 200
    fake.failures.append((500, {"error": {"message": "boom", "type": "server_error"}}, {}))
    assert (await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"}, headers=a)).status == 502
    await client.server.app[SERVICES].ledger.write_queued()
    return client


async def test_a_key_sees_its_own_usage_only(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    client = await served(make_proxy, aiohttp_server, database)
    response = await client.get("/v1/usage", headers={"Authorization": "Bearer key-a"})
    body = await response.json()
    assert response.status == 200, body
    (total,) = body["data"]
    assert {k: total[k] for k in ("requests", "images", "cost_usd", "errors")} == {
        "requests": 3, "images": 5, "cost_usd": 0.092, "errors": 1}  # 2 x 0.016 + 3 x 0.02; the 502 cost nothing
    assert 0 < total["p50_ms"] <= total["p95_ms"]
    by_model = await (await client.get("/v1/usage?group_by=model", headers={"Authorization": "Bearer key-b"})).json()
    assert [(row["model"], row["requests"], row["images"], row["cost_usd"]) for row in by_model["data"]] == [
        ("local-image", 2, 2, 0.002)]


async def test_admins_group_by_key_model_and_day_in_json_and_csv(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    client = await served(make_proxy, aiohttp_server, database)
    body = await (await client.get("/admin/usage?group_by=key,model,day", headers=ADMIN)).json()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [(r["key"], r["model"], r["day"], r["requests"], r["errors"]) for r in body["data"]] == [
        ("team-a", "dall-e-2", today, 3, 1), ("team-b", "local-image", today, 2, 0)]
    text = await (await client.get("/admin/usage?group_by=channel&format=csv", headers=ADMIN)).text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(row["channel"], row["requests"], row["images"], row["cost_usd"]) for row in table] == [
        ("local", "2", "2", "0.002"), ("openai", "3", "5", "0.092")]
    one = await (await client.get("/admin/usage?key=team-b", headers=ADMIN)).json()
    assert one["data"][0]["requests"] == 2


async def test_generations_are_paged_newest_first(make_proxy: Any, aiohttp_server: Any, database: str) -> None:
    client = await served(make_proxy, aiohttp_server, database)
    first = await (await client.get("/admin/generations?limit=3", headers=ADMIN)).json()
    assert [row["status"] for row in first["data"]] == [502, 200, 200] and first["has_more"] is True
    rest = await (await client.get(f"/admin/generations?limit=3&before={first['next_before']}", headers=ADMIN)).json()
    assert len(rest["data"]) == 2 and rest["has_more"] is False
    ids = [row["id"] for row in first["data"] + rest["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5
    assert all("key-a" not in str(row) and "key-b" not in str(row) for row in first["data"] + rest["data"])


async def test_admin_routes_need_an_admin_key_and_bad_queries_name_their_param(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    client = await served(make_proxy, aiohttp_server, "")
    for headers in ({}, {"Authorization": "Bearer key-a"}):
        refused = await client.get("/admin/usage", headers=headers)
        assert refused.status == 401 and (await refused.json())["error"]["code"] == "admin_key_required"
    assert (await client.get("/v1/usage")).status == 401  # the client routes need a client key
    for path, param in (("/admin/usage?group_by=prompt", "group_by"), ("/admin/generations?limit=0", "limit"),
                        ("/v1/usage?start_time=soon", "start_time")):
        headers = ADMIN if path.startswith("/admin") else {"Authorization": "Bearer key-a"}
        response = await client.get(path, headers=headers)
        assert response.status == 400 and (await response.json())["error"]["param"] == param, path


@pytest.mark.parametrize(("latencies", "p50", "p95"), [
    ((3.14, 3.16, 3.2), 3.2, 3.2),  # 0.1 ms buckets below 10 ms
    ((512.4, 512.6, 900.0), 513.0, 900.0),  # 1 ms below a second
    ((5123.4, 5127.0, 9000.0), 5130.0, 9000.0),  # 10 ms below ten seconds
    ((14872.0, 14830.0, 61234.0), 14900.0, 61200.0),  # 100 ms beyond
])
async def test_latency_percentiles_come_from_buckets_the_database_counts(
    make_proxy: Any, database: str, latencies: tuple[float, ...], p50: float, p95: float
) -> None:
    client = await make_proxy(RULES, {"UPSTREAM": "http://127.0.0.1:9", "OPENAI_API_KEY": KEY, "DATABASE": database})
    ledger = client.server.app[SERVICES].ledger
    for number, ms in enumerate(latencies):
        ledger.add(LedgerRecord(at=datetime.now(UTC), request_id=f"r{number}", key_name="team-a", operation="generate",
                                mode="sync", status=200, images=1, total_ms=ms, upstream_ms=0.0))
    await ledger.write_queued()
    (total,) = (await (await client.get("/admin/usage", headers=ADMIN)).json())["data"]
    assert (total["requests"], total["p50_ms"], total["p95_ms"]) == (3, p50, p95)
