"""Core tests: the OpenAI adapter, golden in/out: client body -> upstream call -> canned answer -> result."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from functools import partial
from types import MappingProxyType
from typing import Any

import pytest

from proxy.adapters import openai
from proxy.adapters.base import Call, Done, Fail, Job, Send, UpstreamResponse
from proxy.core.errors import BadGateway, RateLimited, UpstreamError
from proxy.core.plain_base64 import SPLICE_FROM
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import Channel, ModelRule
from tests.factories import DALLE3, answer, make_job

BASE = "https://api.openai.example/v1"
KEY = "Zx9-openai-channel-key-0123456789"
CHANNEL = Channel(name="openai", type="openai", base_url=BASE, api_key=KEY,
                  headers=MappingProxyType({"OpenAI-Organization": "org-42"}))
PASSTHROUGH = Channel(name="relay", type="openai", base_url=BASE, api_key="passthrough")

GPT_IMAGE = ModelRule(
    pattern="gpt-image-*",
    channels=("openai",),
    upstream_model="gpt-image-1",
    defaults=MappingProxyType({"quality": "auto"}),
    passthrough=frozenset({"background", "output_format", "output_compression", "moderation", "extra_body", "user"}),
)
HEADERS = {"OpenAI-Organization": "org-42", "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _job(body: dict[str, Any], rule: ModelRule, channel: Channel = CHANNEL, key: str | None = KEY) -> Job:
    return make_job(body, rule, spec=openai.SPEC, channel=channel, key=key)


_response = partial(answer, content_type="application/json")


def _fail(job: Job, response: UpstreamResponse) -> Any:
    step = openai.SPEC.advance(job, None, response)
    assert isinstance(step, Fail)
    assert KEY not in step.error.message
    assert KEY not in json.dumps(step.error.envelope())
    return step.error


# --- start --------------------------------------------------------------------------------------


def test_dalle3_golden_call() -> None:
    job = _job(
        {"model": "dall-e-3", "prompt": "一张科幻城市夜景插画", "size": "1792×1024", "quality": "hd",
         "style": "vivid", "watermark": False, "n": 1},
        DALLE3,
    )
    assert openai.SPEC.start(job) == Send(
        Call(
            "POST",
            f"{BASE}/images/generations",
            headers=HEADERS,
            json={"model": "dall-e-3", "prompt": "一张科幻城市夜景插画", "n": 1, "quality": "hd",
                  "response_format": "url", "size": "1792x1024", "style": "vivid"},
        )
    )
    assert job.plan.ignored == ("watermark",)


def test_exact_call_fields() -> None:
    step = openai.SPEC.start(_job({"model": "dall-e-3", "prompt": "p", "response_format": "base64"}, DALLE3))
    assert isinstance(step, Send)
    assert step.state is None
    call = step.call
    assert call.method == "POST"
    assert call.url == f"{BASE}/images/generations"
    assert dict(call.headers) == HEADERS
    assert call.json == {"model": "dall-e-3", "prompt": "p", "n": 1, "quality": "standard", "response_format": "b64_json"}
    assert call.data is None
    assert call.timeout is None


def test_upstream_model_rename_and_output_format_jpg() -> None:
    job = _job({"model": "gpt-image-1-mini", "prompt": "p", "n": 3, "output_format": "JPG", "background": "opaque",
                "output_compression": 80}, GPT_IMAGE)
    step = openai.SPEC.start(job)
    assert isinstance(step, Send)
    assert step.call.json == {"model": "gpt-image-1", "prompt": "p", "n": 3, "quality": "auto", "output_format": "jpeg",
                              "background": "opaque", "output_compression": 80}


@pytest.mark.parametrize("value", ["png", "jpeg", "webp"])
def test_other_output_formats_unchanged(value: str) -> None:
    step = openai.SPEC.start(_job({"model": "gpt-image-1", "prompt": "p", "output_format": value}, GPT_IMAGE))
    assert isinstance(step, Send)
    assert step.call.json["output_format"] == value


def test_extra_body_is_merged_verbatim() -> None:
    extra = {"sequential_image_generation": "disabled", "sequential_image_generation_options": {"max_images": 15},
             "flags": [1, None, "x"]}
    step = openai.SPEC.start(_job({"model": "gpt-image-1", "prompt": "p", "extra_body": extra}, GPT_IMAGE))
    assert isinstance(step, Send)
    assert step.call.json == {"model": "gpt-image-1", "prompt": "p", "n": 1, "quality": "auto", **extra}
    assert "extra_body" not in step.call.json


def test_style_and_background_objects_are_forwarded_equal() -> None:
    background = {"type": "gradient", "colors": ["#fff", "#000"]}
    style = {"preset": "anime", "strength": 0.7}
    step = openai.SPEC.start(_job({"model": "dall-e-3", "prompt": "p", "style": style}, DALLE3))
    assert isinstance(step, Send)
    assert step.call.json["style"] == style
    step = openai.SPEC.start(_job({"model": "gpt-image-1", "prompt": "p", "background": background}, GPT_IMAGE))
    assert isinstance(step, Send)
    assert json.dumps(step.call.json["background"]) == json.dumps(background)


def test_no_key_no_authorization_header() -> None:
    channel = Channel(name="localai", type="openai", base_url="http://localai:8080/v1")
    step = openai.SPEC.start(_job({"model": "dall-e-3", "prompt": "p"}, DALLE3, channel, None))
    assert isinstance(step, Send)
    assert dict(step.call.headers) == {"Content-Type": "application/json"}
    assert step.call.url == "http://localai:8080/v1/images/generations"


def test_passthrough_channel_uses_the_key_it_is_given() -> None:
    step = openai.SPEC.start(_job({"model": "dall-e-3", "prompt": "p"}, DALLE3, PASSTHROUGH, "sk-client-key-123456"))
    assert isinstance(step, Send)
    assert step.call.headers["Authorization"] == "Bearer sk-client-key-123456"


def test_auth_headers() -> None:
    assert openai.SPEC.auth_headers is not None
    assert openai.SPEC.auth_headers("k") == {"Authorization": "Bearer k"}
    assert openai.SPEC.auth_headers(None) == {}
    assert openai.SPEC.auth_headers("") == {}


def test_job_repr_hides_the_key() -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    assert repr(job) == "Job(model='dall-e-3', channel='openai')"


# --- advance ------------------------------------------------------------------------------------


def test_advance_golden_result() -> None:
    job = _job({"model": "gpt-image-1", "prompt": "p", "n": 2}, GPT_IMAGE)
    answer = {
        "created": 1735689600,
        "data": [
            {"b64_json": "aSDinaTvuI8gbWludGxpZnk=", "revised_prompt": "a minimal poster"},
            {"url": "https://cdn.example.com/images/img-abc123.png"},
        ],
        "usage": {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
                  "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}},
        "size": "1024x1024",
        "quality": "high",
        "background": "opaque",
        "output_format": "png",
        "unexpected": "dropped",
    }
    step = openai.SPEC.advance(job, None, _response(200, answer))
    assert step == Done(
        ImagesResult(
            images=(
                GeneratedImage(b64_json="aSDinaTvuI8gbWludGxpZnk=", revised_prompt="a minimal poster"),
                GeneratedImage(url="https://cdn.example.com/images/img-abc123.png"),
            ),
            created=1735689600,
            usage={"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
                   "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}},
            extra={"background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024"},
        )
    )


def test_a_large_image_is_the_answers_own_base64_bytes_and_the_result_is_the_parsed_one() -> None:
    job = _job({"model": "gpt-image-1", "prompt": "p", "n": 2}, GPT_IMAGE)
    big = base64.b64encode(os.urandom(3 * SPLICE_FROM)).decode()
    answer = {"created": 1735689600, "data": [{"b64_json": big, "revised_prompt": "r"}, {"b64_json": "QUJD"}],
              "usage": {"total_tokens": 100}, "size": "1024x1024"}
    step = openai.SPEC.advance(job, None, _response(200, answer))
    assert isinstance(step, Done)
    first, second = step.result.images
    assert first == GeneratedImage(b64_json=big.encode(), revised_prompt="r")  # not copied into a str
    assert second == GeneratedImage(b64_json="QUJD")
    assert replace(step.result, images=(replace(first, b64_json=big), second)) == ImagesResult(
        images=(GeneratedImage(b64_json=big, revised_prompt="r"), GeneratedImage(b64_json="QUJD")),
        created=1735689600, usage={"total_tokens": 100}, extra={"size": "1024x1024"},
    )


def test_an_answer_received_in_chunks_is_parsed_from_them_never_joined_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job({"model": "gpt-image-1", "prompt": "p"}, GPT_IMAGE)
    big = base64.b64encode(os.urandom(3 * SPLICE_FROM))
    raw = b'{"created": 1, "data": [{"b64_json": "' + big + b'"}], "usage": {"total_tokens": 9}}'
    chunks = tuple(raw[at : at + 1000] for at in range(0, len(raw), 1000))

    def joined(_: UpstreamResponse) -> bytes:
        raise AssertionError("the whole answer was joined")

    monkeypatch.setattr(UpstreamResponse, "body", property(joined))
    step = openai.SPEC.advance(job, None, UpstreamResponse(200, {"content-type": "application/json"}, chunks))
    assert isinstance(step, Done)
    assert step.result.images == (GeneratedImage(b64_json=big),) and step.result.usage == {"total_tokens": 9}


@pytest.mark.parametrize("bad", [b"\x01", b"\"", b"\xff"], ids=["control", "quote", "not-utf8"])
def test_a_large_image_in_a_broken_body_is_a_bad_gateway(bad: bytes) -> None:
    job = _job({"model": "gpt-image-1", "prompt": "p"}, GPT_IMAGE)
    big = base64.b64encode(os.urandom(3 * SPLICE_FROM))
    error = _fail(job, _response(200, b'{"data": [{"b64_json": "' + big + bad + b'"}]}'))
    assert isinstance(error, BadGateway) and error.code == "bad_upstream_response"


def test_advance_minimal_answer() -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    step = openai.SPEC.advance(job, None, _response(200, {"created": True, "data": [{"url": "https://x/1.png"}]}))
    assert step == Done(ImagesResult(images=(GeneratedImage(url="https://x/1.png"),), created=None, usage=None, extra={}))


@pytest.mark.parametrize(
    "body",
    [
        {"created": 1},
        {"created": 1, "data": []},
        {"data": None},
        {"data": [{"revised_prompt": "no image"}]},
        {"data": [{"url": 5}]},
        {"data": ["https://x/1.png"]},
        [],
        b"not json",
        b"",
        b"\xff\xfe\x00",
    ],
)
def test_200_without_images_is_a_bad_gateway(body: Any) -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    error = _fail(job, _response(200, body))
    assert isinstance(error, BadGateway)
    assert error.status == 502
    assert error.code == "bad_upstream_response"
    assert error.message.startswith("channel 'openai' answered with no usable images: ")
    assert error.retryable is False


@pytest.mark.parametrize(
    ("error", "status", "retryable"),
    [
        ({"message": "Your request was rejected by the safety system.", "type": "image_generation_user_error",
          "code": "moderation_blocked"}, 400, False),
        ({"message": "Invalid size.", "type": "invalid_request_error", "param": "size", "code": None}, 400, False),
        ({"message": "Rate limit reached.", "type": "requests", "code": "rate_limit_exceeded"}, 429, True),
        ({"message": "Something broke.", "type": "server_error", "code": None}, 502, False),  # as with no images
    ],
)
def test_a_200_carrying_an_error_object_means_what_the_error_says(error: dict[str, Any], status: int, retryable: bool) -> None:
    # Some OpenAI-compatible relays answer every error with a 200: a refused prompt is still the client's.
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    failed = _fail(job, _response(200, {"error": error}))
    assert (failed.status, failed.retryable) == (status, retryable)
    if status != 502:
        assert failed.message == error["message"] and failed.envelope()["error"]["code"] == error["code"]


def test_400_is_kept() -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    body = {"error": {"message": "Your request was rejected as a result of our safety system.",
                      "type": "invalid_request_error", "param": None, "code": "content_policy_violation"}}
    error = _fail(job, _response(400, body))
    assert isinstance(error, UpstreamError)
    assert error.status == 400
    assert error.envelope() == {"error": {"message": "Your request was rejected as a result of our safety system.",
                                          "type": "invalid_request_error", "param": None, "code": "content_policy_violation"}}


def test_429_is_rate_limited() -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    body = {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    error = _fail(job, _response(429, body, {"retry-after": "12"}))
    assert isinstance(error, RateLimited)
    assert (error.status, error.retryable, error.retry_after) == (429, True, 12.0)
    assert error.headers() == {"Retry-After": "12"}


def test_500_is_a_retryable_bad_gateway() -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    error = _fail(job, _response(500, {"error": {"message": "The server had an error", "type": "server_error"}}))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_error", True)
    assert error.message == "channel 'openai' failed: The server had an error"


def test_401_with_channel_key_blames_the_channel() -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    body = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    error = _fail(job, _response(401, body))
    assert (error.status, error.code) == (502, "upstream_auth_failed")
    assert error.message == "channel 'openai' was refused by its upstream (HTTP 401): Incorrect API key provided: ***"


def test_401_with_passthrough_key_is_the_clients() -> None:
    client_key = "Qq7-client-own-key-abcdefgh"
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3, PASSTHROUGH, client_key)
    body = {"error": {"message": f"Incorrect API key provided: {client_key}", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    step = openai.SPEC.advance(job, None, _response(401, body))
    assert isinstance(step, Fail)
    assert step.error.status == 401
    assert step.error.code == "invalid_api_key"
    assert step.error.message == "Incorrect API key provided: ***"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 502, 503])
@pytest.mark.parametrize("shape", ["json", "text"])
def test_the_key_never_appears_in_any_error(status: int, shape: str) -> None:
    job = _job({"model": "dall-e-3", "prompt": "p"}, DALLE3)
    text = f"denied for Bearer {KEY} (key={KEY})"
    body = json.dumps({"error": {"message": text}}).encode() if shape == "json" else text.encode()
    _fail(job, _response(status, body))
