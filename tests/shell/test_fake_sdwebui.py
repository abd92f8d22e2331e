"""The fake Stable Diffusion WebUI answers its documented shapes, and the adapter's calls round-trip through it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from proxy.adapters.base import Done, Fail, Job
from proxy.adapters.sdwebui import SPEC
from proxy.core.errors import BadGateway, InvalidRequest, UpstreamError
from tests import factories
from tests.factories import round_trip, url_of
from tests.fakes.sdwebui import PNG_B64, FakeSDWebUI

PASSTHROUGH = frozenset({"seed", "negative_prompt", "image", "strength", "sampler_name", "steps"})


def make_job(
    client: TestClient[Any, Any], body: dict[str, Any], *, key: str | None = None, settings: dict[str, Any] | None = None
) -> Job:
    return factories.make_job(body, spec=SPEC, finished=False,
                              channel="webui", channel_type="sdwebui", base_url=url_of(client), api_key=key,
                              settings=settings, passthrough=PASSTHROUGH)


async def test_txt2img_success_shape(aiohttp_client: Any) -> None:
    fake = FakeSDWebUI()
    client = await aiohttp_client(fake.app())
    async with client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse", "batch_size": 2, "seed": 10}) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["images"] == [PNG_B64, PNG_B64]
    assert data["parameters"]["prompt"] == "a lighthouse"
    info = json.loads(data["info"])
    assert (info["seed"], info["all_seeds"], info["index_of_first_image"]) == (10, [10, 11], 0)


async def test_adapter_round_trip_txt2img_and_img2img(aiohttp_client: Any) -> None:
    fake = FakeSDWebUI(return_grid=True, extra_images=1)
    client = await aiohttp_client(fake.app())
    step = await round_trip(
        client, SPEC, make_job(client, {"model": "sd", "prompt": "p", "n": 3, "size": "640x448"}, settings={"steps": 20})
    )
    assert isinstance(step, Done)
    assert [image.b64_json for image in step.result.images] == [PNG_B64] * 3
    assert {image.content_type for image in step.result.images} == {"image/png"}
    assert step.result.extra == {"seeds": [fake.random_seed, fake.random_seed + 1, fake.random_seed + 2]}
    assert fake.recorder.received[0].json() == {
        "prompt": "p",
        "batch_size": 3,
        "seed": -1,
        "width": 640,
        "height": 448,
        "steps": 20,
    }
    job = make_job(client, {"model": "sd", "prompt": "p", "image": f"data:image/png;base64,{PNG_B64}", "strength": 0.4})
    step = await round_trip(client, SPEC, job)
    assert isinstance(step, Done) and len(step.result.images) == 1
    received = fake.recorder.received[1]
    assert received.path == "/sdapi/v1/img2img"
    assert received.json()["init_images"] == [PNG_B64]
    assert received.json()["denoising_strength"] == 0.4


async def test_basic_auth(aiohttp_client: Any) -> None:
    fake = FakeSDWebUI(credentials=("painter", "pw"))
    client = await aiohttp_client(fake.app())
    step = await round_trip(client, SPEC, make_job(client, {"model": "sd", "prompt": "p"}, key="painter:pw"))
    assert isinstance(step, Done)
    step = await round_trip(client, SPEC, make_job(client, {"model": "sd", "prompt": "p"}, key="painter:wrong"))
    assert isinstance(step, Fail) and isinstance(step.error, BadGateway)
    assert step.error.code == "upstream_auth_failed" and "Incorrect username or password" in step.error.message
    async with client.post("/sdapi/v1/txt2img", json={"prompt": "p"}) as resp:
        assert (resp.status, (await resp.json())["detail"]) == (401, "Not authenticated")


async def test_upstream_errors(aiohttp_client: Any) -> None:
    fake = FakeSDWebUI()
    client = await aiohttp_client(fake.app())
    step = await round_trip(client, SPEC, make_job(client, {"model": "sd", "prompt": "p", "sampler_name": "Nope"}))
    assert isinstance(step, Fail) and isinstance(step.error, UpstreamError)
    assert (step.error.status, step.error.message) == (404, "Sampler not found")
    step = await round_trip(client, SPEC, make_job(client, {"model": "sd", "prompt": "p", "image": "bm90IGFuIGltYWdl"}))
    assert isinstance(step, Fail) and isinstance(step.error, InvalidRequest) and step.error.param == "image"
    async with client.post("/sdapi/v1/txt2img", json={"prompt": "p", "width": "wide"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["loc"] == ["body", "width"]
    fake.fail_with = (500, {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory."})
    step = await round_trip(client, SPEC, make_job(client, {"model": "sd", "prompt": "p"}))
    assert isinstance(step, Fail) and step.error.status == 502 and step.error.retryable
    assert "CUDA out of memory." in step.error.message
