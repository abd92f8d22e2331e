"""Golden tests of the Azure OpenAI adapter: client body -> upstream call -> canned answer -> result or error."""

from __future__ import annotations

import base64
import datetime
from dataclasses import replace
from functools import partial

import pytest

from proxy.adapters.azure import DEFAULT_API_VERSION, SPEC
from proxy.adapters.base import Call, Done, Fail, Send
from proxy.core.errors import BadGateway, ContentPolicyViolation, InvalidRequest, RateLimited, UpstreamError
from proxy.core.formats import Conversion
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import advance_error, start_call, started
from tests.fakes.png import encode_png

KEY = "azure-secret-key-0123456789"
ROOT = "https://contoso.openai.azure.com"
PNG_B64 = base64.b64encode(encode_png(1, 1, [b"\x01\x02\x03"])).decode("ascii")
JSON_HEADERS = {"api-key": KEY, "Content-Type": "application/json"}


make_job = partial(factories.make_job, spec=SPEC, channel="azure", base_url=ROOT, api_key=KEY)


sent = partial(start_call, SPEC)


answer = partial(factories.answer, content_type="application/json")


failed = partial(advance_error, SPEC, secrets=(KEY,))


# --- the call -------------------------------------------------------------------------------------------


def test_deployment_form_uses_the_upstream_model_and_the_default_api_version() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "a red fox", "size": "1024x1024", "quality": "high", "n": 2})
    assert SPEC.start(job) == Send(
        Call(
            "POST",
            f"{ROOT}/openai/deployments/gpt-image-1/images/generations?api-version=2025-04-01-preview",
            headers=JSON_HEADERS,
            json={"prompt": "a red fox", "n": 2, "size": "1024x1024", "quality": "high"},
        )
    )
    assert DEFAULT_API_VERSION == "2025-04-01-preview"


def test_deployment_and_api_version_settings_win_and_the_deployment_is_quoted() -> None:
    job = make_job(
        {"model": "dall-e-3", "prompt": "a lighthouse"},
        base_url=f"{ROOT}/openai",
        settings={"deployment": "prod images/1", "api_version": "2024-10-21"},
    )
    call = sent(job)
    assert call.url == f"{ROOT}/openai/deployments/prod%20images%2F1/images/generations?api-version=2024-10-21"
    assert call.json == {"prompt": "a lighthouse", "n": 1}


def test_v1_form_is_detected_from_the_base_url_and_names_the_deployment_as_model() -> None:
    job = make_job(
        {"model": "gpt-image-1-mini", "prompt": "a cat", "quality": "low"},
        base_url=f"{ROOT}/openai/v1",
        upstream_model="mini-deployment",
    )
    assert sent(job) == Call(
        "POST",
        f"{ROOT}/openai/v1/images/generations",
        headers=JSON_HEADERS,
        json={"model": "mini-deployment", "prompt": "a cat", "n": 1, "quality": "low"},
    )


def test_v1_form_by_setting_with_an_optional_api_version() -> None:
    job = make_job(
        {"model": "gpt-image-1", "prompt": "a cat"},
        settings={"api_style": "v1", "api_version": "preview", "deployment": "img"},
    )
    call = sent(job)
    assert call.url == f"{ROOT}/openai/v1/images/generations?api-version=preview"
    assert call.json == {"model": "img", "prompt": "a cat", "n": 1}


def test_deployment_style_setting_overrides_a_v1_base_url() -> None:
    job = make_job(
        {"model": "gpt-image-1", "prompt": "a cat"}, base_url=f"{ROOT}/openai/v1", settings={"api_style": "deployment"}
    )
    assert sent(job).url == f"{ROOT}/openai/deployments/gpt-image-1/images/generations?api-version={DEFAULT_API_VERSION}"


def test_absent_fields_stay_absent_and_unlisted_fields_are_not_forwarded() -> None:
    job = make_job(
        {"model": "gpt-image-1", "prompt": "p", "user": "u-1", "moderation": "low"},
        passthrough=frozenset({"background", "moderation", "output_compression"}),
    )
    assert sent(job).json == {"prompt": "p", "n": 1, "moderation": "low"}
    assert job.plan.ignored == ("user",)


