"""Core tests: the BFL FLUX adapter, from a real client body through submit, polls and the final answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Job, Step, UpstreamResponse, Wait
from proxy.adapters.flux import FLUX1, FLUX2, SPEC, Task, fit_size
from proxy.core.errors import ProxyError
from proxy.core.formats import Conversion
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.sizes import Size
from tests import factories
from tests.factories import answer, fail_error, start_send, started

KEY = "bfl-secret-key-0123456789"
BASE = "https://api.bfl.ai"
POLL = "https://api.eu2.bfl.ai/v1/get_result?id=task-1"
SAMPLE = "https://bfldeliveryprod.blob.core.windows.net/results/abc/sample.jpeg?se=2026&sig=x"
SUBMIT_HEADERS = {"x-key": KEY, "Content-Type": "application/json", "Accept": "application/json"}
POLL_HEADERS = {"x-key": KEY, "Accept": "application/json"}
FIELDS = ("seed", "output_format", "image", "strength", "aspect_ratio", "safety_tolerance", "prompt_upsampling",
          "extra_body")


make_job = partial(factories.make_job, spec=SPEC, channel="bfl", channel_type="flux", base_url=BASE, api_key=KEY,
                   max_n=4, passthrough=FIELDS)


submitted = partial(start_send, SPEC)


failed = partial(fail_error, secrets=(KEY,))


envelope = partial(factories.envelope, retryable=True)


def polling(job: Job, polling_url: str = POLL, **extra: Any) -> Wait:
    """The Wait after a successful submit."""
    _, state = submitted(job)
    step = SPEC.advance(job, state, answer(200, {"id": "task-1", "polling_url": polling_url, **extra}))
    assert isinstance(step, Wait), step
    return step


def test_spec() -> None:
    assert (SPEC.name, SPEC.max_n_per_call, SPEC.cancel) == ("flux", 1, None)
    assert frozenset(SPEC.schema.settings) == frozenset({"poll_interval", "max_poll_interval"})
    assert not SPEC.schema.requires_base_url


def test_submit_pending_ready_round_trip() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "a red fox", "size": "1792x1024", "quality": "hd", "seed": 42,
                    "output_format": "jpg", "safety_tolerance": 2})
    call, state = submitted(job)
    assert call == Call("POST", f"{BASE}/v1/flux-pro-1.1", headers=SUBMIT_HEADERS, json={
        "prompt": "a red fox", "width": 1440, "height": 832, "seed": 42, "output_format": "jpeg", "safety_tolerance": 2,
    })
    first = SPEC.advance(job, state, answer(200, {"id": "task-1", "polling_url": POLL, "cost": 4.0, "input_mp": 0,
                                                 "output_mp": 1.2}))
    poll = Call("GET", POLL, headers=POLL_HEADERS)
    assert isinstance(first, Wait)
    assert (first.seconds, first.call) == (0.5, poll)
    waits = [first.seconds]
    step: Step = first
    for _ in range(4):
        assert isinstance(step, Wait)
        step = SPEC.advance(job, step.state, answer(200, {"id": "task-1", "status": "Pending", "progress": 40}))
        assert isinstance(step, Wait) and step.call == poll
        waits.append(step.seconds)
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0]
    ready = {"id": "task-1", "status": "Ready",
             "result": {"sample": SAMPLE, "prompt": "a red fox", "seed": 42}, "progress": None}
    assert isinstance(step, Wait)
    assert SPEC.advance(job, step.state, answer(200, ready)) == Done(ImagesResult(
        images=(GeneratedImage(url=SAMPLE, url_ttl=600.0),),
        usage={"cost": 4.0, "input_mp": 0, "output_mp": 1.2},
        extra={"seeds": [42]},
    ))


def test_upsampled_prompt_becomes_revised_prompt() -> None:
    wait = polling(make_job({"model": "flux-pro-1.1", "prompt": "fox", "prompt_upsampling": True}))
    ready = {"status": "Ready", "result": {"sample": SAMPLE, "prompt": "a fox in golden light", "seed": 7}}
    step = SPEC.advance(make_job({"model": "flux-pro-1.1", "prompt": "fox"}), wait.state, answer(200, ready))
    assert isinstance(step, Done)
    assert step.result.images[0].revised_prompt == "a fox in golden light"
    assert step.result.usage is None


@pytest.mark.parametrize(("model", "size", "expected"), [
    ("flux-pro-1.1", "1024x1024", {"width": 1024, "height": 1024}),
    ("flux-pro-1.1", "1536x1024", {"width": 1440, "height": 960}),
    ("flux-pro-1.1", "1000x600", {"width": 992, "height": 608}),
    ("flux-dev", "128x128", {"width": 256, "height": 256}),
    ("flux-2-pro", "1920x1080", {"width": 1920, "height": 1088}),
    ("flux-2-pro", "4096x4096", {"width": 2048, "height": 2048}),
    ("flux-2-pro", "3000x2000", {"width": 2496, "height": 1680}),
    ("flux-pro-1.1-ultra", "1792x1024", {"aspect_ratio": "16:9"}),
    ("flux-kontext-pro", "1024x1536", {"aspect_ratio": "2:3"}),
    ("flux-kontext-pro", "auto", {}),
    ("flux-pro-1.1", "auto", {}),
])
def test_size_maps_per_family(model: str, size: str, expected: dict[str, Any]) -> None:
    body = submitted(make_job({"model": model, "prompt": "p", "size": size}))[0].json
    assert {key: body[key] for key in ("width", "height", "aspect_ratio") if key in body} == expected


def test_fitted_sizes_stay_inside_the_limits() -> None:
    assert FLUX1.limits is not None and FLUX2.limits is not None
    for size in (Size(5000, 100), Size(100, 5000), Size(2049, 2047), Size(1441, 1441)):
        flux2 = fit_size(size, FLUX2.limits)
        assert flux2.width % 16 == 0 and flux2.height % 16 == 0 and flux2.pixels <= 2048 * 2048
        flux1 = fit_size(size, FLUX1.limits)
        assert all(256 <= side <= 1440 and side % 32 == 0 for side in (flux1.width, flux1.height))


def test_aspect_ratio_decides_the_shape() -> None:
    ultra = submitted(make_job({"model": "flux-pro-1.1-ultra", "prompt": "p", "size": "1024x1024",
                                "aspect_ratio": "7:3"}))[0].json
    assert ultra == {"prompt": "p", "aspect_ratio": "7:3"}
    too_wide = submitted(make_job({"model": "flux-kontext-pro", "prompt": "p", "aspect_ratio": "4:1"}))[0].json
    assert too_wide == {"prompt": "p", "aspect_ratio": "21:9"}
    pixels = submitted(make_job({"model": "flux-2-pro", "prompt": "p", "aspect_ratio": "16:9"}))[0].json
    assert pixels == {"prompt": "p", "width": 1360, "height": 768}


def test_images_map_to_input_image_or_image_prompt() -> None:
    kontext = make_job({"model": "flux-kontext-pro", "prompt": "make it blue", "image": "data:image/png;base64,iVBORw0K"})
    assert submitted(kontext)[0].json == {"prompt": "make it blue", "input_image": "iVBORw0K"}
    flux2 = make_job({"model": "flux-2-pro", "prompt": "p", "image": ["https://x/a.png", "iVBORw0K", "https://x/c.png"]})
    assert submitted(flux2)[0].json == {"prompt": "p", "input_image": "https://x/a.png", "input_image_2": "iVBORw0K",
                                        "input_image_3": "https://x/c.png"}
    ultra = make_job({"model": "flux-pro-1.1-ultra", "prompt": "p", "image": "iVBORw0K", "strength": 0.3})
    assert submitted(ultra)[0].json == {"prompt": "p", "image_prompt": "iVBORw0K", "image_prompt_strength": 0.3}
    too_many = fail_error(started(SPEC, make_job({"model": "flux-pro-1.1", "prompt": "p", "image": ["a", "b"]})), (KEY,))
    assert envelope(too_many) == (400, "invalid_request_error", "image", "invalid_value", False)
    strength = fail_error(started(SPEC, make_job({"model": "flux-2-pro", "prompt": "p", "strength": 0.5})), (KEY,))
    assert envelope(strength)[2:4] == ("strength", "unsupported_parameter")


def test_absent_fields_stay_absent_and_unlisted_fields_never_reach_bfl() -> None:
    body = {"model": "flux-dev", "prompt": "p", "seed": 5, "safety_tolerance": 6, "style": "vivid"}
    job = make_job(body, passthrough=("seed",))
    assert submitted(job)[0].json == {"prompt": "p", "seed": 5}
    assert job.plan.ignored == ("safety_tolerance", "style")
    assert submitted(make_job({"model": "flux-dev", "prompt": "p", "seed": -1}))[0].json == {"prompt": "p"}


def test_webp_is_refused_locally_and_extra_body_is_merged() -> None:
    webp = make_job({"model": "flux-pro-1.1", "prompt": "p", "output_format": "webp"})
    # BFL makes no webp: it is asked for lossless png and the proxy converts.
    assert submitted(webp)[0].json["output_format"] == "png" and webp.plan.conversion == Conversion("webp")
    handed = replace(webp, plan=replace(webp.plan, fields={**webp.plan.fields, "output_format": "webp"}))
    refusal = fail_error(started(SPEC, handed), (KEY,))
    assert envelope(refusal) == (400, "invalid_request_error", "output_format", "invalid_value", False)
    job = make_job({"model": "flux-2-flex", "prompt": "p", "extra_body": {"steps": 30, "guidance": 5}})
    assert submitted(job)[0].json == {"prompt": "p", "steps": 30, "guidance": 5}
    clash = fail_error(started(SPEC, make_job({"model": "flux-2-flex", "prompt": "p", "seed": 1,
                                                 "extra_body": {"seed": 2}})), (KEY,))
    assert clash.param == "extra_body.seed"


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
def test_moderation_is_a_content_policy_violation(status: str) -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    wait = polling(job)
    moderated = {"id": "task-1", "status": status, "result": None, "details": {"Moderation Reasons": ["Derivative Works"]}}
    error = failed(SPEC.advance(job, wait.state, answer(200, moderated)))
    assert envelope(error) == (400, "image_generation_user_error", None, "moderation_blocked", False)
    assert "Derivative Works" in error.message


def test_task_error_and_ready_without_sample_are_final_bad_gateways() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    wait = polling(job)
    error = failed(SPEC.advance(job, wait.state, answer(200, {"id": "task-1", "status": "Error", "error": "GPU fell over"})))
    assert envelope(error) == (502, "upstream_error", None, "upstream_task_failed", False)
    assert "GPU fell over" in error.message
    empty = failed(SPEC.advance(job, wait.state, answer(200, {"id": "task-1", "status": "Ready", "result": {}})))
    assert envelope(empty) == (502, "upstream_error", None, "bad_upstream_response", False)


def test_task_not_found_fails_at_once() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    wait = polling(job)
    for response in (answer(200, {"id": "task-1", "status": "Task not found"}), answer(404, {"detail": "Not Found"})):
        assert envelope(failed(SPEC.advance(job, wait.state, response)))[3:] == ("upstream_task_lost", False)


def test_three_failed_polls_in_a_row_end_the_task() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    step: Step = polling(job)
    assert isinstance(step, Wait)
    step = SPEC.advance(job, step.state, answer(500, {"detail": "boom"}))
    assert isinstance(step, Wait) and step.seconds == 1.0
    # A good poll in between resets the count.
    step = SPEC.advance(job, step.state, answer(200, {"status": "Pending"}))
    assert isinstance(step, Wait) and step.state.failed_polls == 0
    step = SPEC.advance(job, step.state, answer(503, {"detail": "busy"}))
    assert isinstance(step, Wait)
    step = SPEC.advance(job, step.state, answer(429, {"detail": "slow down"}, {"retry-after": "3"}))
    assert isinstance(step, Wait) and step.seconds == 3.0
    error = failed(SPEC.advance(job, step.state, UpstreamResponse(502, {}, b"<html>bad gateway</html>")))
    assert envelope(error) == (502, "upstream_error", None, "upstream_poll_failed", False)


def test_a_refused_poll_is_final() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    error = failed(SPEC.advance(job, polling(job).state, answer(403, {"detail": "Forbidden"})))
    assert (error.status, error.code, error.retryable) == (502, "upstream_auth_failed", False)


def test_polling_url_on_a_foreign_host_gets_no_key() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    foreign = polling(job, "https://evil.example.com/v1/get_result?id=task-1")
    assert foreign.call == Call("GET", "https://evil.example.com/v1/get_result?id=task-1",
                                headers={"Accept": "application/json"})
    lookalike = polling(job, "https://api.bfl.ai.evil.example/v1/get_result?id=task-1")
    assert "x-key" not in lookalike.call.headers
    plaintext = polling(job, "http://api.us1.bfl.ai/v1/get_result?id=task-1")
    assert "x-key" not in plaintext.call.headers
    cluster = polling(job, "https://api.us1.bfl.ai/v1/get_result?id=task-1")
    assert cluster.call.headers == POLL_HEADERS
    # The channel's own host (a relay or a fake) may see its key, whatever its scheme.
    local = make_job({"model": "flux-pro-1.1", "prompt": "p"}, base_url="http://127.0.0.1:8080")
    own = polling(local, "http://127.0.0.1:8080/v1/get_result?id=task-1")
    assert own.call.headers == POLL_HEADERS


def test_submit_answer_without_a_usable_polling_url_is_final() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    _, state = submitted(job)
    for body in ({"id": "task-1"}, {"id": "task-1", "polling_url": "file:///etc/passwd"}, {"polling_url": POLL}):
        assert envelope(failed(SPEC.advance(job, state, answer(200, body))))[3:] == ("bad_upstream_response", False)


def test_submit_errors() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p", "size": "1024x1024"})
    _, state = submitted(job)

    def error_for(status: int, body: Any, headers: Mapping[str, str] | None = None) -> ProxyError:
        return failed(SPEC.advance(job, state, answer(status, body, headers)))

    credits = error_for(402, {"detail": "Insufficient credits"})
    assert envelope(credits) == (402, "insufficient_quota", None, "insufficient_quota", False)
    limited = error_for(429, {"detail": "Too many active tasks"}, {"retry-after": "10"})
    assert envelope(limited) == (429, "rate_limit_exceeded", None, "rate_limit_exceeded", True)
    assert limited.retry_after == 10.0
    broken = error_for(500, {"detail": "Internal Server Error"})
    assert envelope(broken) == (502, "upstream_error", None, "upstream_error", True)
    assert envelope(error_for(503, {"detail": "down"}))[4] is True
    validation = error_for(422, {"detail": [{"loc": ["body", "width"], "msg": "must be a multiple of 32",
                                             "type": "value_error"}]})
    assert envelope(validation) == (400, "invalid_request_error", "size", "invalid_value", False)
    assert validation.message == "must be a multiple of 32"
    refused = error_for(403, {"detail": f"key {KEY} lacks permission"})
    assert (refused.status, refused.code, refused.retryable) == (502, "upstream_auth_failed", True)


def test_a_bad_model_name_is_misconfiguration_and_the_poll_settings_set_the_schedule() -> None:
    path = fail_error(started(SPEC, make_job({"model": "x", "prompt": "p"}, upstream="../v2/x")), (KEY,))
    assert envelope(path)[::3] == (503, "channel_misconfigured")
    fast = make_job({"model": "flux-pro-1.1", "prompt": "p"}, settings={"poll_interval": 0.01, "max_poll_interval": 0.02})
    first = polling(fast)
    assert first.seconds == 0.01 and first.state == Task("task-1", polls=1, polling_url=POLL, send_key=True)
    second = SPEC.advance(fast, first.state, answer(200, {"status": "Pending"}))
    third = SPEC.advance(fast, second.state, answer(200, {"status": "Pending"}))
    assert isinstance(second, Wait) and isinstance(third, Wait) and (second.seconds, third.seconds) == (0.02, 0.02)


def test_a_poll_answered_429_or_503_waits_the_retry_after_at_most_the_cap() -> None:
    job = make_job({"model": "flux-pro-1.1", "prompt": "p"})
    step = SPEC.advance(job, polling(job).state, answer(429, {"detail": "slow down"}, {"retry-after": "4"}))
    assert isinstance(step, Wait) and (step.seconds, step.state.failed_polls) == (4.0, 1)
    step = SPEC.advance(job, step.state, answer(503, {"detail": "busy"}, {"retry-after": "90"}))
    assert isinstance(step, Wait) and step.seconds == 5.0  # max_poll_interval
    error = failed(SPEC.advance(job, step.state, answer(503, {"detail": "busy"}, {"retry-after": "1"})))
    assert envelope(error) == (502, "upstream_error", None, "upstream_poll_failed", False)

