"""Core tests: the Gemini adapter (Imagen :predict and Gemini :generateContent), client body to exact call and back."""

from __future__ import annotations

import base64
import json
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Done, Job, Step, UpstreamResponse
from proxy.adapters.gemini import SPEC
from proxy.core.channel_settings import parse_settings
from proxy.core.formats import Conversion
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import envelope, fail_error, send_parts, started
from tests.fakes.png import encode_png

KEY = "AIzaSyGeminiSecret-0123456789abcdef"
BASE = "https://generativelanguage.googleapis.com/v1beta"
PNG = encode_png(2, 2, [b"\x00\xff\x00" * 2, b"\xff\xff\x00" * 2])
PNG_B64 = base64.b64encode(PNG).decode()
JSON_HEADERS = {"content-type": "application/json; charset=UTF-8"}
IMAGEN = "imagen-4.0-generate-001"
FLASH = "gemini-2.5-flash-image"


make_job = partial(factories.make_job, spec=SPEC, channel="gemini", base_url=BASE, api_key=KEY, max_n=4,
                   passthrough=("aspect_ratio",))


sent = send_parts


failed = fail_error


def advance(job: Job, response: UpstreamResponse) -> Step:
    _, state = sent(SPEC.start(job))
    return SPEC.advance(job, state, response)


def ok(data: Any) -> UpstreamResponse:
    return UpstreamResponse(200, JSON_HEADERS, json.dumps(data).encode())


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> UpstreamResponse:
    body = {"error": {"code": code, "message": message, "status": status, "details": list(details)}}
    return UpstreamResponse(code, JSON_HEADERS, json.dumps(body).encode())


def candidate(*parts: dict[str, Any], finish: str = "STOP") -> dict[str, Any]:
    return {"content": {"role": "model", "parts": list(parts)}, "finishReason": finish, "index": 0}


# -- Imagen: the request ----------------------------------------------------------------------------------


def test_imagen_call_is_exact_and_always_sends_sample_count() -> None:
    job = make_job({"model": IMAGEN, "prompt": "a lighthouse at dusk", "size": "1792x1024", "quality": "hd",
                    "output_format": "jpg", "output_compression": 80},
                   passthrough=("output_format", "output_compression"), settings={"person_generation": "allow_adult"})

    call, _ = sent(SPEC.start(job))

    assert (call.method, call.url) == ("POST", f"{BASE}/models/{IMAGEN}:predict")
    assert dict(call.headers) == {"x-goog-api-key": KEY, "Content-Type": "application/json"}
    assert call.data is None
    assert call.json == {
        "instances": [{"prompt": "a lighthouse at dusk"}],
        "parameters": {
            "sampleCount": 1,
            "aspectRatio": "16:9",
            "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80},
            "personGeneration": "allow_adult",
        },
    }


def test_imagen_takes_up_to_four_per_call_and_gemini_one() -> None:
    imagen = make_job({"model": IMAGEN, "prompt": "a bay", "n": 4})
    gemini = make_job({"model": "gemini-2.5-flash-image", "prompt": "a bay", "n": 4})

    assert (SPEC.per_call(imagen), SPEC.per_call(gemini)) == (4, 1)
    assert sent(SPEC.start(imagen))[0].json["parameters"]["sampleCount"] == 4


@pytest.mark.parametrize(
    ("size", "ratio"),
    [("1024x1024", "1:1"), ("1536x1024", "4:3"), ("1024x1536", "3:4"), ("1024x1792", "9:16"), ("1680x720", "16:9"),
     ("768x1024", "3:4")],
)
def test_imagen_size_becomes_the_nearest_imagen_ratio(size: str, ratio: str) -> None:
    call, _ = sent(SPEC.start(make_job({"model": IMAGEN, "prompt": "p", "size": size})))

    assert call.json["parameters"] == {"sampleCount": 1, "aspectRatio": ratio}


def test_imagen_large_sizes_ask_for_2k_and_auto_leaves_the_shape_to_imagen() -> None:
    large, _ = sent(SPEC.start(make_job({"model": IMAGEN, "prompt": "p", "size": "2048x2048"})))
    auto, _ = sent(SPEC.start(make_job({"model": IMAGEN, "prompt": "p", "size": "auto"})))

    assert large.json["parameters"] == {"sampleCount": 1, "aspectRatio": "1:1", "sampleImageSize": "2K"}
    assert auto.json["parameters"] == {"sampleCount": 1}


