"""Per-key budgets in USD: the highest possible cost is reserved before any upstream call, a spent budget
is OpenAI's 429 insufficient_quota with no call, and the reservation is settled to the real cost. Held
under concurrency, and across replicas through a real Redis."""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.limit_windows import key_id
from proxy.core.rules import parse_rules
from proxy.counter_seed import Spent, counted
from proxy.database import GENERATIONS
from proxy.services import SERVICES
from tests.factories import OPENAI, make_rules, rules_yaml, serve_fake, start_proxy
from tests.fakes.openai import KEY, FakeOpenAI

RULES = rules_yaml(
    {
        "dall-e-2": {"channels": ["openai"], "price": {"per_image": {"256x256": 0.016, "*": 0.02}}, "max_n": 10},
        "gpt-image-1": {"channels": ["openai"], "price": {"per_million_tokens": {"text_input": 5, "image_output": 40}}},
        "free": {"channels": ["openai"], "upstream_model": "dall-e-2"},
    },
    channels={"openai": OPENAI},
    server={
        "state": "${STATE:-memory}",
        "database": "${DATABASE}",
        "budget": {"usd_per_month": 1000},
        "api_keys": [
            {"key": "five-images", "name": "team-a", "budget": {"usd_per_day": 0.1}},
            {"key": "monthly", "name": "team-b", "budget": {"usd_per_month": 0.05}},
            {"key": "tokens", "name": "team-c", "budget": {"usd_per_day": 1}},
            "unbudgeted-by-itself",
        ],
    },
)


async def proxies(aiohttp_client: Any, aiohttp_server: Any, fake: FakeOpenAI, state: str = "memory", count: int = 1,
                  database: str | None = None) -> list[TestClient]:  # type: ignore[type-arg]
    upstream = await serve_fake(aiohttp_server, fake)
    # The replicas share one ledger file of this test's own.
    database = database or tempfile.mkdtemp(prefix="imagegate-budgets-") + "/ledger.db"
    rules = parse_rules(RULES, {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY, "STATE": state, "DATABASE": database}, SCHEMAS)
    return [await aiohttp_client(await start_proxy(make_app(rules), rules)) for _ in range(count)]


async def post(client: Any, key: str, **body: Any) -> Any:
    return await client.post("/v1/images/generations", json={"prompt": "p", **body},
                             headers={"Authorization": f"Bearer {key}"})


async def statuses(clients: list[Any], key: str, requests: int, **body: Any) -> list[int]:
    answers = await asyncio.gather(*(post(clients[i % len(clients)], key, **body) for i in range(requests)))
    return [answer.status for answer in answers]


