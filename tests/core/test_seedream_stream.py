"""Core tests: Ark Seedream's stream events mapped to OpenAI's image stream, from real-shaped SSE bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.adapters.base import Job
from proxy.adapters.seedream_stream import map_event, stream_body, usage_of
from proxy.core.sse import Event, SSEParser, format_json_event
from tests import factories

KEY = "ark-secret-0123456789"
MODEL = "doubao-seedream-4-0-250828"
URL = ("https://ark-content-generation-v2-cn-beijing.tos-cn-beijing.volces.com/doubao-seedream-4-0/"
       "0217574690542070fa6ef8c2347680bd87fd8d357bb16f1e5ca0f_0.jpeg?X-Tos-Expires=86400")
SUCCEEDED: dict[str, Any] = {"type": "image_generation.partial_succeeded", "model": MODEL, "created": 1757396757,
             "image_index": 0, "url": URL, "size": "2496x1664"}
FAILED: dict[str, Any] = {"type": "image_generation.partial_failed", "model": MODEL, "created": 1757396785, "image_index": 1,
          "error": {"code": "OutputImageSensitiveContentDetected",
                    "message": "The request failed because the output image may contain sensitive information."}}
USAGE = {"generated_images": 1, "output_tokens": 16224, "total_tokens": 16224}
COMPLETED: dict[str, Any] = {"type": "image_generation.completed", "model": MODEL, "created": 1757396790, "usage": USAGE}


def event(payload: dict[str, Any], *, named: bool = True) -> Event:
    return Event(payload.get("type") if named else None, json.dumps(payload))


def make_job() -> Job:
    return factories.make_job({"model": "seedream", "prompt": "a cat", "n": 2}, channel="ark", channel_type="seedream",
                              api_key=KEY, upstream=MODEL)


def test_stream_body_adds_stream_and_keeps_the_rest() -> None:
    body = {"model": MODEL, "prompt": "a cat", "size": "2048x2048", "sequential_image_generation": "auto"}
    assert stream_body(body) == {**body, "stream": True}
    assert "stream" not in body


def test_partial_succeeded_with_url() -> None:
    assert map_event(event(SUCCEEDED)) == [{
        "type": "image_generation.completed", "url": URL, "created_at": 1757396757, "size": "2496x1664",
        "output_format": "jpeg", "image_index": 0,
    }]


def test_partial_succeeded_with_b64_for_an_edit_and_the_docs_size_spelling() -> None:
    payload = {**SUCCEEDED, "url": None, "b64_json": "/9j/4AAQSkZJRgABAQAAAQABAAD", "size": "2048×2048", "image_index": 3}
    assert map_event(event(payload, named=False), "image_edit") == [{
        "type": "image_edit.completed", "b64_json": "/9j/4AAQSkZJRgABAQAAAQABAAD", "created_at": 1757396757,
        "size": "2048x2048", "output_format": "jpeg", "image_index": 3,
    }]


def test_output_format_can_be_what_the_request_asked_for() -> None:
    (mapped,) = map_event(event(SUCCEEDED), output_format="png")
    assert mapped["output_format"] == "png"


def test_partial_succeeded_without_an_image_is_an_upstream_error() -> None:
    payload = {key: value for key, value in SUCCEEDED.items() if key != "url"}
    (mapped,) = map_event(event(payload))
    assert mapped["type"] == "error"
    assert mapped["error"]["code"] == "bad_upstream_response"
    assert mapped["image_index"] == 0


def test_partial_failed_moderation_is_moderation_blocked() -> None:
    assert map_event(event(FAILED), job=make_job()) == [{
        "type": "error",
        "error": {
            "message": "The request failed because the output image may contain sensitive information. "
                       "(ark code OutputImageSensitiveContentDetected)",
            "type": "image_generation_user_error",
            "param": None,
            "code": "moderation_blocked",
        },
        "image_index": 1,
    }]


def test_partial_failed_internal_error_is_an_upstream_error_and_scrubbed() -> None:
    payload = {**FAILED, "error": {"code": "InternalServiceError", "message": f"boom for key {KEY}"}}
    (mapped,) = map_event(event(payload), job=make_job())
    assert mapped["error"]["type"] == "upstream_error"
    assert mapped["error"]["code"] == "upstream_error"
    assert "channel 'ark'" in mapped["error"]["message"]
    assert KEY not in json.dumps(mapped)


def test_partial_failed_without_a_job_still_classifies() -> None:
    payload = {**FAILED, "error": {"code": "InputTextSensitiveContentDetected", "message": "sensitive prompt"}}
    (mapped,) = map_event(event(payload))
    assert mapped["error"]["code"] == "moderation_blocked"


def test_request_level_error_in_the_stream() -> None:
    payload = {"error": {"code": "QuotaExceeded", "message": "You have exceeded your quota. Request ID: 0217abc"}}
    (mapped,) = map_event(event(payload, named=False))
    assert mapped["error"]["type"] == "insufficient_quota"
    assert "image_index" not in mapped


def test_completed_maps_to_nothing_but_yields_its_usage() -> None:
    assert map_event(event(COMPLETED)) == []
    assert usage_of(event(COMPLETED)) == USAGE
    assert usage_of(event(SUCCEEDED)) is None
    assert usage_of(Event(None, "[DONE]")) is None
    assert usage_of(event({**COMPLETED, "usage": None})) is None


def test_done_and_unknown_events_map_to_nothing() -> None:
    assert map_event(Event(None, "[DONE]")) == []
    assert map_event(event({"type": "image_generation.progress", "image_index": 0, "percent": 40})) == []


def test_non_json_data_is_an_upstream_error() -> None:
    (mapped,) = map_event(Event(None, "<html>502 Bad Gateway</html>"))
    assert mapped["type"] == "error"
    assert mapped["error"]["code"] == "bad_upstream_response"


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        map_event(event(SUCCEEDED), "image_variation")


def test_a_whole_ark_stream_end_to_end() -> None:
    # As Ark sends it: named events, a moderated second image, a third that still succeeds, the summary, [DONE].
    third = {**SUCCEEDED, "image_index": 2, "url": URL.replace("_0.jpeg", "_2.jpeg")}
    usage = {**USAGE, "generated_images": 2}
    raw = b"".join(format_json_event(payload, payload["type"]) for payload in (SUCCEEDED, FAILED, third))
    raw += format_json_event({**COMPLETED, "usage": usage}, COMPLETED["type"]) + b"data: [DONE]\n\n"
    parser = SSEParser()
    events = [item for offset in range(0, len(raw), 97) for item in parser.feed(raw[offset:offset + 97])]
    events += parser.close()
    mapped = [payload for item in events for payload in map_event(item, job=make_job())]
    assert [(payload["type"], payload.get("image_index")) for payload in mapped] == [
        ("image_generation.completed", 0), ("error", 1), ("image_generation.completed", 2),
    ]
    assert [usage_of(item) for item in events if usage_of(item) is not None] == [usage]