def test_imagen_sample_count_follows_the_plan_when_the_driver_batches() -> None:
    job = make_job({"model": IMAGEN, "prompt": "p", "n": 3})

    call, _ = sent(SPEC.start(job))

    assert call.json["parameters"]["sampleCount"] == 3


def test_imagen_extra_body_is_deep_merged() -> None:
    job = make_job({"model": IMAGEN, "prompt": "p", "size": "1024x1024",
                    "extra_body": {"parameters": {"personGeneration": "dont_allow", "includeRaiReason": True}}},
                   passthrough=("extra_body",))

    call, _ = sent(SPEC.start(job))

    assert call.json["parameters"] == {"sampleCount": 1, "aspectRatio": "1:1", "personGeneration": "dont_allow",
                                       "includeRaiReason": True}


def test_extra_body_cannot_replace_what_the_adapter_set() -> None:
    job = make_job({"model": IMAGEN, "prompt": "p", "extra_body": {"parameters": {"sampleCount": 4}}},
                   passthrough=("extra_body",))

    error = failed(started(SPEC, job))

    assert envelope(error) == (400, "invalid_request_error", "extra_body.parameters.sampleCount", "invalid_value")


def test_formats_the_api_cannot_make_are_not_asked_the_proxy_converts() -> None:
    webp = make_job({"model": IMAGEN, "prompt": "p", "output_format": "webp", "output_compression": 40})
    assert "outputOptions" not in sent(SPEC.start(webp))[0].json["parameters"]
    assert webp.plan.conversion == Conversion("webp", 40)
    jpeg = make_job({"model": IMAGEN, "prompt": "p", "output_format": "jpeg", "output_compression": 40})
    assert sent(SPEC.start(jpeg))[0].json["parameters"]["outputOptions"] == {"mimeType": "image/jpeg", "compressionQuality": 40}
    assert jpeg.plan.conversion is None
    flash = make_job({"model": FLASH, "prompt": "p", "output_format": "png"})
    assert "output_format" not in json.dumps(sent(SPEC.start(flash))[0].json) and flash.plan.conversion == Conversion("png")


@pytest.mark.parametrize(
    ("body", "passthrough", "param"),
    [
        ({"model": IMAGEN, "prompt": "p", "negative_prompt": "x"}, ("negative_prompt",), "negative_prompt"),
        ({"model": IMAGEN, "prompt": "p", "seed": 3}, ("seed",), "seed"),
        ({"model": IMAGEN, "prompt": "p", "image": PNG_B64}, ("image",), "image"),
        ({"model": FLASH, "prompt": "p", "image": "https://example.com/a.png"}, ("image",), "image"),
        ({"model": FLASH, "prompt": "p", "image": "%%%"}, ("image",), "image"),
    ],
)
def test_what_the_gemini_api_would_reject_is_a_400_naming_the_param(
    body: dict[str, Any], passthrough: tuple[str, ...], param: str
) -> None:
    error = failed(started(SPEC, make_job(body, passthrough=passthrough)))

    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)


# -- Imagen: the answer -----------------------------------------------------------------------------------


def test_imagen_predictions_become_images() -> None:
    job = make_job({"model": IMAGEN, "prompt": "p", "n": 2})
    answer = ok({"predictions": [{"bytesBase64Encoded": PNG_B64, "mimeType": "image/png"},
                                 {"bytesBase64Encoded": "QUJD", "mimeType": "image/jpeg"}]})

    step = advance(job, answer)

    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/png"),
                                             GeneratedImage(b64_json="QUJD", content_type="image/jpeg"))))


def test_imagen_fewer_predictions_than_asked_are_returned_and_reported() -> None:
    job = make_job({"model": IMAGEN, "prompt": "p", "n": 3})
    answer = ok({"predictions": [{"bytesBase64Encoded": PNG_B64, "mimeType": "image/png"},
                                 {"raiFilteredReason": "filtered: 58061214"}]})

    step = advance(job, answer)

    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/png"),),
                                     extra={"filtered_images": 2, "filtered_reasons": ["filtered: 58061214"]}))


@pytest.mark.parametrize("data", [{}, {"predictions": []}, {"predictions": [{"raiFilteredReason": "child safety"}]}])
def test_imagen_with_every_sample_filtered_is_a_moderation_error(data: dict[str, Any]) -> None:
    error = failed(advance(make_job({"model": IMAGEN, "prompt": "p"}), ok(data)))

    assert envelope(error) == (400, "image_generation_user_error", None, "moderation_blocked")


