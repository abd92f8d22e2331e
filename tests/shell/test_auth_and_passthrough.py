"""Client auth, and every other /v1/* request passed through to the default channel."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.factories import CLIENT_KEY, LOCAL, OPENAI, rules_yaml
from tests.fakes.openai import KEY

RULES = rules_yaml(
    {
        "local-image": {"channels": ["local"]},
        "relayed": {"channels": ["relay"], "upstream_model": "gpt-image-1.5"},
    },
    channels={
        "openai": {**OPENAI, "headers": {"OpenAI-Project": "proj_1"}},
        "relay": {"type": "openai", "base_url": "${UPSTREAM}/v1", "api_key": "passthrough"},
        "local": LOCAL,
    },
    server={"api_keys": ["client-key-1", "client-key-2"]},
    default_channel="${DEFAULT:-openai}",
)

OPEN_MODELS = {"local-image": {"channels": ["local"]}}
OPEN_RULES = rules_yaml(OPEN_MODELS, channels={"local": LOCAL})

BODY = {"model": "local-image", "prompt": "p", "size": "32x32"}


async def proxy(make_proxy: Any, upstream: str, **env: str) -> Any:
    return await make_proxy(RULES, {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY, **env})


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer wrong-key", 401),
        ("Bearer ", 401),
        ("Basic client-key-1", 401),
        ("Bearer client-key-1", 200),
        ("bearer client-key-2", 200),
        ("client-key-1", 200),  # seed 001's curl example sends the bare key
    ],
)
async def test_client_keys(make_proxy: Any, fake_openai: Any, header: str | None, status: int) -> None:
    _, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    headers = {"Authorization": header} if header is not None else {}
    response = await client.post("/v1/images/generations", json=BODY, headers=headers)
    assert response.status == status
    body = await response.json()
    if status == 401:
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert len(body["data"]) == 1


async def test_no_keys_configured_means_open(make_proxy: Any) -> None:
    client = await make_proxy(OPEN_RULES)
    response = await client.post("/v1/images/generations", json=BODY)
    assert response.status == 200


async def test_passthrough_substitutes_the_channel_key(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    response = await client.get("/v1/files?limit=5", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 200
    assert (await response.json())["data"][0]["id"] == "file-abc123"
    assert response.headers["X-Upstream"] == "fake"
    sent = fake.recorder.received[0]
    assert sent.path == "/v1/files" and sent.query == {"limit": "5"}
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert sent.header("OpenAI-Project") == "proj_1"
    assert CLIENT_KEY not in json.dumps(sent.headers)


async def test_passthrough_needs_a_client_key_too(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    response = await client.get("/v1/files")
    assert response.status == 401
    assert fake.recorder.received == []


async def test_passthrough_strips_hop_by_hop_headers(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    headers = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "Connection": "keep-alive, X-Private",
        "X-Private": "1",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic abc",
        "X-Kept": "yes",
    }
    response = await client.get("/v1/files", headers=headers)
    assert response.status == 200
    sent = fake.recorder.received[0]
    assert sent.header("X-Kept") == "yes"
    for name in ("X-Private", "Keep-Alive", "Proxy-Authorization"):
        assert sent.header(name) is None, name


async def test_passthrough_streams_chat_completions(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    body = {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
    response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = [line for line in (await response.text()).split("\n\n") if line]
    words = [json.loads(event[6:])["choices"][0]["delta"]["content"] for event in events[:-1]]
    assert words == ["one", "two", "three"] and events[-1] == "data: [DONE]"
    assert fake.recorder.received[0].json() == body


async def test_passthrough_keeps_upstream_errors(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.key = "sk-rotated-000000000000"
    client = await proxy(make_proxy, upstream)
    response = await client.get("/v1/files", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_passthrough_key_mode_forwards_the_clients_key(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.key = CLIENT_KEY  # the upstream knows the client's own key
    client = await proxy(make_proxy, upstream, DEFAULT="relay")
    response = await client.get("/v1/files", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 200
    generated = await client.post(
        "/v1/images/generations", json={"model": "relayed", "prompt": "p"}, headers={"Authorization": CLIENT_KEY}
    )
    assert generated.status == 200
    assert [item.header("Authorization") for item in fake.recorder.received] == [f"Bearer {CLIENT_KEY}"] * 2


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits", "/v1/images/variations"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_on_image_routes_are_405_and_never_passed_through(
    make_proxy: Any, fake_openai: Any, path: str, method: str
) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    response = await client.request(method, path, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")
    assert method in error["message"] and path in error["message"]
    assert fake.recorder.received == []


async def test_no_default_channel_means_unknown_url(make_proxy: Any) -> None:
    client = await make_proxy(OPEN_RULES)
    response = await client.get("/v1/files")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "unknown_url"


async def test_default_channel_without_its_key_is_503(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await make_proxy(RULES, {"UPSTREAM": upstream})
    response = await client.get("/v1/files", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status == 503
    assert "OPENAI_API_KEY" in (await response.json())["error"]["message"]


async def test_oversized_request_is_413(make_proxy: Any) -> None:
    client = await make_proxy(rules_yaml(OPEN_MODELS, channels={"local": LOCAL}, server={"max_request_bytes": 2048}))
    response = await client.post("/v1/images/generations", json={**BODY, "prompt": "x" * 5000})
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"
