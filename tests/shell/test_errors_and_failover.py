"""Upstream failures through the proxy: faithful statuses, failover in the rules' order, retries, deadlines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.core.errors import BadGateway, ContentPolicyViolation, GatewayTimeout
from proxy.driver import deciding
from tests.factories import auth, free_port, rules_yaml, url_of
from tests.fakes.openai import KEY, FakeOpenAI

MODELS = {
    "solo": {"channels": ["primary"], "upstream_model": "gpt-image-1.5"},
    "pair": {"channels": ["primary", "backup"], "upstream_model": "gpt-image-1.5"},
    "patient-pair": {"channels": ["patient", "backup"], "upstream_model": "gpt-image-1.5"},
    "skips-keyless": {"channels": ["keyless", "backup"], "upstream_model": "gpt-image-1.5"},
    "unavailable": {"channels": ["keyless"]},
}
CHANNELS: dict[str, dict[str, Any]] = {
    "primary": {"type": "openai", "base_url": "${PRIMARY}/v1", "api_key": "${OPENAI_API_KEY}", "timeout": "${TIMEOUT:-30}"},
    "patient": {"type": "openai", "base_url": "${PRIMARY}/v1", "api_key": "${OPENAI_API_KEY}", "retry_timeouts": True},
    "backup": {"type": "openai", "base_url": "${BACKUP}/v1", "api_key": "${OPENAI_API_KEY}"},
    "keyless": {"type": "openai", "base_url": "${BACKUP}/v1", "api_key": "${MISSING_KEY}"},
}
RULES = rules_yaml(MODELS, CHANNELS, server={"max_retries": 3})


async def two_fakes(aiohttp_server: Any) -> tuple[FakeOpenAI, str, FakeOpenAI, str]:
    primary, backup = FakeOpenAI(), FakeOpenAI()
    first: TestServer = await aiohttp_server(primary.app())
    second: TestServer = await aiohttp_server(backup.app())
    return primary, url_of(first), backup, url_of(second)


async def post(client: Any, model: str, **extra: Any) -> tuple[int, dict[str, Any], Any]:
    response = await client.post("/v1/images/generations", json={"model": model, "prompt": "p", **extra}, headers=auth())
    return response.status, await response.json(), response.headers


async def setup(make_proxy: Any, aiohttp_server: Any, **env: str) -> tuple[Any, FakeOpenAI, FakeOpenAI]:
    primary, primary_url, backup, backup_url = await two_fakes(aiohttp_server)
    client = await make_proxy(RULES, {"PRIMARY": primary_url, "BACKUP": backup_url, "OPENAI_API_KEY": KEY, **env})
    return client, primary, backup


def server_error(
    message: str = "The server had an error while processing your request.",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 500, {"error": {"message": message, "type": "server_error", "param": None, "code": None}}, {}


async def test_upstream_500_is_a_502_that_names_the_channel_not_the_key(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    primary.failures.append(server_error(f"boom with {KEY} inside"))
    status, body, _ = await post(client, "solo")
    assert status == 502
    assert body["error"]["type"] == "upstream_error"
    assert "primary" in body["error"]["message"]
    assert KEY not in json.dumps(body)


async def test_failover_moves_to_the_next_channel_and_says_so(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, backup = await setup(make_proxy, aiohttp_server)
    primary.failures.append(server_error())
    status, body, _ = await post(client, "pair")
    assert status == 200
    assert body["metadata"] == {"model": "pair", "upstream_model": "gpt-image-1.5", "channel": "backup", "attempts": 2}
    assert len(primary.recorder.received) == 1 and len(backup.recorder.received) == 1
    assert backup.recorder.received[0].json()["model"] == "gpt-image-1.5"


async def test_a_client_mistake_upstream_is_not_failed_over(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, backup = await setup(make_proxy, aiohttp_server)
    primary.failures.append(
        (
            400,
            {"error": {"message": "Invalid size.", "type": "invalid_request_error", "param": "size", "code": "invalid_size"}},
            {},
        )
    )
    status, body, _ = await post(client, "pair")
    assert status == 400
    assert body["error"] == {"message": "Invalid size.", "type": "invalid_request_error", "param": "size", "code": "invalid_size"}
    assert backup.recorder.received == []


async def test_moderation_keeps_its_status_and_code(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, backup = await setup(make_proxy, aiohttp_server)
    moderation = {
        "message": "Your request was rejected by the safety system.",
        "type": "image_generation_user_error",
        "param": None,
        "code": "moderation_blocked",
    }
    primary.failures.append((400, {"error": moderation}, {}))
    status, body, _ = await post(client, "pair")
    assert (status, body["error"]) == (400, moderation)
    assert backup.recorder.received == []


async def test_rate_limit_is_429_with_retry_after(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    primary.failures.append(
        (
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
            {"Retry-After": "7"},
        )
    )
    status, body, headers = await post(client, "solo")
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert body["error"]["code"] == "rate_limit_exceeded"


async def test_billing_429_is_not_retried(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    quota = {
        "error": {
            "message": "You exceeded your current quota.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    primary.failures.extend([(429, quota, {}), (429, quota, {})])
    status, body, headers = await post(client, "solo", retries=2)
    assert status == 429
    assert body["error"]["type"] == "insufficient_quota"
    assert "Retry-After" not in headers
    assert len(primary.recorder.received) == 1


async def test_retries_try_again_after_a_transient_failure(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    busy = (503, {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}, {"Retry-After": "0"})
    primary.failures.extend([busy, busy])
    status, body, _ = await post(client, "solo", retries=2)
    assert status == 200
    assert body["metadata"]["attempts"] == 3
    assert len(primary.recorder.received) == 3


async def test_without_retries_a_transient_failure_is_the_answer(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    primary.failures.append((503, {"error": {"message": "overloaded", "type": "server_error"}}, {}))
    status, body, _ = await post(client, "solo")
    assert status == 503
    assert "overloaded" in body["error"]["message"]
    assert len(primary.recorder.received) == 1


async def test_retries_are_capped_by_the_server(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    busy = (503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"})
    primary.failures.extend([busy] * 10)
    status, _, _ = await post(client, "solo", retries=9)
    assert status == 503
    assert len(primary.recorder.received) == 4  # 1 + server.max_retries (3)


async def test_deadline_is_a_504_and_is_not_retried(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server, TIMEOUT="0.2")
    primary.delay = 1.0
    status, body, _ = await post(client, "solo", retries=2)
    assert status == 504
    assert body["error"]["code"] == "upstream_timeout"
    assert len(primary.recorder.received) == 1


@pytest.mark.parametrize("status", [504, 524])
async def test_an_upstream_gateway_timeout_is_a_504_that_is_not_retried(
    make_proxy: Any, aiohttp_server: Any, status: int
) -> None:
    # The provider may have generated (and billed) the image behind the intermediary that gave up.
    client, primary, backup = await setup(make_proxy, aiohttp_server)
    primary.failures.append((status, {"error": {"message": "A timeout occurred", "type": "server_error"}}, {}))
    answer, body, _ = await post(client, "pair", retries=2)
    assert answer == 504
    assert body["error"]["code"] == "upstream_timeout"
    assert f"HTTP {status}" in body["error"]["message"]
    assert (len(primary.recorder.received), len(backup.recorder.received)) == (1, 0)


async def test_a_channel_that_allows_it_fails_over_after_an_upstream_504(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, backup = await setup(make_proxy, aiohttp_server)
    primary.failures.append((504, {"error": {"message": "Gateway Timeout", "type": "server_error"}}, {}))
    answer, body, _ = await post(client, "patient-pair")
    assert answer == 200
    assert (body["metadata"]["channel"], body["metadata"]["attempts"]) == ("backup", 2)
    assert (len(primary.recorder.received), len(backup.recorder.received)) == (1, 1)


async def test_unreachable_channel_is_502_and_fails_over(make_proxy: Any, aiohttp_server: Any) -> None:
    backup = FakeOpenAI()
    server = await aiohttp_server(backup.app())
    dead = f"http://127.0.0.1:{free_port()}"
    client = await make_proxy(RULES, {"PRIMARY": dead, "BACKUP": url_of(server), "OPENAI_API_KEY": KEY})
    status, body, _ = await post(client, "solo")
    assert status == 502
    assert body["error"]["code"] == "upstream_unreachable"
    status, body, _ = await post(client, "pair")
    assert status == 200 and body["metadata"]["channel"] == "backup"


async def test_rejected_channel_key_is_the_operators_problem(make_proxy: Any, aiohttp_server: Any) -> None:
    primary, primary_url, _, backup_url = await two_fakes(aiohttp_server)
    primary.key = "sk-some-other-key-0000000"
    client = await make_proxy(RULES, {"PRIMARY": primary_url, "BACKUP": backup_url, "OPENAI_API_KEY": KEY})
    status, body, _ = await post(client, "solo")
    assert status == 502
    assert body["error"]["code"] == "upstream_auth_failed"
    status, body, _ = await post(client, "pair")
    assert status == 200 and body["metadata"]["channel"] == "backup"


async def test_channels_without_their_key_are_skipped_or_named(make_proxy: Any, aiohttp_server: Any) -> None:
    client, _, backup = await setup(make_proxy, aiohttp_server)
    status, body, _ = await post(client, "skips-keyless")
    assert status == 200
    assert body["metadata"] == {"model": "skips-keyless", "upstream_model": "gpt-image-1.5", "channel": "backup", "attempts": 1}
    status, body, _ = await post(client, "unavailable")
    assert status == 503
    assert body["error"]["code"] == "channel_unavailable"
    assert "MISSING_KEY" in body["error"]["message"]
    assert len(backup.recorder.received) == 1


async def test_an_answer_without_images_is_never_a_success(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, _ = await setup(make_proxy, aiohttp_server)
    primary.failures.append((200, {"created": 1, "data": []}, {}))
    status, body, _ = await post(client, "solo")
    assert status == 502
    assert body["error"]["code"] == "bad_upstream_response"


async def test_rate_limit_fails_over_to_the_next_channel(make_proxy: Any, aiohttp_server: Any) -> None:
    client, primary, backup = await setup(make_proxy, aiohttp_server)
    limited = {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    primary.failures.append((429, limited, {"Retry-After": "30"}))
    status, body, _ = await post(client, "pair")
    assert status == 200
    assert body["metadata"] == {"model": "pair", "upstream_model": "gpt-image-1.5", "channel": "backup", "attempts": 2}
    assert len(primary.recorder.received) == 1 and len(backup.recorder.received) == 1


async def test_timeouts_are_retried_only_where_the_channel_allows(make_proxy: Any, aiohttp_server: Any) -> None:
    text = rules_yaml(MODELS, {**CHANNELS, "primary": {**CHANNELS["primary"], "retry_timeouts": True}}, server={"max_retries": 3})
    primary, primary_url, backup, backup_url = await two_fakes(aiohttp_server)
    primary.delay = 1.0
    client = await make_proxy(text, {"PRIMARY": primary_url, "BACKUP": backup_url, "OPENAI_API_KEY": KEY, "TIMEOUT": "0.2"})
    status, body, _ = await post(client, "pair")
    assert status == 200 and body["metadata"]["channel"] == "backup"
    assert len(backup.recorder.received) == 1


async def test_weighted_channels_share_first_attempts(make_proxy: Any, aiohttp_server: Any) -> None:
    weighted = {name: {**channel, "weight": 1} if channel["api_key"] == "${OPENAI_API_KEY}" else channel
                for name, channel in CHANNELS.items()}
    text = rules_yaml(MODELS, weighted, server={"max_retries": 3})
    primary, primary_url, backup, backup_url = await two_fakes(aiohttp_server)
    client = await make_proxy(text, {"PRIMARY": primary_url, "BACKUP": backup_url, "OPENAI_API_KEY": KEY})
    for _ in range(40):
        status, _, _ = await post(client, "pair")
        assert status == 200
    # Equal weights: both channels take a real share (the chance of a 40-0 split is 2 in 10^12).
    assert len(primary.recorder.received) > 0 and len(backup.recorder.received) > 0
    assert len(primary.recorder.received) + len(backup.recorder.received) == 40


def test_a_fanned_out_request_whose_parts_all_failed_ends_with_the_part_that_must_not_be_retried() -> None:
    down = BadGateway("channel 'a' could not be reached", code="upstream_unreachable", retryable=True)
    refused = ContentPolicyViolation("the prompt was refused")
    billing = GatewayTimeout("the task may still bill", code="upstream_timeout", retryable=False)
    assert deciding((down, refused)) is refused  # not tried on the next channel: it would refuse it again, billed
    assert deciding((down, billing, refused)) is refused  # the client's fault first
    assert deciding((down, billing)) is billing
    assert deciding((down, down)) is down
