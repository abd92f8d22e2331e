"""Core tests: the Ark Seedream adapter, from a real client body to the exact upstream call and back."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Fail, Job, Send
from proxy.adapters.seedream import FAMILIES, SPEC, fit_size
from proxy.core.errors import BadGateway, ContentPolicyViolation, RateLimited, ServiceUnavailable, UpstreamError
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.sizes import Size
from tests import factories
from tests.factories import advance_error, answer, started
from tests.fakes.png import encode_png

KEY = "ark-secret-0123456789"
BASE = "https://ark.cn-beijing.volces.com/api/v3"
URL = f"{BASE}/images/generations"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
V40 = "doubao-seedream-4-0-250828"
V45 = "doubao-seedream-4-5-251128"
V30 = "doubao-seedream-3-0-t2i-250415"
EDIT = "doubao-seededit-3-0-i2i-250628"
PASSTHROUGH = frozenset({"watermark", "response_format", "seed", "guidance_scale", "image", "extra_body"})
PNG_B64 = base64.b64encode(encode_png(1, 1, [b"\x00\x00\x00"])).decode()


make_job = partial(factories.make_job, spec=SPEC, finished=False,
                   channel="ark", channel_type="seedream", base_url=BASE, api_key=KEY, max_n=4,
                   passthrough=PASSTHROUGH)


def sent_body(job: Job) -> Any:
    step = SPEC.start(job)
    assert isinstance(step, Send)
    return step.call.json


failure = partial(advance_error, SPEC, secrets=(KEY,))


def ark_error(code: str, message: str, param: str = "", kind: str = "BadRequest") -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param, "type": kind}}


USAGE = {"generated_images": 1, "output_tokens": 16384, "total_tokens": 16384}


def test_spec_declares_no_native_n() -> None:
    assert (SPEC.name, SPEC.max_n_per_call, frozenset(SPEC.schema.settings)) == ("seedream", 1, frozenset({"model_families"}))


def test_success_round_trip() -> None:
    job = make_job({"model": "seedream-4", "prompt": "a red fox", "size": "2048x2048", "quality": "hd",
                    "response_format": "url", "n": 1}, upstream=V40)
    step = SPEC.start(job)
    assert step == Send(Call("POST", URL, headers=HEADERS, json={
        "model": V40, "prompt": "a red fox", "size": "2048x2048", "response_format": "url",
    }))
    upstream = {"model": V40, "created": 1757323224, "data": [{"url": "https://ark.example/1.jpeg", "size": "2048x2048"}],
                "usage": USAGE}
    assert SPEC.advance(job, None, answer(200, upstream)) == Done(ImagesResult(
        images=(GeneratedImage(url="https://ark.example/1.jpeg"),),
        created=1757323224,
        usage=USAGE,
        extra={"size": "2048x2048"},
    ))


def test_b64_answer() -> None:
    job = make_job({"model": V30, "prompt": "p", "response_format": "b64_json", "seed": 42})
    assert sent_body(job) == {"model": V30, "prompt": "p", "response_format": "b64_json", "seed": 42}
    step = SPEC.advance(job, None, answer(200, {"model": V30, "created": 5, "data": [{"b64_json": PNG_B64}]}))
    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64),), created=5))


def test_response_format_not_passed_through_is_not_sent() -> None:
    job = make_job({"model": V40, "prompt": "p", "response_format": "b64_json"}, passthrough=frozenset())
    assert sent_body(job) == {"model": V40, "prompt": "p"}
    assert job.plan.response_format == "b64_json"


def test_watermark_is_tri_state() -> None:
    base = {"model": V40, "prompt": "a cat"}
    assert sent_body(make_job(base)) == {"model": V40, "prompt": "a cat"}
    assert sent_body(make_job({**base, "watermark": False})) == {"model": V40, "prompt": "a cat", "watermark": False}
    assert sent_body(make_job({**base, "watermark": True})) == {"model": V40, "prompt": "a cat", "watermark": True}


def test_sizes_below_the_floor_scale_up_keeping_the_shape() -> None:
    def sent_size(model: str, size: str) -> Any:
        return sent_body(make_job({"model": model, "prompt": "p", "size": size})).get("size")

    assert sent_size(V45, "1024x1024") == "1920x1920"  # 3,686,400 px: exactly 4.5's floor
    assert sent_size(V45, "1024x1536") == "1568x2352"
    assert sent_size(V40, "1024x1024") == "1024x1024"  # above 4.0's floor of 921,600 px
    assert sent_size(V40, "512x512") == "960x960"
    assert sent_size(V40, "8192x8192") == "4096x4096"
    assert sent_size(V30, "256x256") == "512x512"
    assert sent_size(V30, "4096x2048") == "2896x1448"
    assert sent_size(V40, "auto") is None
    assert sent_size(EDIT, "1024x1024") == "adaptive"
    assert sent_size("ep-20250101-abc", "1024x1024") == "1024x1024"  # unknown family: as given


def test_endpoint_ids_take_their_family_from_the_channel() -> None:
    job = make_job({"model": "ep-20250101-abc", "prompt": "p", "size": "1024x1024"},
                   settings={"model_families": {"ep-20250101-abc": "seedream-4.5"}})
    assert sent_body(job)["size"] == "1920x1920"


def test_fit_size_never_leaves_the_range() -> None:
    for family in ("seedream-4.5", "seedream-4.0", "seedream-3.0"):
        limits = FAMILIES[family]
        for size in (Size(1, 1), Size(256, 4096), Size(1792, 1024), Size(9000, 9000), Size(4000, 100)):
            fitted = fit_size(size, limits)
            assert limits.min_pixels <= fitted.pixels <= limits.max_pixels, (family, size, fitted)
            assert 1 / 16 <= fitted.width / fitted.height <= 16


def test_extra_body_reaches_the_body_verbatim() -> None:
    extra = {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3},
             "optimize_prompt_options": {"mode": "fast"}}
    job = make_job({"model": V40, "prompt": "four seasons", "size": "2048x2048", "extra_body": extra})
    assert sent_body(job) == {"model": V40, "prompt": "four seasons", "size": "2048x2048", **extra}


def test_guidance_scale_and_seed_pass_through() -> None:
    job = make_job({"model": V30, "prompt": "p", "guidance_scale": 2.5, "seed": -1})
    assert sent_body(job) == {"model": V30, "prompt": "p", "guidance_scale": 2.5, "seed": -1}


def test_input_images() -> None:
    job = make_job({"model": V40, "prompt": "p", "image": [
        "https://example.com/a.png", f"data:image/PNG;base64,{PNG_B64}", PNG_B64,
    ]})
    assert sent_body(job)["image"] == [
        "https://example.com/a.png", f"data:image/png;base64,{PNG_B64}", f"data:image/png;base64,{PNG_B64}",
    ]
    single = make_job({"model": EDIT, "prompt": "p", "image": PNG_B64})
    assert sent_body(single)["image"] == f"data:image/png;base64,{PNG_B64}"


def test_raw_base64_of_no_image_is_a_client_error() -> None:
    raw = base64.b64encode(b"plain text, not an image at all").decode()
    step = started(SPEC, make_job({"model": V40, "prompt": "p", "image": raw}))
    assert isinstance(step, Fail)
    assert (step.error.status, step.error.param, step.error.code) == (400, "image", "invalid_value")


def test_partial_success_returns_the_images_and_reports_the_failures() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    upstream = {"model": V40, "created": 9, "data": [
        {"url": "https://ark.example/1.jpeg", "size": "2720x1536"},
        {"error": {"code": "OutputImageSensitiveContentDetected", "message": "The output image may be sensitive."}},
        {"url": "https://ark.example/3.jpeg", "size": "2720x1536"},
    ], "usage": {"generated_images": 2, "output_tokens": 32640, "total_tokens": 32640}}
    assert SPEC.advance(job, None, answer(200, upstream)) == Done(ImagesResult(
        images=(GeneratedImage(url="https://ark.example/1.jpeg"), GeneratedImage(url="https://ark.example/3.jpeg")),
        created=9,
        usage={"generated_images": 2, "output_tokens": 32640, "total_tokens": 32640},
        extra={"size": "2720x1536", "failed_images": [
            {"index": 1, "code": "OutputImageSensitiveContentDetected", "message": "The output image may be sensitive."},
        ]},
    ))


def test_all_items_moderated_is_a_content_policy_violation() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    upstream = {"model": V40, "created": 9, "data": [
        {"error": {"code": "OutputImageSensitiveContentDetected", "message": "The output image may be sensitive."}},
    ], "usage": {"generated_images": 0, "output_tokens": 0, "total_tokens": 0}}
    error = failure(job, answer(200, upstream))
    assert isinstance(error, ContentPolicyViolation)
    assert (error.status, error.type, error.code) == (400, "image_generation_user_error", "moderation_blocked")


def test_all_items_failed_otherwise_is_a_retryable_bad_gateway() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    upstream = {"data": [{"error": {"code": "InternalServiceError", "message": "boom"}}]}
    error = failure(job, answer(200, upstream))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_error", True)


def test_a_200_without_images_is_a_bad_gateway() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    for body in ({"model": V40, "data": []}, {"model": V40}, [1, 2]):
        error = failure(job, answer(200, body))
        assert (error.status, error.code) == (502, "bad_upstream_response")


def test_input_moderation() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    error = failure(job, answer(400, ark_error("InputTextSensitiveContentDetected", "The input text may be sensitive.")))
    assert isinstance(error, ContentPolicyViolation)
    assert (error.status, error.code) == (400, "moderation_blocked")
    assert "InputTextSensitiveContentDetected" in error.message


def test_quota_429_is_billing_not_a_retryable_rate_limit() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    quota = ark_error("QuotaExceeded", "Quota exhausted.", kind="TooManyRequests")
    error = failure(job, answer(429, quota, {"retry-after": "9"}))
    assert isinstance(error, RateLimited)
    assert (error.status, error.type, error.code, error.retryable, error.retry_after) == (
        429, "insufficient_quota", "insufficient_quota", False, None)
    overdue = failure(job, answer(403, ark_error("AccountOverdueError", "Overdue balance.", kind="Forbidden")))
    assert (overdue.status, overdue.type, overdue.retryable) == (429, "insufficient_quota", False)


def test_rpm_429_is_a_retryable_rate_limit() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    body = ark_error("RateLimitExceeded.EndpointRPMExceeded", "RPM exceeded.", kind="TooManyRequests")
    error = failure(job, answer(429, body, {"retry-after": "7"}))
    assert isinstance(error, RateLimited)
    assert (error.status, error.type, error.code, error.retryable) == (429, "rate_limit_exceeded", "rate_limit_exceeded", True)
    assert error.headers() == {"Retry-After": "7"}


def test_overload_is_a_retryable_503() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    error = failure(job, answer(429, ark_error("ServerOverloaded", "Busy.", kind="TooManyRequests")))
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.retryable) == (503, True)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, ark_error("InvalidParameter", "The parameter `size` is not valid.", "size"), (400, "size", "InvalidParameter")),
        (400, ark_error("InvalidParameter.Seed", "seed is not supported."), (400, "seed", "InvalidParameter.Seed")),
        (404, ark_error("InvalidEndpointOrModel.NotFound", "The model does not exist.", kind="NotFound"),
         (404, None, "InvalidEndpointOrModel.NotFound")),
    ],
)
def test_other_4xx_keep_status_and_message(status: int, body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    error = failure(make_job({"model": V40, "prompt": "p"}), answer(status, body))
    assert isinstance(error, UpstreamError)
    assert (error.status, error.param, error.code) == expected
    assert error.type == "invalid_request_error"
    assert body["error"]["message"] in error.message


def test_rejected_key_and_server_errors_are_bad_gateways_without_the_key() -> None:
    job = make_job({"model": V40, "prompt": "p"})
    auth = failure(job, answer(401, ark_error("AuthenticationError", f"The API key {KEY} is invalid.", kind="Unauthorized")))
    assert (auth.status, auth.code, auth.retryable) == (502, "upstream_auth_failed", True)
    server = failure(job, answer(500, ark_error("InternalServiceError", "boom", kind="InternalServerError")))
    assert (server.status, server.code, server.retryable) == (502, "upstream_error", True)