def test_imagen_answering_200_with_an_error_object_is_the_upstreams_failure_not_a_filter() -> None:
    data = {"error": {"code": 500, "status": "INTERNAL", "message": "Internal error encountered."}}
    error = failed(advance(make_job({"model": IMAGEN, "prompt": "p"}), ok(data)))
    assert envelope(error)[0] == 502 and error.retryable and "Internal error encountered." in error.message


def test_imagen_prompt_refused_with_responsible_ai_400_is_moderation() -> None:
    response = google_error(400, "INVALID_ARGUMENT", "Image generation failed with the following error: The prompt "
                            "could not be submitted. This prompt contains sensitive words that violate Google's "
                            "Responsible AI practices.")

    error = failed(advance(make_job({"model": IMAGEN, "prompt": "p"}), response))

    assert envelope(error) == (400, "image_generation_user_error", None, "moderation_blocked")


# -- Gemini: the request ----------------------------------------------------------------------------------


def test_gemini_call_is_exact() -> None:
    job = make_job({"model": FLASH, "prompt": "a cat in a hat", "size": "1536x1024", "quality": "high"})

    call, _ = sent(SPEC.start(job))

    assert (call.method, call.url) == ("POST", f"{BASE}/models/{FLASH}:generateContent")
    assert dict(call.headers) == {"x-goog-api-key": KEY, "Content-Type": "application/json"}
    assert call.json == {
        "contents": [{"role": "user", "parts": [{"text": "a cat in a hat"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "3:2"}},
    }


@pytest.mark.parametrize(
    ("size", "image_config"),
    [("1024x1024", {"aspectRatio": "1:1"}), ("1280x1024", {"aspectRatio": "5:4"}), ("1680x720", {"aspectRatio": "21:9"}),
     ("2048x2048", {"aspectRatio": "1:1", "imageSize": "2K"}), ("4096x2304", {"aspectRatio": "16:9", "imageSize": "4K"}),
     ("1344x768", {"aspectRatio": "16:9"})],
)
def test_gemini_size_becomes_ratio_and_tier(size: str, image_config: dict[str, str]) -> None:
    call, _ = sent(SPEC.start(make_job({"model": FLASH, "prompt": "p", "size": size})))

    assert call.json["generationConfig"]["imageConfig"] == image_config


def test_gemini_aspect_ratio_wins_and_images_go_inline_without_the_data_prefix() -> None:
    jpeg_b64 = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(20)).decode()
    job = make_job({"model": "nano-banana", "prompt": "blend these", "size": "1024x1024", "aspect_ratio": "9:16",
                    "image": [f"data:image/png;base64,{PNG_B64}", jpeg_b64]},
                   passthrough=("aspect_ratio", "image"), upstream=FLASH, settings={"response_modalities": ["IMAGE"]})

    call, _ = sent(SPEC.start(job))

    assert call.url == f"{BASE}/models/{FLASH}:generateContent"
    assert call.json == {
        "contents": [{"role": "user", "parts": [
            {"text": "blend these"},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            {"inlineData": {"mimeType": "image/jpeg", "data": jpeg_b64}},
        ]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "9:16"}},
    }


def test_response_modalities_without_image_are_refused_when_the_rules_load() -> None:
    _, problems = parse_settings({"response_modalities": ["TEXT"]}, SPEC.schema.settings, SPEC.schema.relations)
    assert problems == [("response_modalities", "must include IMAGE, got ['TEXT']")]


# -- Gemini: the answer -----------------------------------------------------------------------------------


def test_gemini_image_parts_become_images_with_text_as_revised_prompt_and_usage() -> None:
    answer = ok({
        "candidates": [candidate(
            {"text": "Thinking about hats", "thought": True},
            {"inlineData": {"mimeType": "image/png", "data": "RFJBRlQ="}, "thought": True},
            {"text": "Here is a cat wearing a hat."},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
        )],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "thoughtsTokenCount": 100,
                          "totalTokenCount": 1402,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]},
        "modelVersion": FLASH,
    })

    step = advance(make_job({"model": FLASH, "prompt": "p"}), answer)

    assert step == Done(ImagesResult(
        images=(GeneratedImage(b64_json=PNG_B64, content_type="image/png", revised_prompt="Here is a cat wearing a hat."),),
        usage={"input_tokens": 12, "output_tokens": 1390, "total_tokens": 1402,
               "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}},
    ))


def test_gemini_snake_case_inline_data_is_read_too() -> None:
    answer = ok({"candidates": [candidate({"inline_data": {"mime_type": "image/png", "data": PNG_B64}})]})

    step = advance(make_job({"model": FLASH, "prompt": "p"}), answer)

    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/png"),)))


@pytest.mark.parametrize(
    "data",
    [
        {"candidates": [candidate(finish="IMAGE_SAFETY")]},
        {"candidates": [{"finishReason": "PROHIBITED_CONTENT"}]},
        {"candidates": [candidate({"text": "I can't draw that."}, finish="SAFETY")]},
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 5}},
        {"promptFeedback": {"blockReason": "OTHER"}},
    ],
)
def test_gemini_moderation_inside_a_200_is_a_content_policy_violation(data: dict[str, Any]) -> None:
    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), ok(data)))

    assert envelope(error) == (400, "image_generation_user_error", None, "moderation_blocked")


