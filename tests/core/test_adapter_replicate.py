"""Core tests: the Replicate adapter, from a real client body through create, polls, cancel and the final answer."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Job, Step, Wait
from proxy.adapters.replicate import SPEC, Prediction
from proxy.core.errors import ProxyError
from proxy.core.formats import Conversion
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import answer, fail_error, start_send, started
from tests.fakes.png import encode_png

KEY = "r8_replicate-secret-0123456789"
BASE = "https://api.replicate.com/v1"
AUTH = {"Authorization": f"Bearer {KEY}"}
CREATE_HEADERS = {**AUTH, "Content-Type": "application/json", "Prefer": "wait=60"}
OUT = "https://replicate.delivery/xezq/abc/out-0.webp"
PNG_B64 = base64.b64encode(encode_png(1, 1, [b"\x00\x80\xff"])).decode()
FIELDS = ("seed", "output_format", "image", "strength", "aspect_ratio", "negative_prompt", "extra_body", "go_fast")


make_job = partial(factories.make_job, spec=SPEC, channel="replicate", base_url=BASE, api_key=KEY, max_n=4,
                   upstream="black-forest-labs/flux-schnell", passthrough=FIELDS)


def prediction(status: str, *, output: Any = None, error: Any = None, pid: str = "p-1", host: str = BASE) -> dict[str, Any]:
    return {
        "id": pid, "model": "black-forest-labs/flux-schnell", "status": status, "output": output, "error": error,
        "urls": {"get": f"{host}/predictions/{pid}", "cancel": f"{host}/predictions/{pid}/cancel",
                 "stream": "https://stream.replicate.com/v1/files/x", "web": f"https://replicate.com/p/{pid}"},
        "metrics": {"predict_time": 1.25} if status == "succeeded" else {},
    }


created = partial(start_send, SPEC)


failed = partial(fail_error, secrets=(KEY,))


envelope = partial(factories.envelope, retryable=True)


def running(job: Job, **extra: Any) -> Wait:
    _, state = created(job)
    step = SPEC.advance(job, state, answer(201, {**prediction("starting"), **extra}))
    assert isinstance(step, Wait), step
    return step


def test_spec() -> None:
    assert (SPEC.name, SPEC.max_n_per_call) == ("replicate", 1)
    assert SPEC.cancel is not None
    assert frozenset(SPEC.schema.settings) == frozenset({"wait", "size_mode", "aspect_ratios", "image_input", "poll_interval",
                                              "max_poll_interval"})


def test_create_poll_succeed_round_trip() -> None:
    job = make_job({"model": "flux-schnell", "prompt": "a red fox", "size": "1792x1024", "quality": "hd", "seed": 3,
                    "output_format": "webp", "go_fast": True})
    call, state = created(job)
    assert call == Call("POST", f"{BASE}/models/black-forest-labs/flux-schnell/predictions", headers=CREATE_HEADERS,
                        json={"input": {"prompt": "a red fox", "aspect_ratio": "16:9", "seed": 3, "output_format": "webp",
                                        "go_fast": True}})
    step = SPEC.advance(job, state, answer(201, prediction("starting")))
    poll = Call("GET", f"{BASE}/predictions/p-1", headers=AUTH)
    waits = []
    for status in ("processing", "processing", "processing", "processing"):
        assert isinstance(step, Wait) and step.call == poll
        waits.append(step.seconds)
        step = SPEC.advance(job, step.state, answer(200, prediction(status)))
    assert isinstance(step, Wait)
    waits.append(step.seconds)
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0]
    done = SPEC.advance(job, step.state, answer(200, prediction("succeeded", output=[OUT])))
    assert done == Done(ImagesResult(images=(GeneratedImage(url=OUT, url_ttl=3600.0),), usage={"predict_time": 1.25}))


def test_finish_within_prefer_wait_is_done_at_once() -> None:
    job = make_job({"model": "flux-schnell", "prompt": "p"})
    _, state = created(job)
    step = SPEC.advance(job, state, answer(201, prediction("succeeded", output=OUT)))
    assert step == Done(ImagesResult(images=(GeneratedImage(url=OUT, url_ttl=3600.0),), usage={"predict_time": 1.25}))


def test_data_uri_output_becomes_b64_json() -> None:
    job = make_job({"model": "flux-schnell", "prompt": "p"})
    _, state = created(job)
    output = [f"data:image/png;base64,{PNG_B64}", None, f"data:image/webp;base64,{PNG_B64}"]
    step = SPEC.advance(job, state, answer(201, prediction("succeeded", output=output)))
    assert isinstance(step, Done)
    assert step.result.images == (GeneratedImage(b64_json=PNG_B64, content_type="image/png"),
                                  GeneratedImage(b64_json=PNG_B64, content_type="image/webp"))


def test_version_pinned_model_uses_the_predictions_endpoint() -> None:
    job = make_job({"model": "sdxl", "prompt": "p", "size": "1024x768", "negative_prompt": "blur"},
                   upstream="stability-ai/sdxl:7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
                   settings={"size_mode": "width_height", "wait": 30})
    call, _ = created(job)
    assert call == Call("POST", f"{BASE}/predictions", headers={**CREATE_HEADERS, "Prefer": "wait=30"}, json={
        "version": "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
        "input": {"prompt": "p", "width": 1024, "height": 768, "negative_prompt": "blur"},
    })
    no_wait = make_job({"model": "sdxl", "prompt": "p"}, settings={"wait": 0})
    assert "Prefer" not in created(no_wait)[0].headers


def test_inputs_map_and_absence_is_kept() -> None:
    plain = make_job({"model": "flux-schnell", "prompt": "p", "size": "auto", "seed": -1, "style": "vivid"})
    assert created(plain)[0].json == {"input": {"prompt": "p"}}
    assert plain.plan.ignored == ("style",)
    ratio = make_job({"model": "flux-schnell", "prompt": "p", "size": "1024x1024", "aspect_ratio": "16:10"})
    assert created(ratio)[0].json["input"]["aspect_ratio"] == "3:2"
    shaped = make_job({"model": "x", "prompt": "p", "aspect_ratio": "3:2"}, settings={"size_mode": "width_height"})
    assert created(shaped)[0].json["input"] == {"prompt": "p", "width": 1256, "height": 840}
    limited = make_job({"model": "x", "prompt": "p", "size": "1536x1024"}, settings={"aspect_ratios": ["1:1", "16:9"]})
    assert created(limited)[0].json["input"]["aspect_ratio"] == "16:9"


def test_images_go_to_the_configured_input() -> None:
    url = make_job({"model": "x", "prompt": "p", "image": "https://img/a.png", "strength": 0.4, "output_format": "jpeg"})
    assert created(url)[0].json["input"] == {"prompt": "p", "output_format": "jpg", "prompt_strength": 0.4,
                                             "image": "https://img/a.png"}
    raw = make_job({"model": "x", "prompt": "p", "image": [PNG_B64, "data:image/jpeg;base64,/9j/"]},
                   settings={"image_input": "input_images"})
    assert created(raw)[0].json["input"]["input_images"] == [f"data:image/png;base64,{PNG_B64}", "data:image/jpeg;base64,/9j/"]
    junk = fail_error(started(SPEC, make_job({"model": "x", "prompt": "p", "image": "bm90IGFuIGltYWdl"})), (KEY,))
    assert envelope(junk) == (400, "invalid_request_error", "image", "invalid_value", False)


def test_output_format_is_asked_only_of_models_whose_rule_forwards_it() -> None:
    webp = make_job({"model": "x", "prompt": "p", "output_format": "webp"})
    assert created(webp)[0].json["input"]["output_format"] == "webp" and webp.plan.conversion is None
    other = make_job({"model": "x", "prompt": "p", "output_format": "webp"}, passthrough=("seed",))
    assert created(other)[0].json["input"] == {"prompt": "p"} and other.plan.conversion == Conversion("webp")


def test_extra_body_is_merged_into_input() -> None:
    job = make_job({"model": "x", "prompt": "p", "extra_body": {"num_inference_steps": 4, "disable_safety_checker": False}})
    assert created(job)[0].json == {"input": {"prompt": "p", "num_inference_steps": 4, "disable_safety_checker": False}}
    clash = fail_error(started(SPEC, make_job({"model": "x", "prompt": "p", "extra_body": {"prompt": "other"}})), (KEY,))
    assert clash.param == "extra_body.prompt"


@pytest.mark.parametrize("error", ["NSFW content detected. Try running it again, or try a different prompt.",
                                   "Prediction failed: Content flagged as sensitive (E005)"])
def test_safety_failures_are_content_policy_violations(error: str) -> None:
    job = make_job({"model": "x", "prompt": "p"})
    step = SPEC.advance(job, running(job).state, answer(200, prediction("failed", error=error)))
    assert envelope(failed(step)) == (400, "image_generation_user_error", None, "moderation_blocked", False)


def test_other_endings_are_final_errors() -> None:
    job = make_job({"model": "x", "prompt": "p"})
    state = running(job).state
    crash = failed(SPEC.advance(job, state, answer(200, prediction("failed", error="CUDA out of memory"))))
    assert envelope(crash) == (502, "upstream_error", None, "upstream_task_failed", False)
    assert "CUDA out of memory" in crash.message
    canceled = failed(SPEC.advance(job, state, answer(200, prediction("canceled"))))
    assert envelope(canceled) == (502, "upstream_error", None, "upstream_canceled", False)
    aborted = failed(SPEC.advance(job, state, answer(200, prediction("aborted"))))
    assert envelope(aborted) == (504, "timeout", None, "upstream_aborted", True)
    empty = failed(SPEC.advance(job, state, answer(200, prediction("succeeded", output="a caption"))))
    assert envelope(empty) == (502, "upstream_error", None, "bad_upstream_response", False)


def test_three_failed_polls_end_it_and_404_ends_it_at_once() -> None:
    job = make_job({"model": "x", "prompt": "p"})
    step: Step = running(job)
    for status in (500, 503):
        assert isinstance(step, Wait)
        step = SPEC.advance(job, step.state, answer(status, {"detail": "oops"}))
    assert isinstance(step, Wait) and step.state.failed_polls == 2
    error = failed(SPEC.advance(job, step.state, answer(429, {"detail": "Request was throttled."})))
    assert envelope(error) == (502, "upstream_error", None, "upstream_poll_failed", False)
    lost = failed(SPEC.advance(job, running(job).state, answer(404, {"detail": "Not found.", "status": 404})))
    assert envelope(lost)[3:] == ("upstream_task_lost", False)
    refused = failed(SPEC.advance(job, running(job).state, answer(401, {"title": "Unauthenticated", "status": 401})))
    assert (refused.status, refused.code, refused.retryable) == (502, "upstream_auth_failed", False)


def test_urls_on_another_host_are_not_followed_with_the_token() -> None:
    job = make_job({"model": "x", "prompt": "p"})
    _, state = created(job)
    step = SPEC.advance(job, state, answer(201, prediction("processing", host="https://evil.example/v1")))
    assert isinstance(step, Wait)
    assert step.call == Call("GET", f"{BASE}/predictions/p-1", headers=AUTH)
    assert SPEC.cancel is not None
    assert SPEC.cancel(job, step.state) == Call("POST", f"{BASE}/predictions/p-1/cancel", headers=AUTH)
    bad_id = SPEC.advance(job, state, answer(201, prediction("processing", pid="../../account")))
    assert envelope(failed(bad_id))[3:] == ("bad_upstream_response", False)


def test_cancel_call() -> None:
    assert SPEC.cancel is not None
    job = make_job({"model": "x", "prompt": "p"})
    assert SPEC.cancel(job, created(job)[1]) is None  # nothing to cancel before Replicate named the prediction
    wait = running(job)
    assert SPEC.cancel(job, wait.state) == Call("POST", f"{BASE}/predictions/p-1/cancel", headers=AUTH)


def test_create_errors() -> None:
    job = make_job({"model": "x", "prompt": "p", "output_format": "webp", "extra_body": {"megapixels": "4"}})
    _, state = created(job)

    def error_for(status: int, body: Any, headers: Mapping[str, str] | None = None) -> ProxyError:
        return failed(SPEC.advance(job, state, answer(status, body, headers)))

    credit = error_for(402, {"title": "Insufficient credit", "status": 402,
                             "detail": "You have insufficient credit to run this model. Go to the billing page."})
    assert envelope(credit) == (402, "insufficient_quota", None, "insufficient_quota", False)
    throttled = error_for(429, {"detail": "Request was throttled. Expected available in 2 seconds.", "status": 429},
                          {"retry-after": "2"})
    assert envelope(throttled) == (429, "rate_limit_exceeded", None, "rate_limit_exceeded", True)
    assert throttled.retry_after == 2.0
    assert envelope(error_for(500, {"detail": "Internal server error"}))[:2] == (502, "upstream_error")
    assert error_for(500, {"detail": "x"}).retryable
    invalid = error_for(422, {
        "detail": "- input.output_format: output_format must be one of the following: \"jpg\", \"png\"\n",
        "status": 422, "title": "Input validation failed",
        "invalid_fields": [{"type": "enum", "field": "input.output_format",
                            "description": "output_format must be one of the following: \"jpg\", \"png\""}],
    })
    assert envelope(invalid) == (400, "invalid_request_error", "output_format", "invalid_value", False)
    assert invalid.message.startswith("input.output_format: output_format must be one of")
    extra = error_for(422, {"detail": "bad", "status": 422, "title": "Input validation failed",
                            "invalid_fields": [{"type": "enum", "field": "input.megapixels", "description": "bad"}]})
    assert extra.param == "extra_body.megapixels"
    token = error_for(401, {"title": "Unauthenticated", "detail": f"Invalid token {KEY}", "status": 401})
    assert (token.status, token.code, token.retryable) == (502, "upstream_auth_failed", True)


def test_a_bad_model_name_is_misconfiguration_and_the_poll_settings_set_the_schedule() -> None:
    misnamed = fail_error(started(SPEC, make_job({"model": "x", "prompt": "p"}, upstream="sdxl")), (KEY,))
    assert envelope(misnamed)[::3] == (503, "channel_misconfigured")
    fast = make_job({"model": "x", "prompt": "p"}, settings={"poll_interval": 0.01, "max_poll_interval": 0.015})
    first = running(fast)
    assert first.seconds == 0.01 and first.state == Prediction("p-1", polls=1, get_url=f"{BASE}/predictions/p-1",
                                                                cancel_url=f"{BASE}/predictions/p-1/cancel")
    second = SPEC.advance(fast, first.state, answer(200, prediction("processing")))
    assert isinstance(second, Wait) and second.seconds == 0.015


def test_a_poll_answered_429_or_503_waits_the_retry_after_at_most_the_cap() -> None:
    job = make_job({"model": "x", "prompt": "p"})
    step = SPEC.advance(job, running(job).state, answer(429, {"detail": "throttled"}, {"retry-after": "4"}))
    assert isinstance(step, Wait) and (step.seconds, step.state.failed_polls) == (4.0, 1)
    step = SPEC.advance(job, step.state, answer(503, {"detail": "busy"}, {"retry-after": "90"}))
    assert isinstance(step, Wait) and step.seconds == 5.0  # max_poll_interval
    error = failed(SPEC.advance(job, step.state, answer(503, {"detail": "busy"}, {"retry-after": "1"})))
    assert envelope(error) == (502, "upstream_error", None, "upstream_poll_failed", False)
    assert "prediction p-1" in error.message

