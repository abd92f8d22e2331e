"""Shell tests: the fake BFL upstream speaks FLUX's submit/poll flow, and the flux adapter drives it end to end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web import Application
from yarl import URL

from proxy.adapters.base import Job
from proxy.adapters.flux import SPEC
from proxy.core.errors import ContentPolicyViolation, ProxyError
from tests import factories
from tests.factories import drive, url_of
from tests.fakes.flux import COST, NO_CREDITS, PNG, FakeFlux

KEY = {"x-key": "bfl-test-key"}


async def submit(client: Any, body: dict[str, Any], model: str = "flux-pro-1.1") -> tuple[int, dict[str, Any]]:
    response = await client.post(f"/v1/{model}", json=body, headers=KEY)
    return response.status, await response.json()


async def poll(client: Any, polling_url: str, headers: dict[str, str] = KEY) -> tuple[int, dict[str, Any]]:
    response = await client.get(URL(polling_url).path_qs, headers=headers)
    return response.status, await response.json()


async def test_documented_flow_submit_pending_ready_download(aiohttp_client: Any) -> None:
    fake = FakeFlux(polls_before_done=2)
    client = await aiohttp_client(fake.app())
    status, task = await submit(client, {"prompt": "a cat", "width": 1024, "height": 768, "output_format": "png"})
    assert status == 200
    assert task["id"] == "task-1" and task["cost"] == COST
    assert URL(task["polling_url"]).path_qs == "/v1/get_result?id=task-1"
    assert [(await poll(client, task["polling_url"]))[1]["status"] for _ in range(3)] == ["Pending", "Pending", "Ready"]
    ready = (await poll(client, task["polling_url"]))[1]
    assert ready["result"]["seed"] == 1234
    image = await client.get(URL(ready["result"]["sample"]).path)  # BFL's blob storage wants no key
    assert image.status == 200 and await image.read() == PNG
    assert fake.recorder.received[0].json() == {"prompt": "a cat", "width": 1024, "height": 768, "output_format": "png"}
    assert fake.recorder.received[0].header("x-key") == "bfl-test-key"


async def test_auth_and_validation_in_bfl_shapes(aiohttp_client: Any) -> None:
    fake = FakeFlux()
    client = await aiohttp_client(fake.app())
    missing = await client.post("/v1/flux-pro-1.1", json={"prompt": "x"})
    assert (missing.status, await missing.json()) == (403, {"detail": "Not authenticated"})
    wrong = await client.get("/v1/get_result?id=task-1", headers={"x-key": "nope"})
    assert wrong.status == 401
    status, body = await submit(client, {"prompt": "x", "width": 1000})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "width"]
    assert (await submit(client, {"prompt": "x", "width": 2048, "height": 1088}, "flux-2-pro"))[0] == 200
    assert (await poll(client, "/v1/get_result?id=nope"))[1]["status"] == "Task not found"


@pytest.mark.parametrize("outcome", ["Request Moderated", "Content Moderated", "Error"])
async def test_tasks_can_end_moderated_or_failed(aiohttp_client: Any, outcome: str) -> None:
    fake = FakeFlux(polls_before_done=0, moderate=None if outcome == "Error" else outcome, fail_task=outcome == "Error")
    client = await aiohttp_client(fake.app())
    _, task = await submit(client, {"prompt": "x"})
    ended = (await poll(client, task["polling_url"]))[1]
    assert ended["status"] == outcome and ended["result"] is None


async def test_failing_polls_and_creates(aiohttp_client: Any) -> None:
    fake = FakeFlux(polls_before_done=0, fail_polls=2)
    client = await aiohttp_client(fake.app())
    _, task = await submit(client, {"prompt": "x"})
    statuses = [(await poll(client, task["polling_url"]))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    fake.fail_create_with = NO_CREDITS
    assert await submit(client, {"prompt": "x"}) == (402, {"detail": "Insufficient credits"})


def make_job(base_url: str, model: str = "flux-pro-1.1", **body: Any) -> Job:
    fast = {"poll_interval": 0.01, "max_poll_interval": 0.02}
    return factories.make_job({"model": model, "prompt": "a cat", **body}, channel="bfl", channel_type="flux", base_url=base_url,
                              api_key="bfl-test-key", passthrough={"seed"}, settings=fast)


async def test_the_adapter_drives_the_fake_end_to_end(aiohttp_server: Callable[[Application], Awaitable[TestServer]]) -> None:
    fake = FakeFlux(polls_before_done=2, fail_polls=1)
    server = await aiohttp_server(fake.app())
    base = url_of(server)
    result = await drive(SPEC, make_job(base, size="1792x1024", seed=7))
    assert result.images[0].url == f"{base}/files/task-1.png"
    assert result.images[0].url_ttl == 600.0
    assert result.usage == {"cost": COST, "input_mp": 0.0, "output_mp": 1.05}
    received = fake.recorder.received
    assert received[0].json() == {"prompt": "a cat", "width": 1440, "height": 832, "seed": 7}
    assert [item.path for item in received[1:]] == ["/v1/get_result"] * 4  # one 500, two Pending, Ready
    assert all(item.header("x-key") == "bfl-test-key" for item in received)


async def test_the_adapter_reports_moderation(aiohttp_server: Callable[[Application], Awaitable[TestServer]]) -> None:
    fake = FakeFlux(polls_before_done=1, moderate="Content Moderated")
    server = await aiohttp_server(fake.app())
    with pytest.raises(ProxyError) as caught:
        await drive(SPEC, make_job(url_of(server)))
    assert isinstance(caught.value, ContentPolicyViolation)