def test_forwarded_fields_go_verbatim_jpg_is_spelled_jpeg_and_extra_body_adds_keys() -> None:
    job = make_job(
        {
            "model": "gpt-image-1",
            "prompt": "p",
            "background": "opaque",
            "output_format": "jpg",
            "output_compression": 80,
            "extra_body": {"partial_images": 0},
            "quality": "high",
        },
        passthrough=frozenset({"background", "output_format", "output_compression", "extra_body"}),
    )
    assert sent(job).json == {
        "prompt": "p",
        "n": 1,
        "background": "opaque",
        "output_format": "jpeg",
        "output_compression": 80,
        "quality": "high",
        "partial_images": 0,
    }


def test_extra_body_cannot_replace_a_validated_field() -> None:
    job = make_job(
        {"model": "gpt-image-1", "prompt": "p", "quality": "high", "extra_body": {"quality": "medium"}},
        passthrough=frozenset({"extra_body"}),
    )
    with pytest.raises(InvalidRequest) as caught:
        SPEC.start(job)
    assert caught.value.param == "extra_body.quality"


def test_webp_is_not_asked_of_azure_the_proxy_converts_its_png() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p", "output_format": "webp", "output_compression": 60})
    assert "output_format" not in sent(job).json and "output_compression" not in sent(job).json
    assert job.plan.conversion == Conversion("webp", 60)
    jpeg = make_job({"model": "gpt-image-1", "prompt": "p", "output_format": "jpeg", "output_compression": 60})
    assert (sent(jpeg).json["output_format"], sent(jpeg).json["output_compression"], jpeg.plan.conversion) == ("jpeg", 60, None)
    dall_e = make_job({"model": "dall-e-3", "prompt": "p", "output_format": "jpeg"})
    assert "output_format" not in sent(dall_e).json and dall_e.plan.conversion == Conversion("jpeg")


@pytest.mark.parametrize("fmt", ["webp", "gif", "svg"])
def test_output_formats_azure_lacks_are_a_400_without_a_round_trip(fmt: str) -> None:
    # The shell never asks Azure for these (the proxy converts); the adapter still refuses them if handed one.
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    job = replace(job, plan=replace(job.plan, fields={**job.plan.fields, "output_format": fmt}))
    step = started(SPEC, job)
    assert isinstance(step, Fail)
    error = step.error
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.type, error.param, error.code) == (400, "invalid_request_error", "output_format", "invalid_value")
    assert fmt in error.message and "png and jpeg" in error.message


def test_no_key_sends_no_api_key_header() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"}, api_key=None)
    assert sent(job).headers == {"Content-Type": "application/json"}


def test_auth_headers_for_pass_through() -> None:
    assert SPEC.auth_headers is not None
    assert SPEC.auth_headers(KEY) == {"api-key": KEY}
    assert SPEC.auth_headers(None) == {}
    assert SPEC.max_n_per_call is None


# --- the answer -----------------------------------------------------------------------------------------


def test_success_keeps_images_usage_and_response_level_fields() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p", "n": 2})
    usage = {"input_tokens": 10, "output_tokens": 544, "total_tokens": 554}
    body = {
        "created": 1_760_000_000,
        "data": [{"b64_json": PNG_B64}, {"b64_json": PNG_B64}],
        "output_format": "png",
        "quality": "high",
        "size": "1024x1024",
        "background": "opaque",
        "usage": usage,
    }
    assert SPEC.advance(job, None, answer(200, body)) == Done(
        ImagesResult(
            images=(GeneratedImage(b64_json=PNG_B64), GeneratedImage(b64_json=PNG_B64)),
            created=1_760_000_000,
            usage=usage,
            extra={"background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024"},
        )
    )


def test_dalle3_url_answer_keeps_the_revised_prompt() -> None:
    job = make_job({"model": "dall-e-3", "prompt": "p"})
    url = "https://dalleprodsec.blob.core.windows.net/private/images/1.png?se=2026-01-01"
    item = {"url": url, "revised_prompt": "A detailed p", "content_filter_results": {"sexual": {"filtered": False}}}
    step = SPEC.advance(job, None, answer(200, {"created": 1, "data": [item]}))
    assert step == Done(ImagesResult(images=(GeneratedImage(url=url, revised_prompt="A detailed p"),), created=1))