async def test_twenty_parallel_requests_against_a_budget_that_fits_five(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(delay=0.1)
    (client,) = await proxies(aiohttp_client, aiohttp_server, fake)
    # $0.10 a day at $0.02 an image (1024x1024): five requests fit, whatever order they arrive in.
    codes = await statuses([client], "five-images", 20, model="dall-e-2", size="1024x1024")
    assert sorted(codes) == [200] * 5 + [429] * 15
    assert len(fake.recorder.received) == 5  # a refused request never reached the upstream
    # The ledger says the same: five served at $0.02, fifteen refused at no cost; the costs add up to the budget.
    ledger = client.server.app[SERVICES].ledger
    await ledger.write_queued()
    async with ledger.engine.connect() as connection:
        rows = (await connection.execute(sa.select(GENERATIONS.c.status, GENERATIONS.c.error_code,
                                                   GENERATIONS.c.cost_micro_usd))).all()
    assert sorted((row.status, row.error_code or "", row.cost_micro_usd or 0) for row in rows) == (
        [(200, "", 20_000)] * 5 + [(429, "budget_exceeded", 0)] * 15
    )
    refused = await post(client, "five-images", model="dall-e-2", size="256x256")
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "$0.1 per day" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400


async def test_a_budget_holds_across_replicas(aiohttp_client: Any, aiohttp_server: Any, redis_server: Any) -> None:
    fake = FakeOpenAI(delay=0.1)
    a, b = await proxies(aiohttp_client, aiohttp_server, fake, redis_server.url, count=2)
    codes = await statuses([a, b], "five-images", 20, model="dall-e-2", size="1024x1024")
    assert sorted(codes) == [200] * 5 + [429] * 15
    assert len(fake.recorder.received) == 5


async def test_a_budget_holds_across_a_restart_with_counters_in_memory(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    database = tempfile.mkdtemp(prefix="imagegate-budgets-") + "/ledger.db"
    (first,) = await proxies(aiohttp_client, aiohttp_server, fake, database=database)
    assert await statuses([first], "five-images", 3, model="dall-e-2", size="1024x1024") == [200] * 3  # $0.06 of $0.10
    assert await statuses([first], "monthly", 1, model="dall-e-2", size="1024x1024") == [200]  # $0.02 of $0.05
    await first.close()  # its ledger is written out; its counters are gone with it
    (second,) = await proxies(aiohttp_client, aiohttp_server, fake, database=database)
    # The new process starts from the ledger: $0.04 left today (two images), $0.03 this month (one).
    assert sorted(await statuses([second], "five-images", 5, model="dall-e-2", size="1024x1024")) == [200] * 2 + [429] * 3
    assert sorted(await statuses([second], "monthly", 3, model="dall-e-2", size="1024x1024")) == [200] + [429] * 2
    assert len(fake.recorder.received) == 4 + 3


async def test_the_reservation_is_settled_to_what_was_delivered(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    fake.failures.append((400, {"error": {"message": "Bad prompt.", "type": "invalid_request_error"}}, {}))
    (client,) = await proxies(aiohttp_client, aiohttp_server, fake)
    # A failed request costs nothing: its whole reservation goes back, and the month's $0.05 still buys two.
    assert (await post(client, "monthly", model="dall-e-2", size="1024x1024")).status == 400
    assert [await statuses([client], "monthly", 1, model="dall-e-2", size="1024x1024") for _ in range(3)] == [
        [200], [200], [429]
    ]
    error = (await (await post(client, "monthly", model="dall-e-2", size="256x256")).json())["error"]
    assert "$0.05 per month" in error["message"]


async def test_token_priced_requests_are_settled_to_the_reported_tokens(aiohttp_client: Any, aiohttp_server: Any) -> None:
    (client,) = await proxies(aiohttp_client, aiohttp_server, FakeOpenAI())
    # Each request reserves its ceiling, 4,096 text tokens in and 16,384 image tokens out ($0.67584), and is
    # settled to what the answer reports, 10 in and 4,160 out ($0.16645). Against $1 a day: the first two
    # fit (the second because the first was settled down), the third's ceiling would not.
    assert [await statuses([client], "tokens", 1, model="gpt-image-1") for _ in range(3)] == [[200], [200], [429]]


async def test_unpriced_models_and_keys_without_budgets_are_not_held(aiohttp_client: Any, aiohttp_server: Any) -> None:
    (client,) = await proxies(aiohttp_client, aiohttp_server, FakeOpenAI())
    assert await statuses([client], "five-images", 8, model="free") == [200] * 8  # no price: nothing to count
    # The server's $1,000 a month applies to a key without a budget of its own.
    assert await statuses([client], "unbudgeted-by-itself", 8, model="dall-e-2", n=10) == [200] * 8
    # Spent past its budget (tokens beyond their estimate are still counted), a key still has unpriced models.
    services = client.server.app[SERVICES]
    day = f"usd-day:{key_id('five-images')}:{int(time.time() // 86400)}"
    await services.counters.incr(day, 1_000_000, 86460)
    assert await statuses([client], "five-images", 1, model="dall-e-2") == [429]
    assert await statuses([client], "five-images", 2, model="free") == [200, 200]


def test_counters_a_restarted_process_starts_from() -> None:
    rules = make_rules({"m": {"channels": ["local"]}}, {"local": {"type": "local"}}, server={
        "limits": {"images_per_day": 100},
        "api_keys": [{"key": "k1", "name": "shared", "budget": {"usd_per_day": 1, "usd_per_month": 5}},
                     {"key": "k2", "name": "shared"}, {"key": "k3", "name": "idle"}],
        "admin_keys": ["a1"],
    })
    now = 1_764_806_400.0 + 3600  # 2025-12-04 01:00 UTC
    spent = {"shared": Spent(images_today=3, micro_today=60_000, micro_this_month=250_000), "admin": Spent(images_today=7)}
    day, month = int(now // 86400), 2025 * 12 + 11
    assert sorted(counted(rules.server, spent, now)) == sorted([
        (f"ipd:{key_id('k1')}:{day}", 3, 86460), (f"usd-day:{key_id('k1')}:{day}", 60_000, 86460),
        (f"usd-month:{key_id('k1')}:{month}", 250_000, 32 * 86400),
        # Keys sharing a name each start from the name's total: the safe side of a limit.
        (f"ipd:{key_id('k2')}:{day}", 3, 86460),
        (f"ipd:{key_id('a1')}:{day}", 7, 86460),  # admin keys generate too (the console): theirs, by the name admin
    ])


async def test_a_stream_left_after_its_image_arrived_counts_against_the_budget(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fake = FakeOpenAI(stream_hold=2.0)  # the upstream keeps its stream open after the completed event
    rules = rules_yaml({"gpt-image-1": {"channels": ["openai"], "price": {"per_image": 0.02}}}, {"openai": OPENAI},
                       server={"api_keys": [{"key": "two-images", "name": "two", "budget": {"usd_per_day": 0.04}}]})
    parsed = parse_rules(rules, {"UPSTREAM": await serve_fake(aiohttp_server, fake), "OPENAI_API_KEY": KEY}, SCHEMAS)
    client = await aiohttp_client(await start_proxy(make_app(parsed), parsed))
    answered = []
    for _ in range(3):
        response = await post(client, "two-images", model="gpt-image-1", stream=True)
        answered.append(response.status)
        if response.status == 200:
            while b"image_generation.completed" not in await response.content.readline():
                pass
            response.close()  # the client has its image and leaves
            await asyncio.sleep(0.3)
    assert answered == [200, 200, 429]  # the two images delivered are two images paid for