@pytest.mark.parametrize(
    "response",
    [
        ok({"candidates": [candidate({"text": "Sure! What style would you like?"})]}),
        ok({"candidates": []}),
        ok([1, 2]),
        UpstreamResponse(200, JSON_HEADERS, b"<html>"),
    ],
)
def test_gemini_200_without_an_image_is_a_bad_gateway(response: UpstreamResponse) -> None:
    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), response))

    assert envelope(error) == (502, "upstream_error", None, "bad_upstream_response")


def test_gemini_text_only_answer_tells_what_the_model_said() -> None:
    response = ok({"candidates": [candidate({"text": "Sure! What style would you like?"})]})

    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), response))

    assert "finishReason STOP" in error.message and "What style would you like?" in error.message


# -- errors -----------------------------------------------------------------------------------------------


def test_resource_exhausted_is_a_retryable_rate_limit_with_retry_info() -> None:
    response = google_error(
        429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "GenerateRequestsPerMinute"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"},
    )

    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), response))

    assert envelope(error) == (429, "rate_limit_exceeded", None, "resource_exhausted")
    assert error.retryable and error.retry_after == 13.0
    assert error.headers() == {"Retry-After": "13"}


@pytest.mark.parametrize("delay", ["infs", "1e400s", "99999999s", "-5s"])
def test_a_retry_delay_no_client_could_honour_is_no_retry_after(delay: str) -> None:
    response = google_error(429, "RESOURCE_EXHAUSTED", "quota",
                            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), response))
    assert envelope(error)[0] == 429 and error.retry_after is None and error.headers() == {}


def test_billing_precondition_is_a_400_that_is_not_retried() -> None:
    response = google_error(400, "FAILED_PRECONDITION", "Gemini API free tier is not available in your country. "
                            "Please enable billing on your project in Google AI Studio.")

    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), response))

    assert envelope(error) == (400, "invalid_request_error", None, "failed_precondition")
    assert not error.retryable and "enable billing" in error.message


def test_invalid_key_is_the_channels_problem_and_never_echoes_the_key() -> None:
    response = google_error(
        400, "INVALID_ARGUMENT", f"API key not valid. Please pass a valid API key. ({KEY})",
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"},
    )

    error = failed(advance(make_job({"model": FLASH, "prompt": "p"}), response))

    assert envelope(error) == (502, "upstream_error", None, "upstream_auth_failed")
    assert KEY not in error.message and "API key not valid" in error.message


@pytest.mark.parametrize(
    ("status", "name", "expected", "retryable"),
    [
        (400, "INVALID_ARGUMENT", (400, "invalid_request_error", None, "invalid_argument"), False),
        (404, "NOT_FOUND", (404, "invalid_request_error", None, "not_found"), False),
        (403, "PERMISSION_DENIED", (502, "upstream_error", None, "upstream_auth_failed"), True),
        (500, "INTERNAL", (502, "upstream_error", None, "upstream_error"), True),
        (503, "UNAVAILABLE", (503, "server_error", None, "upstream_unavailable"), True),
    ],
)
def test_google_errors_keep_their_meaning(status: int, name: str, expected: tuple[Any, ...], retryable: bool) -> None:
    error = failed(advance(make_job({"model": IMAGEN, "prompt": "p"}), google_error(status, name, "the reason")))

    assert envelope(error) == expected
    assert error.retryable is retryable
    assert "the reason" in error.message
