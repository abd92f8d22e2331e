"""The fake Azure upstream answers its documented shapes, and the adapter's calls round-trip through it."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from proxy.adapters.azure import SPEC
from proxy.adapters.base import Done, Fail, Job
from proxy.core.errors import BadGateway, ContentPolicyViolation, RateLimited
from proxy.core.response import GeneratedImage
from tests import factories
from tests.factories import round_trip, url_of
from tests.fakes.azure import PNG_B64, FakeAzure

KEY = FakeAzure().api_key


def make_job(client: TestClient[Any, Any], body: dict[str, Any], settings: dict[str, Any], *, key: str = KEY) -> Job:
    return factories.make_job(body, spec=SPEC, finished=False,
                              channel="azure", base_url=url_of(client), api_key=key, settings=settings)


async def test_deployment_form_success(aiohttp_client: Any) -> None:
    fake = FakeAzure()
    client = await aiohttp_client(fake.app())
    step = await round_trip(
        client, SPEC, make_job(client, {"model": "gpt-image-1", "prompt": "a fox", "n": 2, "size": "1024x1024"}, {})
    )
    assert isinstance(step, Done)
    assert step.result.images == (GeneratedImage(b64_json=PNG_B64), GeneratedImage(b64_json=PNG_B64))
    assert step.result.created == fake.created
    assert step.result.usage == {"input_tokens": 12, "output_tokens": 544, "total_tokens": 556}
    (received,) = fake.recorder.received
    assert (received.path, received.query) == (
        "/openai/deployments/gpt-image-1/images/generations",
        {"api-version": "2025-04-01-preview"},
    )
    assert received.header("api-key") == KEY
    assert received.json() == {"prompt": "a fox", "n": 2, "size": "1024x1024"}


async def test_v1_form_success(aiohttp_client: Any) -> None:
    fake = FakeAzure()
    client = await aiohttp_client(fake.app())
    job = make_job(client, {"model": "image-model", "prompt": "a fox"}, {"api_style": "v1", "deployment": "dall-e-3"})
    step = await round_trip(client, SPEC, job)
    assert isinstance(step, Done) and len(step.result.images) == 1
    (received,) = fake.recorder.received
    assert (received.path, received.query) == ("/openai/v1/images/generations", {})
    assert received.json() == {"model": "dall-e-3", "prompt": "a fox", "n": 1}


async def test_wrong_key_unknown_deployment_and_bad_api_version(aiohttp_client: Any) -> None:
    fake = FakeAzure()
    client = await aiohttp_client(fake.app())
    step = await round_trip(client, SPEC, make_job(client, {"model": "gpt-image-1", "prompt": "p"}, {}, key="wrong-key"))
    assert isinstance(step, Fail) and step.error.code == "upstream_auth_failed"
    step = await round_trip(client, SPEC, make_job(client, {"model": "nope", "prompt": "p"}, {}))
    assert isinstance(step, Fail) and step.error.code == "upstream_deployment_not_found"
    job = make_job(client, {"model": "gpt-image-1", "prompt": "p"}, {"api_version": "1999-01-01"})
    step = await round_trip(client, SPEC, job)
    assert isinstance(step, Fail) and (step.error.status, step.error.message) == (400, "API version not supported")
    async with client.post(
        "/openai/deployments/gpt-image-1/images/generations", headers={"api-key": KEY}, json={"prompt": "p"}
    ) as resp:
        assert (resp.status, await resp.json()) == (404, {"error": {"code": "404", "message": "Resource not found"}})


async def test_moderation_and_canned_failures(aiohttp_client: Any) -> None:
    fake = FakeAzure(moderate=True)
    client = await aiohttp_client(fake.app())
    step = await round_trip(client, SPEC, make_job(client, {"model": "gpt-image-1", "prompt": "p"}, {}))
    assert isinstance(step, Fail) and isinstance(step.error, ContentPolicyViolation)
    assert step.error.message.endswith("(filtered: violence)")
    fake.moderate = False
    fake.fail_with = (429, {"error": {"code": "429", "message": "Rate limit is exceeded."}})
    fake.fail_headers = {"retry-after-ms": "2500"}
    step = await round_trip(client, SPEC, make_job(client, {"model": "gpt-image-1", "prompt": "p"}, {}))
    assert isinstance(step, Fail) and isinstance(step.error, RateLimited) and step.error.retry_after == 2.5
    fake.fail_with = (503, {"error": {"code": "ServiceUnavailable", "message": "busy"}})
    step = await round_trip(client, SPEC, make_job(client, {"model": "gpt-image-1", "prompt": "p"}, {}))
    assert isinstance(step, Fail) and step.error.status == 503 and step.error.retryable
    fake.fail_with = (500, {"error": {"code": "InternalServerError", "message": "oops"}})
    step = await round_trip(client, SPEC, make_job(client, {"model": "gpt-image-1", "prompt": "p"}, {}))
    assert isinstance(step, Fail) and isinstance(step.error, BadGateway) and step.error.status == 502
