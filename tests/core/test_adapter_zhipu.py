"""Core tests: the Zhipu CogView adapter, from a real client body to the exact upstream call and back."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Fail, UpstreamResponse
from proxy.adapters.zhipu import SPEC, map_size
from proxy.core.errors import (
    BadGateway,
    ContentPolicyViolation,
    InvalidRequest,
    NotFound,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
)
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import advance_error, answer, start_call, started

KEY = "zhipu-secret-0123456789"
BASE = "https://open.bigmodel.cn/api/paas/v4"
URL = f"{BASE}/images/generations"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
SIZES = ("1024x1024", "768x1344", "864x1152", "1344x768", "1152x864", "1440x720", "720x1440")


make_job = partial(factories.make_job, spec=SPEC, finished=False,
                   channel="zhipu", base_url=BASE, api_key=KEY, sizes=SIZES, max_n=4,
                   passthrough=frozenset({"watermark", "user", "extra_body"}))


sent_call = partial(start_call, SPEC)


failure = partial(advance_error, SPEC, secrets=(KEY,))


def test_spec_declares_no_native_n() -> None:
    assert SPEC.name == "zhipu"
    assert SPEC.max_n_per_call == 1
    assert frozenset(SPEC.schema.settings) == frozenset({"quality_models"})


def test_success_round_trip() -> None:
    job = make_job({"model": "cogview-4-250304", "prompt": "a red fox", "size": "1344x768", "quality": "hd", "n": 1})
    assert sent_call(job) == Call(
        "POST", URL, headers=HEADERS,
        json={"model": "cogview-4-250304", "prompt": "a red fox", "size": "1344x768", "quality": "hd"},
    )
    upstream = {
        "created": 1703485556,
        "data": [{"url": "https://sfile.chatglm.cn/testpath/1.png"}],
        "content_filter": [{"role": "assistant", "level": 3}],
    }
    assert SPEC.advance(job, None, answer(200, upstream)) == Done(ImagesResult(
        images=(GeneratedImage(url="https://sfile.chatglm.cn/testpath/1.png"),),
        created=1703485556,
        extra={"content_filter": [{"role": "assistant", "level": 3}]},
    ))


def test_watermark_is_tri_state() -> None:
    base = {"model": "cogview-4", "prompt": "a cat"}
    absent = sent_call(make_job(base)).json
    off = sent_call(make_job({**base, "watermark": False})).json
    on = sent_call(make_job({**base, "watermark": True})).json
    assert absent == {"model": "cogview-4", "prompt": "a cat"}
    assert off == {"model": "cogview-4", "prompt": "a cat", "watermark_enabled": False}
    assert on == {"model": "cogview-4", "prompt": "a cat", "watermark_enabled": True}


def test_watermark_not_passed_through_never_reaches_zhipu() -> None:
    job = make_job({"model": "cogview-4", "prompt": "a cat", "watermark": False}, passthrough=frozenset())
    assert sent_call(job).json == {"model": "cogview-4", "prompt": "a cat"}
    assert job.plan.ignored == ("watermark",)


def test_quality_is_mapped_and_only_sent_where_accepted() -> None:
    body = {"prompt": "a cat", "quality": "high"}
    assert sent_call(make_job({**body, "model": "cogview-4-250304"})).json["quality"] == "hd"
    assert "quality" not in sent_call(make_job({**body, "model": "cogview-3-flash"})).json
    assert "quality" not in sent_call(make_job({**body, "model": "cogview-4-250304", "quality": "auto"})).json
    configured = make_job({**body, "model": "cogview-4", "quality": "medium"}, settings={"quality_models": ["cogview-4"]})
    assert sent_call(configured).json["quality"] == "standard"


def test_unknown_quality_is_a_client_error() -> None:
    step = started(SPEC, make_job({"model": "cogview-4-250304", "prompt": "a cat", "quality": "ultra"}))
    assert isinstance(step, Fail)
    assert isinstance(step.error, InvalidRequest)
    assert (step.error.status, step.error.param, step.error.code) == (400, "quality", "invalid_value")


def test_sizes_the_rules_accept_map_to_the_nearest_supported_size() -> None:
    # Rules that accept any WxH: OpenAI's sizes still reach CogView as sizes it takes.
    def sent_size(model: str, size: str) -> Any:
        return sent_call(make_job({"model": model, "prompt": "p", "size": size}, sizes=None)).json["size"]

    assert sent_size("cogview-3-flash", "1792x1024") == "1344x768"
    assert sent_size("cogview-3-flash", "1024x1792") == "768x1344"
    assert sent_size("cogview-3-flash", "1536x1024") == "1152x864"
    assert sent_size("cogview-3-flash", "512x512") == "1024x1024"
    assert sent_size("cogview-3-flash", "auto") == "1024x1024"
    # cogview-4 takes a custom size inside its documented limits, and is snapped when outside them.
    assert sent_size("cogview-4", "1280x720") == "1280x720"
    assert sent_size("cogview-4", "2048x2048") == "1024x1024"
    assert sent_size("cogview-4", "1000x1000") == "1024x1024"


def test_every_recommended_size_is_kept() -> None:
    assert [map_size(size, "cogview-3-flash") for size in SIZES] == list(SIZES)


def test_user_becomes_user_id_and_extra_body_is_merged_verbatim() -> None:
    job = make_job({
        "model": "cogview-4", "prompt": "a cat", "user": "user-123456",
        "extra_body": {"request_id": "r-1", "size": "720x1440"},
    }, upstream="cogview-4-250304")
    assert sent_call(job).json == {
        "model": "cogview-4-250304", "prompt": "a cat", "user_id": "user-123456", "request_id": "r-1", "size": "720x1440",
    }


def test_short_user_is_a_client_error() -> None:
    step = started(SPEC, make_job({"model": "cogview-4", "prompt": "a cat", "user": "bob"}))
    assert isinstance(step, Fail)
    assert (step.error.status, step.error.param) == (400, "user")


def test_moderation_code_1301() -> None:
    job = make_job({"model": "cogview-4", "prompt": "p"})
    error = failure(job, answer(400, {"error": {"code": "1301", "message": "系统检测到输入或生成内容可能包含不安全或敏感内容"}}))
    assert isinstance(error, ContentPolicyViolation)
    assert (error.status, error.type, error.code, error.param) == (400, "image_generation_user_error", "moderation_blocked", None)
    assert "1301" in error.message


def test_arrears_429_is_billing_not_a_retryable_rate_limit() -> None:
    job = make_job({"model": "cogview-4", "prompt": "p"})
    arrears = {"error": {"code": "1113", "message": "您的账户已欠费，请充值后重试"}}
    error = failure(job, answer(429, arrears, {"retry-after": "5"}))
    assert isinstance(error, RateLimited)
    assert (error.status, error.type, error.code) == (429, "insufficient_quota", "insufficient_quota")
    assert error.retryable is False
    assert error.retry_after is None
    assert error.headers() == {}


def test_concurrency_429_is_a_retryable_rate_limit() -> None:
    job = make_job({"model": "cogview-4", "prompt": "p"})
    error = failure(job, answer(429, {"error": {"code": 1302, "message": "并发数过高"}}, {"retry-after": "3"}))
    assert isinstance(error, RateLimited)
    assert (error.status, error.type, error.code) == (429, "rate_limit_exceeded", "rate_limit_exceeded")
    assert error.retryable is True
    assert error.headers() == {"Retry-After": "3"}


@pytest.mark.parametrize(
    ("status", "code", "kind", "expected"),
    [
        (400, "1211", NotFound, (404, "model_not_found", "model", False)),
        (429, "1312", ServiceUnavailable, (503, "upstream_unavailable", None, True)),
        (429, "1112", BadGateway, (502, "upstream_auth_failed", None, True)),
        (401, "1002", BadGateway, (502, "upstream_auth_failed", None, True)),
        (500, "500", BadGateway, (502, "upstream_error", None, True)),
    ],
)
def test_other_business_codes(status: int, code: str, kind: type[ProxyError], expected: tuple[Any, ...]) -> None:
    job = make_job({"model": "cogview-4", "prompt": "p"})
    error = failure(job, answer(status, {"error": {"code": code, "message": f"failure with {KEY}"}}))
    assert isinstance(error, kind)
    assert (error.status, error.code, error.param, error.retryable) == expected


def test_param_error_keeps_status_and_message_without_the_key() -> None:
    job = make_job({"model": "cogview-4", "prompt": "p"})
    error = failure(job, answer(400, {"error": {"code": "1214", "message": f"size参数非法 {KEY}"}}))
    assert (error.status, error.code, error.type) == (400, "1214", "invalid_request_error")
    assert error.message.startswith("size参数非法 ")


def test_a_200_without_images_is_a_bad_gateway() -> None:
    job = make_job({"model": "cogview-4", "prompt": "p"})
    error = failure(job, answer(200, {"created": 1, "data": [], "content_filter": [{"role": "assistant", "level": 0}]}))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code) == (502, "bad_upstream_response")
    not_json = failure(job, UpstreamResponse(200, {}, b"<html>"))
    assert not_json.code == "bad_upstream_response"
