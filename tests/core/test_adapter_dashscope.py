"""Core tests: the DashScope adapter, tasks (create, poll, results) and the synchronous multimodal endpoint."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, UpstreamResponse, Wait
from proxy.adapters.dashscope import SPEC, Task, is_sync, map_size
from proxy.core.errors import BadGateway, ContentPolicyViolation, InvalidRequest, RateLimited, UpstreamError
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import advance_error_from, answer, start_call

KEY = "sk-dashscope-0123456789abcdef"
BASE = "https://dashscope.aliyuncs.com/api/v1"
TASK_URL = f"{BASE}/services/aigc/text2image/image-synthesis"
SYNC_URL = f"{BASE}/services/aigc/multimodal-generation/generation"
ASYNC_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", "X-DashScope-Async": "enable"}
SYNC_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
POLL = Call("GET", f"{BASE}/tasks/t-1", headers={"Authorization": f"Bearer {KEY}"})
TTL = 86400.0


make_job = partial(
    factories.make_job, channel="dashscope", base_url=BASE, api_key=KEY, max_n=4,
    passthrough=frozenset({"negative_prompt", "seed", "watermark", "prompt_extend", "image", "extra_body"}),
)


def task(status: str, **more: Any) -> UpstreamResponse:
    return answer(200, {"request_id": "r-1", "output": {"task_id": "t-1", "task_status": status, **more}})


sent = partial(start_call, SPEC)


failure = partial(advance_error_from, SPEC, secrets=(KEY,))


def test_spec() -> None:
    assert SPEC.name == "dashscope"
    assert SPEC.max_n_per_call == 4
    assert frozenset(SPEC.schema.settings) == frozenset({"sync_models", "poll_interval", "max_poll_interval"})


def test_the_whole_task_from_create_to_images() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "a red fox", "size": "1024x1024", "n": 2, "quality": "hd"})
    assert sent(job) == Call("POST", TASK_URL, headers=ASYNC_HEADERS, json={
        "model": "wanx2.1-t2i-turbo", "input": {"prompt": "a red fox"}, "parameters": {"size": "1024*1024", "n": 2},
    })
    step = SPEC.advance(job, None, task("PENDING"))
    assert step == Wait(1.0, POLL, Task("t-1", polls=1))
    waits = [step.seconds]
    for status in ("PENDING", "RUNNING", "RUNNING", "RUNNING"):
        assert isinstance(step, Wait) and step.call == POLL
        step = SPEC.advance(job, step.state, task(status))
        assert isinstance(step, Wait)
        waits.append(step.seconds)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    results = [
        {"orig_prompt": "a red fox", "actual_prompt": "A red fox in snow", "url": "https://oss/1.png"},
        {"orig_prompt": "a red fox", "actual_prompt": "A red fox at dusk", "url": "https://oss/2.png"},
    ]
    done = SPEC.advance(job, step.state, answer(200, {
        "request_id": "r-2",
        "output": {"task_id": "t-1", "task_status": "SUCCEEDED", "results": results,
                   "task_metrics": {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}},
        "usage": {"image_count": 2},
    }))
    assert done == Done(ImagesResult(
        images=(GeneratedImage(url="https://oss/1.png", revised_prompt="A red fox in snow", url_ttl=TTL),
                GeneratedImage(url="https://oss/2.png", revised_prompt="A red fox at dusk", url_ttl=TTL)),
        usage={"image_count": 2},
    ))


def test_n_is_always_explicit_and_fields_land_where_dashscope_wants_them() -> None:
    job = make_job({"model": "wan2.2-t2i-flash", "prompt": "p", "negative_prompt": "blur", "seed": 42, "watermark": False,
                    "prompt_extend": False, "extra_body": {"parameters": {"prompt_extend": True}}})
    assert sent(job).json == {
        "model": "wan2.2-t2i-flash",
        "input": {"prompt": "p", "negative_prompt": "blur"},
        "parameters": {"n": 1, "seed": 42, "watermark": False, "prompt_extend": True},
    }
    assert "seed" not in sent(make_job({"model": "wanx2.1-t2i-plus", "prompt": "p", "seed": -1})).json["parameters"]
    with pytest.raises(InvalidRequest) as refused:
        SPEC.start(make_job({"model": "wanx2.1-t2i-plus", "prompt": "p", "seed": 2**31}))
    assert refused.value.param == "seed"


def test_watermark_is_tri_state() -> None:
    base = {"model": "wanx2.1-t2i-turbo", "prompt": "p"}
    assert "watermark" not in sent(make_job(base)).json["parameters"]
    assert sent(make_job({**base, "watermark": True})).json["parameters"]["watermark"] is True


def test_task_models_take_no_image() -> None:
    with pytest.raises(InvalidRequest) as refused:
        SPEC.start(make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p", "image": "https://x/y.png"}))
    assert refused.value.param == "image"


def test_sizes() -> None:
    assert map_size("1024x1024", "wanx2.1-t2i-turbo") == "1024*1024"
    assert map_size("1792x1024", "wanx2.1-t2i-turbo") == "1440*823"
    assert map_size("2048x2048", "wan2.2-t2i-plus") == "1440*1440"
    assert map_size("256x256", "wanx2.1-t2i-plus") == "512*512"
    assert map_size("4000x500", "wanx2.1-t2i-plus") == "1440*512"
    assert map_size("1024x1024", "qwen-image") == "1328*1328"
    assert map_size("1536x1024", "qwen-image-plus") == "1472*1140"
    assert map_size("1792x1024", "qwen-image") == "1664*928"
    assert map_size("1024x1536", "qwen-image-max") == "1104*1472"
    assert map_size("1024x1024", "wan2.6-t2i") == "1280*1280"
    assert map_size("1440x1440", "wan2.6-t2i") == "1440*1440"
    assert map_size("777x555", "some-future-model") == "777*555"
    assert map_size("auto", "wanx2.1-t2i-turbo") is None
    assert "size" not in sent(make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p", "size": "auto"})).json["parameters"]


def test_sync_models_use_the_multimodal_endpoint_without_the_async_header() -> None:
    job = make_job({"model": "qwen-image-plus", "prompt": "a poster", "size": "1024x1024", "negative_prompt": "blur"})
    assert is_sync(job)
    assert sent(job) == Call("POST", SYNC_URL, headers=SYNC_HEADERS, json={
        "model": "qwen-image-plus",
        "input": {"messages": [{"role": "user", "content": [{"text": "a poster"}]}]},
        "parameters": {"size": "1328*1328", "n": 1, "negative_prompt": "blur"},
    })
    upstream = {
        "request_id": "r-1",
        "output": {"choices": [{"finish_reason": "stop",
                                "message": {"role": "assistant", "content": [{"image": "https://oss/q.png"}]}}],
                   "task_metric": {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}},
        "usage": {"width": 1328, "height": 1328, "image_count": 1},
    }
    assert SPEC.advance(job, None, answer(200, upstream)) == Done(ImagesResult(
        images=(GeneratedImage(url="https://oss/q.png", url_ttl=TTL),),
        usage={"width": 1328, "height": 1328, "image_count": 1},
    ))
    assert is_sync(make_job({"model": "qwen-image-max-2025-12-30", "prompt": "p"}))
    assert not is_sync(make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"}))
    assert not is_sync(make_job({"model": "qwen-image", "prompt": "p"}, settings={"sync_models": ["qwen-image-max"]}))
    assert sent(make_job({"model": "qwen-image", "prompt": "p"}, settings={"sync_models": []})).url == TASK_URL


def test_sync_images_become_content_items() -> None:
    raw = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()
    job = make_job({"model": "qwen-image-edit", "prompt": "make it blue", "image": ["https://x/a.png", raw]},
                   settings={"sync_models": ["qwen-image-edit"]})
    content = sent(job).json["input"]["messages"][0]["content"]
    assert content == [{"image": "https://x/a.png"}, {"image": f"data:image/png;base64,{raw}"}, {"text": "make it blue"}]
    with pytest.raises(InvalidRequest) as bad:
        SPEC.start(make_job({"model": "qwen-image-edit", "prompt": "p", "image": "bm90IGFuIGltYWdl"},
                            settings={"sync_models": ["qwen-image-edit"]}))
    assert bad.value.param == "image"


def test_qwen_image_makes_one_image_per_call() -> None:
    with pytest.raises(InvalidRequest) as refused:
        SPEC.start(make_job({"model": "qwen-image", "prompt": "p", "n": 2}))
    assert refused.value.param == "n"


def test_partial_success_lists_the_failures() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p", "n": 2})
    results = [{"url": "https://oss/1.png", "actual_prompt": "x"}, {"code": "DataInspectionFailed", "message": "unsafe output"}]
    step = SPEC.advance(job, Task("t-1", polls=2), task("SUCCEEDED", results=results))
    assert isinstance(step, Done)
    assert step.result.images == (GeneratedImage(url="https://oss/1.png", revised_prompt="x", url_ttl=TTL),)
    assert step.result.extra == {"failed_images": [{"index": 1, "code": "DataInspectionFailed", "message": "unsafe output"}]}


def test_all_results_failed_is_the_first_items_error() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"})
    results = [{"code": "DataInspectionFailed", "message": "unsafe"}]
    assert isinstance(failure(job, Task("t-1"), task("SUCCEEDED", results=results)), ContentPolicyViolation)
    error = failure(job, Task("t-1"), task("SUCCEEDED", results=[]))
    assert error.code == "bad_upstream_response"


def test_failed_canceled_and_unknown_tasks() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"})
    internal = failure(job, Task("t-1"), task("FAILED", code="InternalError.Algo", message="algo failed"))
    assert isinstance(internal, BadGateway)
    assert (internal.code, internal.retryable) == ("upstream_task_failed", False)
    assert "algo failed" in internal.message
    moderated = failure(job, Task("t-1"), task("FAILED", code="DataInspectionFailed", message="input unsafe"))
    assert isinstance(moderated, ContentPolicyViolation)
    invalid = failure(job, Task("t-1"), task("FAILED", code="InvalidParameter", message="size invalid"))
    assert isinstance(invalid, UpstreamError) and (invalid.status, invalid.code) == (400, "InvalidParameter")
    canceled = failure(job, Task("t-1"), task("CANCELED"))
    assert (canceled.code, canceled.retryable) == ("upstream_task_canceled", False)
    unknown = failure(job, Task("t-1"), task("UNKNOWN"))
    assert (unknown.status, unknown.code, unknown.retryable) == (502, "upstream_task_lost", False)


def test_create_errors() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"})
    moderated = failure(job, None, answer(400, {"request_id": "r", "code": "DataInspectionFailed", "message": "unsafe input"}))
    assert isinstance(moderated, ContentPolicyViolation) and moderated.status == 400
    billing = failure(job, None, answer(400, {"request_id": "r", "code": "Arrearage", "message": "Access denied, overdue"}))
    assert isinstance(billing, RateLimited)
    assert (billing.status, billing.type, billing.retryable) == (429, "insufficient_quota", False)
    limited = failure(job, None, answer(429, {"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}))
    assert isinstance(limited, RateLimited)
    assert (limited.type, limited.retryable) == ("rate_limit_exceeded", True)
    invalid = failure(job, None, answer(400, {"code": "InvalidParameter", "message": "num_images_per_prompt must be 1-4"}))
    assert (invalid.status, invalid.code) == (400, "InvalidParameter")
    refusal = {"code": "AccessDenied", "message": "current user api does not support synchronous calls"}
    denied = failure(job, None, answer(403, refusal))
    assert isinstance(denied, BadGateway) and denied.code == "upstream_auth_failed"
    key = failure(job, None, answer(401, {"code": "InvalidApiKey", "message": f"Invalid API-key provided: {KEY}"}))
    assert isinstance(key, BadGateway)
    server = failure(job, None, answer(500, {"code": "InternalError", "message": "oops"}))
    assert isinstance(server, BadGateway) and server.retryable
    empty = failure(job, None, answer(200, {"request_id": "r", "output": {}}))
    assert empty.code == "bad_upstream_response"


def test_three_failed_polls_in_a_row_give_up() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"})
    step = SPEC.advance(job, None, task("PENDING"))
    for expected in (1, 2):
        assert isinstance(step, Wait)
        step = SPEC.advance(job, step.state, answer(500, {"code": "InternalError", "message": "oops"}))
        assert isinstance(step, Wait) and step.state.failed_polls == expected
    assert isinstance(step, Wait)
    error = failure(job, step.state, answer(503, {"code": "ServiceUnavailable", "message": "busy"}))
    assert (error.status, error.code, error.retryable) == (502, "upstream_poll_failed", False)
    assert "3 polls failed in a row" in error.message and "busy" in error.message


def test_a_poll_answered_429_or_503_waits_the_retry_after_at_most_the_cap() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"}, settings={"poll_interval": 2})
    limited = answer(429, {"code": "Throttling", "message": "slow down"}, {"retry-after": "5"})
    step = SPEC.advance(job, Task("t-1", polls=1), limited)
    assert step == Wait(5.0, POLL, Task("t-1", polls=2, failed_polls=1))
    step = SPEC.advance(job, step.state, answer(503, {"code": "ServiceUnavailable", "message": "busy"}, {"retry-after": "90"}))
    assert isinstance(step, Wait) and step.seconds == 8.0  # the default max_poll_interval
    error = failure(job, step.state, answer(503, {"code": "ServiceUnavailable", "message": "busy"}, {"retry-after": "1"}))
    assert (error.status, error.code, error.retryable) == (502, "upstream_poll_failed", False)


def test_an_unset_max_poll_interval_never_caps_below_poll_interval() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"}, settings={"poll_interval": 10})
    step = SPEC.advance(job, None, task("PENDING"))
    assert isinstance(step, Wait) and step.seconds == 10.0
    step = SPEC.advance(job, step.state, task("RUNNING"))
    assert isinstance(step, Wait) and step.seconds == 10.0


def test_a_4xx_poll_fails_at_once() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"})
    error = failure(job, Task("t-1", polls=1), answer(404, {"code": "NotFound", "message": "task not found"}))
    assert (error.code, error.retryable) == ("upstream_task_lost", False)


def test_cancel_targets_the_task() -> None:
    job = make_job({"model": "wanx2.1-t2i-turbo", "prompt": "p"})
    assert SPEC.cancel is not None
    assert SPEC.cancel(job, None) is None
    assert SPEC.cancel(job, Task("t-1")) == Call("POST", f"{BASE}/tasks/t-1/cancel", headers={"Authorization": f"Bearer {KEY}"})
