"""Core tests: the Kling adapter, from a real client body through create, polls and the finished task."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Fail, UpstreamResponse, Wait
from proxy.adapters.kling import SPEC, Task, credential, map_aspect_ratio
from proxy.core.errors import BadGateway, ContentPolicyViolation, InvalidRequest, NotFound, RateLimited
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import Channel
from tests import factories
from tests.factories import advance_error_from, answer, start_call

ACCESS, SECRET = "ak-test-access", "sk-test-secret-0123456789"
PAIR = f"{ACCESS}:{SECRET}"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJhayJ9.c2lnbmF0dXJl"
BASE = "https://api-singapore.klingai.com"
CREATE_URL = f"{BASE}/v1/images/generations"
JSON_HEADERS = {"Authorization": f"Bearer {JWT}", "Content-Type": "application/json"}
POLL_HEADERS = {"Authorization": f"Bearer {JWT}"}
TTL = 30 * 86400.0


make_job = partial(
    factories.make_job, channel="kling", base_url=BASE, api_key=PAIR, key=JWT, max_n=9,
    passthrough=frozenset({"negative_prompt", "image", "strength", "watermark", "aspect_ratio"}),
)


def task(status: str, **more: Any) -> UpstreamResponse:
    data = {"task_id": "t-1", "task_status": status, "created_at": 1722769557708, "updated_at": 1722769557708, **more}
    return answer(200, {"code": 0, "message": "SUCCEED", "request_id": "r-1", "data": data})


def created() -> UpstreamResponse:
    return task("submitted")


POLL = Call("GET", f"{CREATE_URL}/t-1", headers=POLL_HEADERS)


sent = partial(start_call, SPEC)


failure = partial(advance_error_from, SPEC, secrets=(SECRET, JWT))


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_spec() -> None:
    assert SPEC.name == "kling"
    assert SPEC.max_n_per_call == 9
    assert SPEC.cancel is None  # Kling documents no cancel endpoint
    assert SPEC.auth_headers is None
    assert frozenset(SPEC.schema.settings) == frozenset({"hd_models", "poll_interval", "max_poll_interval"})


def test_credential_is_an_hs256_jwt_signed_with_the_secret_key() -> None:
    channel = Channel(name="kling", type="kling", api_key=PAIR)
    token, expires = credential(channel, PAIR, 1700000000.75)
    header, payload, signature = token.split(".")
    assert json.loads(_unb64(header)) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(_unb64(payload)) == {"iss": ACCESS, "exp": 1700001800, "nbf": 1699999995}
    expected = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(_unb64(signature), expected)
    assert "=" not in token
    assert expires == 1700001800.0


def test_credential_rejects_a_key_that_is_not_a_pair() -> None:
    for bad in (None, "", "only-access", ":secret", "access:"):
        try:
            credential(Channel(name="kling", type="kling"), bad, 0.0)
        except ValueError as exc:
            assert "ACCESS_KEY:SECRET_KEY" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_a_raw_key_pair_is_never_sent() -> None:
    step = SPEC.start(make_job({"model": "kling-v1", "prompt": "a cat"}, key=PAIR))
    assert isinstance(step, Fail)
    assert isinstance(step.error, BadGateway)
    assert SECRET not in step.error.message


def test_the_whole_task_from_create_to_images() -> None:
    job = make_job({"model": "kling-v2", "prompt": "a red fox", "size": "1792x1024", "quality": "hd", "n": 2})
    assert sent(job) == Call("POST", CREATE_URL, headers=JSON_HEADERS, json={
        "model_name": "kling-v2", "prompt": "a red fox", "n": 2, "aspect_ratio": "16:9", "resolution": "2k",
    })
    step = SPEC.advance(job, None, created())
    assert step == Wait(1.0, POLL, Task("t-1", polls=1))
    waits = [step.seconds]
    for status in ("submitted", "processing", "processing", "processing", "processing"):
        assert isinstance(step, Wait)
        assert step.call == POLL
        step = SPEC.advance(job, step.state, task(status))
        assert isinstance(step, Wait)
        waits.append(step.seconds)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    images = {"images": [{"index": 1, "url": "https://cdn.kling/2.png"}, {"index": 0, "url": "https://cdn.kling/1.png"}]}
    done = SPEC.advance(job, step.state, task("succeed", task_result=images, final_unit_deduction="2"))
    assert done == Done(ImagesResult(
        images=(GeneratedImage(url="https://cdn.kling/1.png", url_ttl=TTL),
                GeneratedImage(url="https://cdn.kling/2.png", url_ttl=TTL)),
        created=1722769557,
        usage={"final_unit_deduction": "2"},
    ))


def test_poll_interval_settings() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"}, settings={"poll_interval": 0.5, "max_poll_interval": 1})
    step = SPEC.advance(job, None, created())
    seconds = []
    for _ in range(4):
        assert isinstance(step, Wait)
        seconds.append(step.seconds)
        step = SPEC.advance(job, step.state, task("processing"))
    assert seconds == [0.5, 1.0, 1.0, 1.0]


def test_aspect_ratio_from_size_and_client_ratio_wins() -> None:
    def ratio(body: Mapping[str, Any], model: str = "kling-v2") -> Any:
        return sent(make_job({"model": model, "prompt": "p", **body})).json.get("aspect_ratio")

    assert ratio({"size": "1024x1024"}) == "1:1"
    assert ratio({"size": "1536x1024"}) == "3:2"
    assert ratio({"size": "1024x1792"}) == "9:16"
    assert ratio({"size": "2560x1080"}) == "21:9"
    assert ratio({"size": "2560x1080"}, "kling-v1") == "16:9"
    assert ratio({"size": "auto"}) == "1:1"
    assert ratio({}) is None
    assert ratio({"size": "1024x1024", "aspect_ratio": "3:4"}) == "3:4"
    assert ratio({"aspect_ratio": "5:4"}) == "4:3"
    assert map_aspect_ratio({"size": "1280x720"}, "kling-v1") == "16:9"


def test_quality_maps_to_resolution_only_where_2k_exists() -> None:
    def body(quality: str, model: str = "kling-v2") -> Any:
        return sent(make_job({"model": model, "prompt": "p", "quality": quality})).json

    assert body("pro")["resolution"] == "2k"
    assert body("high")["resolution"] == "2k"
    assert "resolution" not in body("std")
    assert "resolution" not in body("auto")
    assert "resolution" not in body("hd", "kling-v1")
    custom = make_job({"model": "kling-v1-5", "prompt": "p", "quality": "hd"}, settings={"hd_models": ("kling-v1-5",)})
    assert sent(custom).json["resolution"] == "2k"
    with pytest.raises(InvalidRequest) as refused:
        SPEC.start(make_job({"model": "kling-v2", "prompt": "p", "quality": "ultra"}))
    assert (refused.value.param, refused.value.code) == ("quality", "invalid_value")


def test_image_inputs_and_fidelity() -> None:
    raw = base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()
    url_job = make_job({"model": "kling-v1-5", "prompt": "p", "image": "https://x/y.png", "strength": 0.3})
    assert sent(url_job).json == {
        "model_name": "kling-v1-5", "prompt": "p", "n": 1, "image": "https://x/y.png", "image_fidelity": 0.3,
    }
    data_uri = make_job({"model": "kling-v1", "prompt": "p", "image": [f"data:image/png;base64,{raw}"]})
    assert sent(data_uri).json["image"] == raw
    assert sent(make_job({"model": "kling-v1", "prompt": "p", "image": raw})).json["image"] == raw
    explicit = make_job({"model": "kling-v1", "prompt": "p", "image": raw, "strength": 0.3, "image_fidelity": 0.9},
                        passthrough=frozenset({"image", "strength", "image_fidelity"}))
    assert sent(explicit).json["image_fidelity"] == 0.9
    # strength without an image means nothing to Kling
    assert "image_fidelity" not in sent(make_job({"model": "kling-v1", "prompt": "p", "strength": 0.3})).json


def test_negative_prompt_is_refused_with_an_image() -> None:
    alone = make_job({"model": "kling-v1", "prompt": "p", "negative_prompt": "blur"})
    assert sent(alone).json["negative_prompt"] == "blur"
    with pytest.raises(InvalidRequest) as refused:
        SPEC.start(make_job({"model": "kling-v1", "prompt": "p", "negative_prompt": "blur", "image": "https://x/y.png"}))
    assert refused.value.param == "negative_prompt"
    with pytest.raises(InvalidRequest) as two:
        SPEC.start(make_job({"model": "kling-v1", "prompt": "p", "image": ["https://x/1.png", "https://x/2.png"]}))
    assert two.value.param == "image"


def test_watermark_is_tri_state_and_picks_the_watermarked_url() -> None:
    base = {"model": "kling-v2", "prompt": "p"}
    assert "watermark_info" not in sent(make_job(base)).json
    assert sent(make_job({**base, "watermark": False})).json["watermark_info"] == {"enabled": False}
    job = make_job({**base, "watermark": True})
    assert sent(job).json["watermark_info"] == {"enabled": True}
    images = {"images": [{"index": 0, "url": "https://cdn/clean.png", "watermark_url": "https://cdn/marked.png"}]}
    step = SPEC.advance(job, Task("t-1", polls=1), task("succeed", task_result=images))
    assert isinstance(step, Done)
    assert step.result.images[0].url == "https://cdn/marked.png"
    plain = SPEC.advance(make_job(base), Task("t-1", polls=1), task("succeed", task_result=images))
    assert isinstance(plain, Done) and plain.result.images[0].url == "https://cdn/clean.png"


def test_failed_and_moderated_tasks() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"})
    error = failure(job, Task("t-1", polls=2), task("failed", task_status_msg="Failure to pass the risk control system"))
    assert isinstance(error, ContentPolicyViolation)
    assert "risk control" in error.message
    error = failure(job, Task("t-1", polls=2), task("failed", task_status_msg="internal render error"))
    assert isinstance(error, BadGateway)
    assert (error.code, error.retryable) == ("upstream_task_failed", False)
    assert "internal render error" in error.message


def test_create_errors_by_business_code() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"})
    moderated = failure(job, None, answer(400, {"code": 1301, "message": "content security", "request_id": "r"}))
    assert isinstance(moderated, ContentPolicyViolation) and moderated.status == 400
    for code in (1100, 1101, 1102):
        billing = failure(job, None, answer(429, {"code": code, "message": "arrears", "request_id": "r"}))
        assert isinstance(billing, RateLimited)
        assert (billing.type, billing.retryable) == ("insufficient_quota", False)
    limited = failure(job, None, answer(429, {"code": 1303, "message": "parallel task over"}, {"retry-after": "3"}))
    assert isinstance(limited, RateLimited)
    assert (limited.type, limited.retryable, limited.retry_after) == ("rate_limit_exceeded", True, 3.0)
    missing = failure(job, None, answer(404, {"code": 1203, "message": "model not found"}))
    assert isinstance(missing, NotFound) and missing.param == "model"
    server = failure(job, None, answer(500, {"code": 5000, "message": "server error"}))
    assert isinstance(server, BadGateway) and server.retryable
    auth = failure(job, None, answer(401, {"code": 1004, "message": f"token expired {JWT}"}))
    assert isinstance(auth, BadGateway) and auth.code == "upstream_auth_failed"
    invalid = failure(job, None, answer(400, {"code": 1201, "message": "aspect_ratio invalid"}))
    assert (invalid.status, invalid.code) == (400, "1201")


def test_a_create_answer_without_task_id_is_a_bad_answer() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"})
    error = failure(job, None, answer(200, {"code": 0, "message": "ok", "data": {}}))
    assert error.code == "bad_upstream_response"


def test_three_failed_polls_in_a_row_give_up() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"})
    step = SPEC.advance(job, None, created())
    assert isinstance(step, Wait)
    step = SPEC.advance(job, step.state, answer(500, {"code": 5000, "message": "busy"}))
    assert isinstance(step, Wait) and step.state.failed_polls == 1
    # A good answer in between resets the count.
    step = SPEC.advance(job, step.state, task("processing"))
    assert isinstance(step, Wait) and step.state.failed_polls == 0
    step = SPEC.advance(job, step.state, answer(503, {"code": 5001, "message": "maintenance"}))
    assert isinstance(step, Wait)
    step = SPEC.advance(job, step.state, UpstreamResponse(502, {}, b"<html>bad gateway</html>"))
    assert isinstance(step, Wait) and step.state.failed_polls == 2
    error = failure(job, step.state, answer(504, {"code": 5002, "message": "timeout"}))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_poll_failed", False)
    assert "3 polls failed in a row" in error.message and "timeout" in error.message


def test_a_poll_answered_429_or_503_waits_the_retry_after_at_most_the_cap() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"}, settings={"max_poll_interval": 6})
    step = SPEC.advance(job, Task("t-1", polls=1), answer(429, {"code": 1302, "message": "too fast"}, {"retry-after": "4"}))
    assert step == Wait(4.0, POLL, Task("t-1", polls=2, failed_polls=1))
    step = SPEC.advance(job, step.state, answer(503, {"code": 5001, "message": "busy"}, {"retry-after": "90"}))
    assert isinstance(step, Wait) and step.seconds == 6.0  # max_poll_interval
    error = failure(job, step.state, answer(503, {"code": 5001, "message": "busy"}, {"retry-after": "1"}))
    assert (error.status, error.code, error.retryable) == (502, "upstream_poll_failed", False)


def test_an_unknown_task_fails_at_once() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"})
    error = failure(job, Task("t-1", polls=3), answer(404, {"code": 1203, "message": "task not found"}))
    assert isinstance(error, BadGateway)
    assert (error.code, error.retryable) == ("upstream_task_lost", False)
    assert "task not found" in error.message


def test_finished_task_without_images_is_a_bad_answer() -> None:
    job = make_job({"model": "kling-v1", "prompt": "p"})
    error = failure(job, Task("t-1"), task("succeed", task_result={"images": []}))
    assert error.code == "bad_upstream_response"
    error = failure(job, Task("t-1"), task("exploded"))
    assert error.code == "bad_upstream_response"


def test_other_passthrough_fields_and_extra_body() -> None:
    job = make_job({"model": "kling-v1-5", "prompt": "p", "image": "https://x/f.png", "image_reference": "face",
                    "extra_body": {"human_fidelity": 0.6}},
                   passthrough=frozenset({"image", "image_reference", "extra_body"}), upstream="kling-v1-5")
    assert sent(job).json == {"model_name": "kling-v1-5", "prompt": "p", "n": 1, "image": "https://x/f.png",
                              "image_reference": "face", "human_fidelity": 0.6}
