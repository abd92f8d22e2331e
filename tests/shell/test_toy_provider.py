"""Adding a provider as ARCHITECTURE.md §7 says: a toy provider written in a temporary module (two pure
functions, a spec, one `register` call), its fake, and requests driven through the app.

The toy's wire format: `POST {base_url}/draw` with `{"text", "count", "dims", "tone"}` and the key in
`X-Toy-Key`; the answer is `{"pictures": [{"png": <base64>}]}`, a failure `{"problem": "..."}` with a 4xx
or 5xx status, and a 200 whose `pictures` is missing is a broken answer.
"""

from __future__ import annotations

import base64
import importlib.util
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.adapters import ADAPTERS, SCHEMAS, unregister
from proxy.core.rules import RulesError, parse_rules
from tests.factories import auth
from tests.fakes.png import encode_png

TOY_MODULE = '''
"""Adapter layer: Toy Images (`POST {base_url}/draw`), a provider used to show how one is added.

Mapping: prompt -> text, n -> count (at most 4 per call: the driver fans out above), size -> dims,
the `tone` setting -> tone. Answer: pictures[].png -> b64_json. Failures keep their status.
"""

from __future__ import annotations

import json

from proxy.adapters import register
from proxy.adapters.base import AdapterSpec, Done, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import bad_answer, header_key, json_call, misconfigured, setting
from proxy.core.channel_settings import one_of
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.upstream_errors import error_from_response

auth = header_key("X-Toy-Key")
SCHEMA = ChannelSchema(settings={"tone": one_of("warm", "cold", default="warm")})


def start(job: Job) -> Step:
    if job.plan.upstream_model != "toy-1":
        raise misconfigured(job, f"the toy provider has no model {job.plan.upstream_model!r}")
    body = {"text": job.plan.prompt, "count": job.plan.n, "dims": job.plan.fields.get("size", "auto"),
            "tone": setting(job, SCHEMA, "tone")}
    return Send(json_call(job, f"{job.channel.base_url}/draw", body, auth))


def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
    if response.status != 200:
        raise error_from_response(response.status, response.headers, response.body, channel=job.channel.name,
                                  secrets=(job.api_key,))
    pictures = json.loads(response.body).get("pictures")
    if not isinstance(pictures, list):
        raise bad_answer(job, "no pictures")
    return Done(ImagesResult(tuple(GeneratedImage(b64_json=item["png"]) for item in pictures)))


SPEC = register(AdapterSpec(
    name="toy",
    schema=SCHEMA,
    start=start,
    advance=advance,
    max_n_per_call=4,
    auth_headers=auth,
))
'''

RULES = """
server:
  api_keys: [client-key-1]
channels:
  toy:
    type: toy
    base_url: ${TOY}
    api_key: toy-secret
    tone: cold
  toy-backup:
    type: toy
    base_url: ${TOY}/backup
    api_key: toy-secret-2
  local:
    type: local
models:
  toy-image:
    upstream_model: toy-1
    sizes: [256x256, 512x512]
    max_n: 6
    channels: [toy, local]
  toy-broken:
    upstream_model: toy-9
    channels: [toy, local]
  toy-failover:
    upstream_model: toy-1
    channels: [toy, toy-backup]
"""
PNG = encode_png(1, 1, [b"\x10\x20\x30"])


