"""Shell tests: the fake Stability upstream answers its documented shapes, and accepts the adapter's real call."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import FormData, web
from aiohttp.test_utils import TestClient

from proxy.adapters.base import Done, Job, Send, UpstreamResponse
from proxy.adapters.stability import SPEC
from proxy.core.plan import build_plan
from proxy.core.request import parse_image_request
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import Channel, ModelRule
from tests.factories import declared, url_of
from tests.fakes.stability import PNG, FakeStability, Upload

ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
GENERATE = "/v2beta/stable-image/generate"


def form(**fields: str) -> FormData:
    data = FormData(default_to_multipart=True)  # what every Stability client must send, even without a file
    for name, value in fields.items():
        data.add_field(name, value)
    return data


async def test_fake_answers_json_or_bytes_per_accept_and_checks_key_and_format(aiohttp_client: ClientMaker) -> None:
    fake = FakeStability()
    client = await aiohttp_client(fake.app())
    auth = {"Authorization": f"Bearer {fake.api_key}"}

    as_json = await client.post(f"{GENERATE}/core", data=form(prompt="a fox", aspect_ratio="16:9", seed="7"),
                                headers={**auth, "Accept": "application/json"})
    as_bytes = await client.post(f"{GENERATE}/ultra", data=form(prompt="a fox"), headers={**auth, "Accept": "image/*"})
    not_multipart = await client.post(f"{GENERATE}/core", data=b"prompt=a+fox",
                                      headers={**auth, "Content-Type": "application/x-www-form-urlencoded"})
    wrong_key = await client.post(f"{GENERATE}/core", data=form(prompt="a fox"), headers={"Authorization": "Bearer nope"})

    assert as_json.status == 200
    assert await as_json.json() == {"image": base64.b64encode(PNG).decode(), "finish_reason": "SUCCESS", "seed": 7}
    assert as_bytes.status == 200 and await as_bytes.read() == PNG
    assert (as_bytes.headers["Content-Type"], as_bytes.headers["finish-reason"]) == ("image/png", "SUCCESS")
    assert not_multipart.status == 400 and (await not_multipart.json())["name"] == "bad_request"
    assert wrong_key.status == 401
    assert fake.forms[:2] == [{"prompt": "a fox", "aspect_ratio": "16:9", "seed": "7"}, {"prompt": "a fox"}]
    assert [item.path for item in fake.recorder.received] == [f"{GENERATE}/core", f"{GENERATE}/ultra",
                                                              f"{GENERATE}/core", f"{GENERATE}/core"]


async def test_the_adapters_multipart_call_is_parsed_by_aiohttp_and_answered(aiohttp_client: ClientMaker) -> None:
    fake = FakeStability()
    client = await aiohttp_client(fake.app())
    image = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    request = parse_image_request({"model": "sd3.5-large", "prompt": "a fox, 狐", "image": image, "strength": 0.4})
    rule = ModelRule(pattern="sd3.5-large", channels=("stability",), passthrough=frozenset({"image", "strength"}))
    channel = Channel(name="stability", type="stability", base_url=url_of(client),
                      api_key=fake.api_key, settings=declared(SPEC, {"accept": "application/json"}))
    job = Job(build_plan(request, rule), channel, fake.api_key)
    step = SPEC.start(job)
    assert isinstance(step, Send)

    async with client.session.post(step.call.url, data=step.call.data, headers=dict(step.call.headers)) as answer:
        response = UpstreamResponse(answer.status, {k.lower(): v for k, v in answer.headers.items()}, await answer.read())

    assert fake.forms == [{"prompt": "a fox, 狐", "model": "sd3.5-large", "mode": "image-to-image", "strength": "0.4",
                           "image": Upload("image.png", "image/png", PNG)}]
    assert json.loads(response.body)["finish_reason"] == "SUCCESS"
    assert SPEC.advance(job, step.state, response) == Done(ImagesResult(
        images=(GeneratedImage(b64_json=base64.b64encode(PNG).decode(), content_type="image/png"),),
        extra={"output_format": "png", "seeds": [4242]},
    ))