def test_a_200_without_images_is_a_bad_gateway() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    error = failed(job, answer(200, {"created": 1, "data": []}))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code) == (502, "bad_upstream_response")


def test_a_200_carrying_the_old_content_filter_error_is_moderation() -> None:
    job = make_job({"model": "dall-e-3", "prompt": "p"})
    body = {
        "created": 1,
        "error": {"code": "contentFilter", "message": "Generated image was filtered as a result of content management policy."},
    }
    error = failed(job, answer(200, body))
    assert isinstance(error, ContentPolicyViolation)
    assert (error.status, error.type, error.code) == (400, "image_generation_user_error", "content_policy_violation")
    assert error.message == "Generated image was filtered as a result of content management policy."


def test_content_policy_400_with_inner_error_is_moderation_naming_the_categories() -> None:
    job = make_job({"model": "dall-e-3", "prompt": "p"})
    body = {
        "error": {
            "code": "content_policy_violation",
            "message": "Your request was rejected as a result of our safety system.",
            "type": "invalid_request_error",
            "inner_error": {
                "code": "ResponsibleAIPolicyViolation",
                "revised_prompt": "p",
                "content_filter_results": {
                    "hate": {"filtered": False, "severity": "safe"},
                    "violence": {"filtered": True, "severity": "high"},
                    "sexual": {"filtered": True, "severity": "medium"},
                },
            },
        }
    }
    error = failed(job, answer(400, body))
    assert isinstance(error, ContentPolicyViolation)
    assert error.envelope() == {
        "error": {
            "message": "Your request was rejected as a result of our safety system. (filtered: sexual, violence)",
            "type": "image_generation_user_error",
            "param": None,
            "code": "content_policy_violation",
        }
    }


def test_chat_style_content_filter_error_is_moderation() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"self_harm": {"filtered": True}}},
        }
    }
    error = failed(job, answer(400, body))
    assert isinstance(error, ContentPolicyViolation)
    assert error.message.endswith("(filtered: self_harm)")


def test_gpt_image_moderation_blocked_keeps_its_code() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    body = {
        "error": {
            "code": "moderation_blocked",
            "message": "Your request was rejected by the safety system.",
            "type": "image_generation_user_error",
        }
    }
    error = failed(job, answer(400, body))
    assert isinstance(error, ContentPolicyViolation)
    assert error.code == "moderation_blocked"


def test_429_keeps_retry_after_ms() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    body = {"error": {"code": "429", "message": "Requests to the Images_Generations Operation have exceeded call rate limit."}}
    error = failed(job, answer(429, body, {"retry-after-ms": "1500", "retry-after": "2"}))
    assert isinstance(error, RateLimited)
    assert (error.status, error.retryable, error.retry_after) == (429, True, 1.5)
    assert error.headers() == {"Retry-After": "2"}


def test_401_is_the_channels_problem_and_the_key_is_scrubbed() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    body = {"error": {"code": "401", "message": f"Access denied due to invalid subscription key {KEY}."}}
    error = failed(job, answer(401, body))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_auth_failed", True)
    assert "***" in error.message


def test_deployment_not_found_is_a_retryable_bad_gateway() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    body = {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}
    error = failed(job, answer(404, body))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_deployment_not_found", True)
    assert "does not exist" in error.message


def test_other_400s_keep_their_meaning() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    body = {"error": {"code": "invalid_value", "message": "Invalid size.", "type": "invalid_request_error", "param": "size"}}
    error = failed(job, answer(400, body))
    assert isinstance(error, UpstreamError)
    assert error.envelope()["error"] == {
        "message": "Invalid size.",
        "type": "invalid_request_error",
        "param": "size",
        "code": "invalid_value",
    }
    assert error.status == 400


def test_5xx_is_a_retryable_bad_gateway() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"})
    error = failed(
        job, answer(500, {"error": {"code": "InternalServerError", "message": "Backend returned unexpected response."}})
    )
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_error", True)


def test_an_unquoted_yaml_date_api_version_is_used_as_written() -> None:
    job = make_job({"model": "gpt-image-1", "prompt": "p"}, settings={"api_version": datetime.date(2024, 10, 21)})
    assert sent(job).url == f"{ROOT}/openai/deployments/gpt-image-1/images/generations?api-version=2024-10-21"
