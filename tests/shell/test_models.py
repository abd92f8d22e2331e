"""`GET /v1/models` and `GET /v1/models/{id}`: the proxy's own models, merged with the default channel's."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from proxy import catalog
from tests.factories import CLIENT_KEY, LOCAL, OPENAI, auth, free_port, rules_yaml, url_of
from tests.fakes.openai import KEY, FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
RULES = rules_yaml(
    {
        "local-image": {"channels": ["local"]},
        "gpt-image-1.5": {"channels": ["openai"]},
        "gpt-image-*": {"channels": ["openai"]},
        "stable-image-core": {"channels": ["stability"]},
    },
    channels={
        "openai": {**OPENAI, "headers": {"OpenAI-Project": "proj_1"}},
        "local": LOCAL,
        "stability": {"type": "stability", "base_url": "${UPSTREAM}", "api_key": "${STABILITY_API_KEY}"},
    },
    server={"api_keys": ["client-key-1"]},
    default_channel="openai",
)
OWN = {"object": "model", "owned_by": "imagegate"}


async def proxy(make_proxy: Any, upstream: str, **env: str) -> Any:
    return await make_proxy(RULES, {"UPSTREAM": upstream, **env})


def sdk_for(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=CLIENT_KEY, max_retries=0)


async def test_the_shipped_rules_list_their_keyless_models_without_any_key(make_proxy: Any) -> None:
    client = await make_proxy((ROOT / "rules.yaml").read_text(), {})
    sdk = sdk_for(client)
    page = await sdk.models.list()
    await sdk.close()
    # Only the models with a usable channel: local (built in) and sdwebui (needs no key). dall-e-3 and
    # the other keyed models answer 503 until their key is set, so they are not offered.
    assert [model.id for model in page.data] == ["local-image", "sd-webui"]
    for model in page.data:
        assert (model.object, model.owned_by) == ("model", "imagegate")
        assert abs(model.created - time.time()) < 600


async def test_one_key_adds_its_providers_models_as_the_readme_says(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    env = {"OPENAI_BASE_URL": f"{upstream}/v1", "OPENAI_API_KEY": KEY}
    client = await make_proxy((ROOT / "rules.yaml").read_text(), env)
    sdk = sdk_for(client)
    page = await sdk.models.list()
    await sdk.close()
    ids = [model.id for model in page.data]
    assert ids[:6] == ["local-image", "dall-e-3", "dall-e-2", "gpt-image-1", "gpt-image-2", "sd-webui"]
    assert ids[6:] == ["gpt-image-1.5", "gpt-4o"]  # then the default channel's own list (the fake's)


async def test_the_list_merges_the_default_channels_own(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream, OPENAI_API_KEY=KEY)
    sdk = sdk_for(client)
    page = await sdk.models.list()
    await sdk.close()
    listed = [(model.id, model.owned_by) for model in page.data]
    # The proxy's first (its gpt-image-1.5 wins over the channel's), then the channel's new ids;
    # the glob is not listed, stable-image-core has no key.
    assert listed == [("local-image", "imagegate"), ("gpt-image-1.5", "imagegate"), ("gpt-4o", "system")]
    assert page.data[2].created == 1698785189
    (sent,) = fake.recorder.received
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.header("Authorization") == f"Bearer {KEY}" and sent.header("OpenAI-Project") == "proj_1"
    assert CLIENT_KEY not in str(sent.headers)


async def test_a_default_channel_without_its_key_is_not_asked(
    make_proxy: Any, fake_openai: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream)
    with caplog.at_level(logging.INFO, logger="imagegate.access"):
        response = await client.get("/v1/models", headers=auth())
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "list" and [model["id"] for model in body["data"]] == ["local-image"]
    assert {key: body["data"][0][key] for key in OWN} == OWN
    assert fake.recorder.received == []
    (line,) = [json.loads(record.getMessage()) for record in caplog.records if record.name == "imagegate.access"]
    assert (line["path"], line["default_channel"], line["upstream_calls"]) == ("/v1/models", "no credentials", 0)


@pytest.mark.parametrize("trouble", ["down", "slow", "rotated key", "not a list"])
async def test_a_default_channel_in_trouble_costs_the_client_nothing(
    make_proxy: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, trouble: str
) -> None:
    fake = FakeOpenAI()
    app = fake.app()
    if trouble == "not a list":
        app = web.Application()
        app.router.add_get("/v1/models", maintenance)
    upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if trouble != "down":
        upstream = url_of(await aiohttp_server(app))
    if trouble == "slow":
        monkeypatch.setattr(catalog, "MODELS_TIMEOUT", 0.3)
        fake.models_delay = 5.0
    if trouble == "rotated key":
        fake.key = "sk-rotated-000000000000"
    client = await proxy(make_proxy, upstream, OPENAI_API_KEY=KEY)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="imagegate"):
        response = await client.get("/v1/models", headers=auth())
    assert response.status == 200
    assert [model["id"] for model in (await response.json())["data"]] == ["local-image", "gpt-image-1.5"]
    assert time.monotonic() - started < 3.0
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "default channel" in warnings[0], warnings
    assert KEY not in caplog.text


async def maintenance(request: web.Request) -> web.Response:
    return web.Response(text="<html>maintenance</html>", content_type="text/html")


async def test_retrieve_answers_the_proxys_models_then_the_default_channels(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream, OPENAI_API_KEY=KEY)
    sdk = sdk_for(client)
    local = await sdk.models.retrieve("local-image")
    assert (local.id, local.object, local.owned_by) == ("local-image", "model", "imagegate")
    assert fake.recorder.received == []  # the proxy's own models need no upstream call
    upstream_model = await sdk.models.retrieve("gpt-4o")
    assert (upstream_model.id, upstream_model.owned_by, upstream_model.created) == ("gpt-4o", "system", 1698785189)
    assert fake.recorder.received[0].path == "/v1/models/gpt-4o"
    assert fake.recorder.received[0].header("Authorization") == f"Bearer {KEY}"
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.models.retrieve("gpt-image-9")  # matches the glob, but is no listed name
    assert caught.value.code == "model_not_found"
    await sdk.close()


async def test_an_unknown_model_is_a_404_in_the_openai_envelope(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    for env in ({"OPENAI_API_KEY": KEY}, {}):  # asked upstream and refused there; no default channel to ask
        client = await proxy(make_proxy, upstream, **env)
        response = await client.get("/v1/models/no-such-model", headers=auth())
        assert response.status == 404
        assert await response.json() == {
            "error": {
                "message": "The model 'no-such-model' does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
    # A model whose only channel has no key is not served, so it is not found either.
    unkeyed = await client.get("/v1/models/stable-image-core", headers=auth())
    assert unkeyed.status == 404 and (await unkeyed.json())["error"]["code"] == "model_not_found"


async def test_the_model_routes_need_a_client_key(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream, OPENAI_API_KEY=KEY)
    for path in ("/v1/models", "/v1/models/local-image", "/v1/models/gpt-4o"):
        response = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert response.status == 401, path
        assert (await response.json())["error"]["code"] == "invalid_api_key"
    assert fake.recorder.received == []


async def test_other_methods_on_a_model_are_still_passed_through(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream, OPENAI_API_KEY=KEY)
    response = await client.delete("/v1/models/ft:gpt-4o:acme::abc123", headers=auth())
    assert response.status == 200
    assert await response.json() == {"id": "ft:gpt-4o:acme::abc123", "object": "model", "deleted": True}
    (sent,) = fake.recorder.received
    assert (sent.method, sent.header("Authorization")) == ("DELETE", f"Bearer {KEY}")


async def raw_get(client: Any, path: str) -> tuple[int, dict[str, Any]]:
    """GET `path` exactly as written (HTTP clients resolve dot segments before sending)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
                 "Connection: close\r\n\r\n".encode())
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    return int(head.split()[1]), json.loads(body)


async def test_a_model_name_with_dot_segments_never_reaches_another_upstream_path(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy(make_proxy, upstream, OPENAI_API_KEY=KEY)
    for path in ("/v1/models/%2E%2E/files", "/v1/models/a/%2e%2e/%2e%2e/files", "/v1/models/ft:x/%2E/y", "/v1/models/x/../files"):
        status, body = await raw_get(client, path)
        assert (status, body["error"]["code"]) == (404, "model_not_found"), path
    assert fake.recorder.received == []
    status, _ = await raw_get(client, "/v1/models/my.model..v2")  # dots inside a name are part of the name
    assert status == 404 and [sent.path for sent in fake.recorder.received] == ["/v1/models/my.model..v2"]
