"""Shell tests: the fake Replicate upstream speaks the predictions flow, and the replicate adapter drives it end to end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web import Application
from yarl import URL

from proxy.adapters.base import Job, Send, Wait
from proxy.adapters.replicate import SPEC
from proxy.core.errors import ContentPolicyViolation, ProxyError
from proxy.upstream import send
from tests import factories
from tests.factories import drive
from tests.fakes.replicate import NO_CREDIT, NSFW, PNG, FakeReplicate

TOKEN = "r8_test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OFFICIAL = "/v1/models/black-forest-labs/flux-schnell/predictions"


async def call(client: Any, method: str, url: str, body: Any = None,
               headers: Mapping[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
    response = await client.request(method, URL(url).path, json=body, headers=headers)
    return response.status, await response.json()


async def test_documented_flow_create_poll_succeed_download(aiohttp_client: Any) -> None:
    fake = FakeReplicate(polls_before_done=2)
    client = await aiohttp_client(fake.app())
    status, created = await call(client, "POST", OFFICIAL, {"input": {"prompt": "a cat", "aspect_ratio": "16:9"}})
    assert (status, created["status"], created["output"]) == (201, "starting", None)
    assert URL(created["urls"]["get"]).path == "/v1/predictions/pred1"
    statuses = [(await call(client, "GET", created["urls"]["get"]))[1]["status"] for _ in range(3)]
    assert statuses == ["processing", "processing", "succeeded"]
    done = (await call(client, "GET", created["urls"]["get"]))[1]
    image = await client.get(URL(done["output"][0]).path)
    assert image.status == 200 and await image.read() == PNG
    assert fake.recorder.received[0].json() == {"input": {"prompt": "a cat", "aspect_ratio": "16:9"}}


async def test_auth_validation_and_versions(aiohttp_client: Any) -> None:
    fake = FakeReplicate()
    client = await aiohttp_client(fake.app())
    status, body = await call(client, "POST", OFFICIAL, {"input": {"prompt": "x"}}, headers={"Authorization": "Bearer no"})
    assert (status, body["title"]) == (401, "Unauthenticated")
    status, body = await call(client, "POST", OFFICIAL, {"input": {}})
    assert (status, body["invalid_fields"][0]["field"]) == (422, "input")
    assert (await call(client, "POST", "/v1/predictions", {"input": {"prompt": "x"}}))[0] == 422
    assert (await call(client, "POST", "/v1/predictions", {"version": "abc123", "input": {"prompt": "x"}}))[0] == 201
    assert (await call(client, "GET", "/v1/predictions/nope"))[0] == 404
    fake.fail_create_with = NO_CREDIT
    assert (await call(client, "POST", OFFICIAL, {"input": {"prompt": "x"}}))[0] == 402


async def test_finish_within_wait_fail_polls_and_cancel(aiohttp_client: Any) -> None:
    fake = FakeReplicate(finish_within_wait=True, fail_polls=1)
    client = await aiohttp_client(fake.app())
    status, done = await call(client, "POST", OFFICIAL, {"input": {"prompt": "x"}}, {**AUTH, "Prefer": "wait=60"})
    assert (status, done["status"], len(done["output"])) == (201, "succeeded", 1)
    _, pending = await call(client, "POST", OFFICIAL, {"input": {"prompt": "x"}})
    assert pending["status"] == "starting"
    assert (await call(client, "GET", pending["urls"]["get"]))[0] == 500
    assert (await call(client, "POST", pending["urls"]["cancel"]))[1]["status"] == "canceled"
    assert fake.cancelled == ["pred2"]


@pytest.mark.parametrize(("moderate", "error"), [(True, NSFW), (False, "CUDA error: out of memory")])
async def test_predictions_can_fail(aiohttp_client: Any, moderate: bool, error: str) -> None:
    fake = FakeReplicate(polls_before_done=0, moderate=moderate, fail_task=not moderate)
    client = await aiohttp_client(fake.app())
    _, created = await call(client, "POST", OFFICIAL, {"input": {"prompt": "x"}})
    ended = (await call(client, "GET", created["urls"]["get"]))[1]
    assert (ended["status"], ended["error"]) == ("failed", error)


def make_job(base_url: str, **settings: Any) -> Job:
    fast = {"poll_interval": 0.01, "max_poll_interval": 0.02, **settings}
    return factories.make_job({"model": "flux-schnell", "prompt": "a cat", "size": "1024x1792", "seed": 9}, channel="replicate",
                              base_url=base_url, api_key=TOKEN, upstream="black-forest-labs/flux-schnell", passthrough={"seed"},
                              settings=fast)


Server = Callable[[Application], Awaitable[TestServer]]


async def started(aiohttp_server: Server, fake: FakeReplicate) -> str:
    server = await aiohttp_server(fake.app())
    return str(server.make_url("/v1"))


async def test_the_adapter_polls_the_fake_to_success(aiohttp_server: Server) -> None:
    fake = FakeReplicate(polls_before_done=2, fail_polls=1)
    base = await started(aiohttp_server, fake)
    result = await drive(SPEC, make_job(base))
    assert result.images[0].url == base.replace("/v1", "/files/pred1.png")
    received = fake.recorder.received
    assert received[0].json() == {"input": {"prompt": "a cat", "aspect_ratio": "9:16", "seed": 9}}
    assert received[0].header("Prefer") == "wait=60"
    assert [item.path for item in received[1:]] == ["/v1/predictions/pred1"] * 4  # one 500, two processing, done
    assert all(item.header("Authorization") == f"Bearer {TOKEN}" for item in received)


async def test_the_adapter_finishes_within_prefer_wait(aiohttp_server: Server) -> None:
    fake = FakeReplicate(finish_within_wait=True)
    result = await drive(SPEC, make_job(await started(aiohttp_server, fake)))
    assert len(result.images) == 1 and result.usage == {"predict_time": 0.8}
    assert len(fake.recorder.received) == 1


async def test_the_adapter_reports_nsfw_and_cancels(aiohttp_server: Server) -> None:
    fake = FakeReplicate(polls_before_done=0, moderate=True)
    base = await started(aiohttp_server, fake)
    with pytest.raises(ProxyError) as caught:
        await drive(SPEC, make_job(base, wait=0))
    assert isinstance(caught.value, ContentPolicyViolation)
    fake.moderate = False
    fake.polls_before_done = 5
    job = make_job(base, wait=0)
    first = SPEC.start(job)
    assert isinstance(first, Send)
    async with aiohttp.ClientSession() as session:
        response = await send(session, first.call, channel="replicate", timeout=10)
        step = SPEC.advance(job, first.state, response)
        assert isinstance(step, Wait) and SPEC.cancel is not None
        cancel = SPEC.cancel(job, step.state)
        assert cancel is not None
        assert (await send(session, cancel, channel="replicate", timeout=10)).status == 200
    assert fake.cancelled == ["pred2"]