class FakeToy:
    """The toy provider's wire format: records each call; `fail` answers the next calls with a status."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail: list[int] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/draw", self.draw)
        app.router.add_post("/backup/draw", self.draw)
        return app

    async def draw(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"path": request.path, "key": request.headers.get("X-Toy-Key"), "body": body})
        if self.fail:
            return web.json_response({"problem": "the toy is tired"}, status=self.fail.pop(0))
        if body["text"] == "nothing":
            return web.json_response({"oops": True})
        return web.json_response({"pictures": [{"png": base64.b64encode(PNG).decode()}] * body["count"]})


@pytest.fixture
def toy_module(tmp_path: Path) -> Iterator[ModuleType]:
    """The toy adapter, written to a temporary module and imported: importing it registers it."""
    (tmp_path / "toy_provider.py").write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_provider", tmp_path / "toy_provider.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_provider"] = module
    spec.loader.exec_module(module)
    yield module
    unregister("toy")
    del sys.modules["toy_provider"]


@pytest.fixture
async def toy(aiohttp_server: Callable[..., Any], toy_module: ModuleType) -> tuple[FakeToy, str]:
    fake = FakeToy()
    server: TestServer = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


async def test_a_registered_provider_serves_its_channels_through_the_app(make_proxy: Any, toy: Any) -> None:
    fake, upstream = toy
    client = await make_proxy(RULES, {"TOY": upstream})
    response = await client.post("/v1/images/generations", headers=auth(),
                                  json={"model": "toy-image", "prompt": "a red fox", "n": 6, "size": "512x512"})
    body = await response.json()
    assert response.status == 200, body
    assert [base64.b64decode(item["b64_json"]) for item in body["data"]] == [PNG] * 6
    # n=6 above the toy's 4 per call: two calls, the channel's key in the toy's own header, the setting sent.
    assert sorted(call["body"]["count"] for call in fake.calls) == [2, 4]
    assert {(call["key"], call["body"]["text"], call["body"]["dims"], call["body"]["tone"]) for call in fake.calls} == {
        ("toy-secret", "a red fox", "512x512", "cold")
    }


async def test_a_provider_setting_is_checked_when_the_rules_load(toy_module: ModuleType) -> None:
    text = RULES.replace("tone: cold", "tone: lukewarm")
    with pytest.raises(RulesError, match=r"channels\.toy\.tone: expected one of warm, cold, got 'lukewarm'"):
        parse_rules(text, {"TOY": "http://127.0.0.1:9"}, SCHEMAS)
    assert parse_rules(RULES, {"TOY": "http://127.0.0.1:9"}, SCHEMAS).channels["toy-backup"].settings == {"tone": "warm"}


async def test_errors_the_adapter_raises_are_answered_and_failed_over_like_any_failure(make_proxy: Any, toy: Any) -> None:
    fake, upstream = toy
    client = await make_proxy(RULES, {"TOY": upstream})
    # A raised misconfiguration is retryable: the next channel (local) serves the request.
    response = await client.post("/v1/images/generations", headers=auth(), json={"model": "toy-broken", "prompt": "x"})
    body = await response.json()
    assert response.status == 200 and body["metadata"]["channel"] == "local", body
    assert fake.calls == []
    # A raised upstream 5xx fails over to the backup; a raised client error (400) is final.
    fake.fail = [500]
    response = await client.post("/v1/images/generations", headers=auth(), json={"model": "toy-failover", "prompt": "x"})
    assert response.status == 200
    assert [call["path"] for call in fake.calls] == ["/draw", "/backup/draw"]
    fake.fail = [400]
    response = await client.post("/v1/images/generations", headers=auth(), json={"model": "toy-failover", "prompt": "x"})
    error = (await response.json())["error"]
    assert response.status == 400 and "the toy is tired" in error["message"]
    # A 200 without pictures is the upstream's fault (502), and final: the work may have been billed.
    before = len(fake.calls)
    response = await client.post("/v1/images/generations", headers=auth(),
                                 json={"model": "toy-failover", "prompt": "nothing"})
    error = (await response.json())["error"]
    assert (response.status, error["code"]) == (502, "bad_upstream_response")
    assert [call["path"] for call in fake.calls[before:]] == ["/draw"]
    assert "toy-secret" not in error["message"]


def test_a_name_is_registered_once(toy_module: ModuleType) -> None:
    from proxy.adapters import register

    assert ADAPTERS["toy"] is toy_module.SPEC
    with pytest.raises(ValueError, match="already registered"):
        register(ADAPTERS["openai"].__class__(name="toy", schema=toy_module.SPEC.schema, start=toy_module.start))
    assert register(toy_module.SPEC) is toy_module.SPEC  # the same spec again changes nothing

