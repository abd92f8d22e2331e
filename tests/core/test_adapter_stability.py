"""Core tests: the Stability adapter, from a real client body through the real pipeline to the exact call and back."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Job, Step, UpstreamResponse
from proxy.adapters.stability import SPEC
from proxy.core.formats import Conversion
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import Field, advanced, decode_form, envelope, fail_error, form_values, send_parts, started
from tests.fakes.png import encode_png

KEY = "sk-stability-secret-4f9a8b7c"
BASE = "https://api.stability.ai"
PNG = encode_png(2, 2, [b"\xff\x00\x00" * 2, b"\x00\x00\xff" * 2])
PNG_B64 = base64.b64encode(PNG).decode()
JSON_HEADERS = {"content-type": "application/json"}
STABLE_FIELDS = ("negative_prompt", "seed", "style_preset", "output_format", "aspect_ratio", "image", "strength")


make_job = partial(factories.make_job, spec=SPEC, channel="stability", base_url=BASE, api_key=KEY, max_n=4,
                   passthrough=STABLE_FIELDS)


sent = send_parts


def form_of(call: Call) -> list[Field]:
    assert call.data is not None and call.json is None
    return decode_form(call.data, call.headers["Content-Type"])


failed = fail_error


def stability_error(status: int, name: str, *errors: str, headers: Mapping[str, str] | None = None) -> UpstreamResponse:
    body = json.dumps({"id": "a1b2c3", "name": name, "errors": list(errors)}).encode()
    return UpstreamResponse(status, {**JSON_HEADERS, **(headers or {})}, body)


def json_answer(image: str | None = PNG_B64, finish: str = "SUCCESS", seed: int = 1234) -> UpstreamResponse:
    return UpstreamResponse(200, JSON_HEADERS, json.dumps({"image": image, "finish_reason": finish, "seed": seed}).encode())


# -- the request ------------------------------------------------------------------------------------------


def test_core_text_to_image_call_is_exact() -> None:
    job = make_job({"model": "stable-image-core", "prompt": "a red fox in snow", "size": "1792x1024", "n": 1,
                    "negative_prompt": "blurry", "seed": 42, "style_preset": "photographic", "output_format": "jpg",
                    "quality": "hd", "response_format": "b64_json"})

    call, state = sent(SPEC.start(job))

    assert (call.method, call.url) == ("POST", f"{BASE}/v2beta/stable-image/generate/core")
    boundary = call.headers["Content-Type"].removeprefix("multipart/form-data; boundary=")
    assert dict(call.headers) == {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Accept": "application/json",
    }
    # quality has no Stability meaning and n is the driver's business: neither is a form field.
    assert form_values(form_of(call)) == [
        ("prompt", "a red fox in snow"),
        ("aspect_ratio", "16:9"),
        ("negative_prompt", "blurry"),
        ("style_preset", "photographic"),
        ("seed", "42"),
        ("output_format", "jpeg"),
    ]
    assert form_of(call) == [Field(name, None, None, value.encode()) for name, value in form_values(form_of(call))]
    assert state is not None
    assert SPEC.max_n_per_call == 1


@pytest.mark.parametrize(
    ("size", "ratio"),
    [("1024x1024", "1:1"), ("1536x1024", "3:2"), ("1024x1536", "2:3"), ("1024x1792", "9:16"), ("2560x1080", "21:9"),
     ("1080x2560", "9:21"), ("1280x1024", "5:4"), ("1024x1280", "4:5"), ("256x256", "1:1"), ("auto", None)],
)
def test_size_becomes_the_nearest_stability_aspect_ratio(size: str, ratio: str | None) -> None:
    call, _ = sent(SPEC.start(make_job({"model": "stable-image-ultra", "prompt": "p", "size": size})))

    assert dict(form_values(form_of(call))).get("aspect_ratio") == ratio
    assert call.url == f"{BASE}/v2beta/stable-image/generate/ultra"


def test_client_aspect_ratio_wins_over_size_and_is_snapped_to_a_supported_one() -> None:
    exact = make_job({"model": "stable-image-ultra", "prompt": "p", "size": "1024x1024", "aspect_ratio": "21:9"})
    snapped = make_job({"model": "stable-image-ultra", "prompt": "p", "aspect_ratio": "4:3"})

    assert dict(form_values(form_of(sent(SPEC.start(exact))[0])))["aspect_ratio"] == "21:9"
    # 4:3 is not a Stability ratio; 5:4 is the nearest (log scale), so the upstream never sees a 400 for it.
    assert dict(form_values(form_of(sent(SPEC.start(snapped))[0])))["aspect_ratio"] == "5:4"


def test_fields_absent_from_passthrough_are_not_sent() -> None:
    job = make_job({"model": "stable-image-core", "prompt": "p", "seed": 7, "negative_prompt": "x"}, passthrough=())

    call, _ = sent(SPEC.start(job))

    assert form_values(form_of(call)) == [("prompt", "p")]
    assert job.plan.ignored == ("negative_prompt", "seed")


def test_sd3_image_to_image_sends_model_mode_strength_and_the_file() -> None:
    job = make_job({"model": "sd3.5-large", "prompt": "make it autumn", "size": "1792x1024", "strength": 0.7,
                    "image": f"data:image/png;base64,{PNG_B64}", "output_format": "png"})

    call, _ = sent(SPEC.start(job))
    fields = form_of(call)

    assert call.url == f"{BASE}/v2beta/stable-image/generate/sd3"
    # aspect_ratio is left out with an input image: the output follows the input's shape.
    assert form_values(fields) == [("prompt", "make it autumn"), ("model", "sd3.5-large"), ("output_format", "png"),
                                   ("mode", "image-to-image"), ("strength", "0.7")]
    assert fields[-1] == Field("image", "image.png", "image/png", PNG)


def test_raw_base64_image_without_strength_gets_the_seed_default() -> None:
    job = make_job({"model": "ultra", "prompt": "p", "image": PNG_B64}, upstream="stable-image-ultra")

    fields = form_of(sent(SPEC.start(job))[0])

    assert form_values(fields) == [("prompt", "p"), ("strength", "0.5")]
    assert fields[-1] == Field("image", "image.png", "image/png", PNG)


def test_seed_minus_one_is_stabilitys_random_and_extras_go_verbatim() -> None:
    job = make_job({"model": "sd3.5-large", "prompt": "p", "seed": -1, "cfg_scale": 4.5,
                    "extra_body": {"stability_flag": True}},
                   passthrough=("seed", "cfg_scale", "extra_body"))

    fields = form_values(form_of(sent(SPEC.start(job))[0]))

    assert fields == [("prompt", "p"), ("model", "sd3.5-large"), ("seed", "0"), ("cfg_scale", "4.5"),
                      ("stability_flag", "true")]


def test_extra_body_goes_before_the_file_and_cannot_replace_a_field() -> None:
    job = make_job({"model": "stable-image-ultra", "prompt": "p", "image": PNG_B64, "extra_body": {"flag": 1}},
                   passthrough=("image", "extra_body"))
    clash = make_job({"model": "stable-image-ultra", "prompt": "p", "extra_body": {"prompt": "sneaky"}},
                     passthrough=("extra_body",))

    fields = form_of(sent(SPEC.start(job))[0])

    assert [field.name for field in fields] == ["prompt", "strength", "flag", "image"]
    assert envelope(failed(started(SPEC, clash))) == (400, "invalid_request_error", "extra_body.prompt", "invalid_value")


def test_accept_setting_asks_for_raw_bytes() -> None:
    call, _ = sent(SPEC.start(make_job({"model": "stable-image-core", "prompt": "p"}, settings={"accept": "image/*"})))

    assert call.headers["Accept"] == "image/*"


def test_the_form_is_deterministic() -> None:
    body = {"model": "stable-image-core", "prompt": "p", "size": "1024x1024"}

    assert sent(SPEC.start(make_job(body)))[0] == sent(SPEC.start(make_job(body)))[0]


def test_sd3_is_not_asked_for_webp_the_proxy_converts() -> None:
    job = make_job({"model": "sd3.5-large", "prompt": "p", "output_format": "webp"})
    assert "output_format" not in dict(form_values(form_of(sent(SPEC.start(job))[0])))
    assert job.plan.conversion == Conversion("webp")
    core = make_job({"model": "stable-image-core", "prompt": "p", "output_format": "webp"})
    assert dict(form_values(form_of(sent(SPEC.start(core))[0])))["output_format"] == "webp" and core.plan.conversion is None
    handed = replace(job, plan=replace(job.plan, fields={**job.plan.fields, "output_format": "webp"}))
    assert envelope(failed(started(SPEC, handed)))[2] == "output_format"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "stable-image-ultra", "prompt": "p", "image": "https://example.com/cat.png"}, "image"),
        ({"model": "stable-image-core", "prompt": "p", "image": PNG_B64}, "image"),
        ({"model": "stable-image-ultra", "prompt": "p", "image": [PNG_B64, PNG_B64]}, "image"),
        ({"model": "stable-image-ultra", "prompt": "p", "image": "not base64!"}, "image"),
        ({"model": "stable-image-ultra", "prompt": "p", "image": base64.b64encode(b"GIF89a....").decode()}, "image"),
        ({"model": "stable-image-core", "prompt": "p", "seed": 2**32 - 1}, "seed"),
    ],
)
def test_requests_stability_would_reject_fail_here_naming_the_param(body: dict[str, Any], param: str) -> None:
    error = failed(started(SPEC, make_job(body)))

    assert envelope(error) == (400, "invalid_request_error", param, error.code)
    assert error.code in ("invalid_value", "unsupported_parameter")


def test_url_image_message_says_the_channel_needs_bytes() -> None:
    error = failed(started(SPEC, make_job({"model": "stable-image-ultra", "prompt": "p", "image": "https://x/y.png"})))

    assert "needs the image bytes" in error.message


def test_misconfigured_channel_is_a_503_that_may_fail_over() -> None:
    model = failed(started(SPEC, make_job({"model": "flux", "prompt": "p"})))

    assert envelope(model) == (503, "server_error", None, "channel_misconfigured")
    assert model.retryable


# -- the answer -------------------------------------------------------------------------------------------


def advance(job: Job, response: UpstreamResponse) -> Step:
    _, state = sent(SPEC.start(job))
    return advanced(SPEC, job, state, response)


def test_json_answer_becomes_one_image_with_its_format_and_seed() -> None:
    job = make_job({"model": "stable-image-core", "prompt": "p", "output_format": "jpeg"})

    step = advance(job, json_answer(seed=987654))

    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/jpeg"),),
                                     extra={"output_format": "jpeg", "seeds": [987654]}))


def test_raw_bytes_answer_reads_finish_reason_and_seed_from_headers() -> None:
    job = make_job({"model": "stable-image-core", "prompt": "p"}, settings={"accept": "image/*"})
    headers = {"content-type": "image/webp", "finish-reason": "SUCCESS", "seed": "31337"}

    step = advance(job, UpstreamResponse(200, headers, PNG))

    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/webp"),),
                                     extra={"output_format": "webp", "seeds": [31337]}))


@pytest.mark.parametrize(
    "response",
    [
        json_answer(finish="CONTENT_FILTERED"),
        json_answer(image=None, finish="CONTENT_FILTERED"),
        UpstreamResponse(200, {"content-type": "image/png", "finish-reason": "CONTENT_FILTERED", "seed": "1"}, PNG),
    ],
)
def test_content_filtered_inside_a_200_is_a_moderation_error(response: UpstreamResponse) -> None:
    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == (400, "image_generation_user_error", None, "moderation_blocked")


@pytest.mark.parametrize(
    "response",
    [
        json_answer(image=None),
        json_answer(image=""),
        UpstreamResponse(200, JSON_HEADERS, b"[1, 2]"),
        UpstreamResponse(200, JSON_HEADERS, b"{not json"),
        UpstreamResponse(200, {"content-type": "text/html"}, b"<html>hi</html>"),
        UpstreamResponse(200, {"content-type": "image/png", "finish-reason": "SUCCESS"}, b""),
        json_answer(finish="ERROR"),
    ],
)
def test_a_200_without_an_image_is_a_bad_gateway(response: UpstreamResponse) -> None:
    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == (502, "upstream_error", None, "bad_upstream_response")


def test_input_moderation_403_is_a_content_policy_violation_not_an_auth_failure() -> None:
    response = stability_error(403, "content_moderation", "Your request was flagged by our content moderation system")

    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == (400, "image_generation_user_error", None, "moderation_blocked")
    assert "flagged by our content moderation system" in error.message


def test_out_of_credits_is_402_and_not_retried() -> None:
    response = stability_error(402, "payment_required", "You lack sufficient credits to make this request.")

    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == (402, "insufficient_quota", None, "insufficient_quota")
    assert not error.retryable and error.retry_after is None
    assert "sufficient credits" in error.message


def test_rate_limit_is_retryable_after_the_documented_lockout() -> None:
    response = stability_error(429, "rate_limit_exceeded", "You have exceeded the rate limit of 150 requests per 10s.")

    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == (429, "rate_limit_exceeded", None, "rate_limit_exceeded")
    assert error.retryable and error.retry_after == 60.0
    assert error.headers() == {"Retry-After": "60"}


def test_a_retry_after_header_wins_over_the_lockout_default() -> None:
    response = stability_error(429, "rate_limit_exceeded", "slow down", headers={"retry-after": "7"})

    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert error.retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "name", "expected"),
    [
        (400, "bad_request", (400, "invalid_request_error", None, "bad_request")),
        (413, "payload_too_large", (413, "invalid_request_error", None, "payload_too_large")),
        (422, "invalid_language", (422, "invalid_request_error", None, "invalid_language")),
        (401, "unauthorized", (502, "upstream_error", None, "upstream_auth_failed")),
        (500, "internal_error", (502, "upstream_error", None, "upstream_error")),
    ],
)
def test_other_errors_keep_their_meaning_and_scrub_the_key(status: int, name: str, expected: tuple[Any, ...]) -> None:
    response = stability_error(status, name, "prompt: is invalid", f"key {KEY} was used")

    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == expected
    assert "prompt: is invalid" in error.message
    assert KEY not in error.message and "key *** was used" in error.message
    assert error.retryable == (status >= 500 or status == 401)


def test_a_non_json_5xx_is_a_retryable_bad_gateway() -> None:
    response = UpstreamResponse(502, {"content-type": "text/html"}, b"<html>Bad Gateway</html>")

    error = failed(advance(make_job({"model": "stable-image-core", "prompt": "p"}), response))

    assert envelope(error) == (502, "upstream_error", None, "upstream_error")
    assert error.retryable
