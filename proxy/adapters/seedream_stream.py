"""Adapter layer: Ark Seedream's native SSE stream (`"stream": true`, Seedream 4.x) mapped to OpenAI's image stream.

Ark sends `data: {json}` events (its `event:` line, when present, repeats `type`), one per image as each
finishes, then a summary, then `data: [DONE]`:

    image_generation.partial_succeeded {type, model, created, image_index, url | b64_json, size}
        -> one OpenAI `<kind>.completed` {type, b64_json | url, created_at, size (WxH), output_format,
           image_index}. Ark writes only JPEG (Seedream 5 takes an `output_format`: the caller passes
           what it asked for). `image_index` is kept as an extension so a client can order a batch.
    image_generation.partial_failed {type, model, created, image_index, error{code, message}}
        -> `{"type": "error", "error": {...}, "image_index"}`, the item error classified as seedream.py
           classifies a failed item (`classify` at status 502: *SensitiveContentDetected / *RiskDetection
           -> image_generation_user_error / moderation_blocked; quota, rate limit, overload as there;
           anything else -> upstream_error). Ark goes on after a moderated image (it stops after a 500),
           so more images may follow; note that OpenAI's SDKs raise on the first error event.
    image_generation.completed {type, model, created, usage{generated_images, output_tokens, total_tokens}}
        -> nothing sent; `usage_of` (the spec's `stream_usage`) hands its usage to the shell, which prices it.
    {"error": {code, message}} (a request-level error once the stream has begun) -> an error event too.
    data: [DONE] -> nothing (the shell ends the client stream itself).
Other event types are ignored (Ark may add progress events; a client of OpenAI's stream would not know
them). A data payload that is not a JSON object is a broken upstream: an upstream_error event.

Sources: Volcengine Ark "流式响应" for the image API (volcengine.com/docs/82379/1824137, mirrored in
Hajimi-Commune/VolcanoArkDocs `docs/API 参考/图片生成API/流式响应.md`): event fields, image_index counting
successes and failures, partial_failed not stopping the batch on moderation, `completed` as the last
event; Ark image API (/docs/82379/1541523) for JPEG-only output; BytePlus ModelArk carries the same API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from proxy.adapters import seedream
from proxy.adapters.base import Job, Send, Step
from proxy.adapters.seedream import classify
from proxy.core.errors import BadGateway, ProxyError
from proxy.core.plan import Plan
from proxy.core.rules import Channel
from proxy.core.sizes import normalise_size
from proxy.core.sse import KINDS, Event, completed_event, error_payload, is_done
from proxy.core.upstream_errors import scrub

SUCCEEDED = "image_generation.partial_succeeded"
FAILED = "image_generation.partial_failed"
COMPLETED = "image_generation.completed"
ARK_OUTPUT_FORMAT = "jpeg"

# Without the caller's Job there is no key to scrub and no channel name: errors are worded for "seedream".
_ANONYMOUS = Job(
    plan=Plan(model="", upstream_model="", prompt="", n=1, fields=MappingProxyType({}), response_format=None),
    channel=Channel(name="seedream", type="seedream"),
    api_key=None,
)


def stream_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Ark request body (from seedream.build_body) asking for the SSE stream."""
    return {**body, "stream": True}


def _payload(event: Event) -> dict[str, Any] | None:
    try:
        data = json.loads(event.data)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def usage_of(event: Event) -> dict[str, Any] | None:
    """The `usage` of Ark's closing `image_generation.completed` event; None for any other event."""
    if is_done(event):
        return None
    data = _payload(event)
    if data is None or data.get("type") != COMPLETED:
        return None
    usage = data.get("usage")
    return dict(usage) if isinstance(usage, dict) else None


def _item_error(job: Job, error: Mapping[str, Any]) -> ProxyError:
    # Status 502 as seedream.py uses for failed items: a code it knows decides, everything else is upstream's fault.
    mapped = classify(job, error, 502, {})
    if mapped is not None:
        return mapped
    text = scrub(f"{error.get('message') or 'no message'} (ark code {error.get('code') or 'none'})", (job.api_key,))
    return BadGateway(f"channel '{job.channel.name}' generated no image: {text}", code="upstream_error")


def _error(error: ProxyError, index: Any) -> dict[str, Any]:
    payload = error_payload(error.envelope())
    if isinstance(index, int) and not isinstance(index, bool):
        payload["image_index"] = index
    return payload


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _size(value: Any) -> str | None:
    # Ark's docs spell sizes `2048×2048`; OpenAI clients expect `2048x2048`.
    text = _text(value)
    return (normalise_size(text) or text) if text is not None else None


def _succeeded(job: Job, data: Mapping[str, Any], kind: str, output_format: str) -> dict[str, Any]:
    b64_json, url = _text(data.get("b64_json")), _text(data.get("url"))
    if b64_json is None and url is None:
        error = BadGateway(f"channel '{job.channel.name}' streamed an image event without an image",
                           code="bad_upstream_response")
        return _error(error, data.get("image_index"))
    payload = completed_event(
        kind=kind,
        b64_json=b64_json,
        url=None if b64_json is not None else url,  # one representation, as OpenAI sends one
        created_at=_int(data.get("created")),
        size=_size(data.get("size")),
        output_format=output_format,
    )
    index = _int(data.get("image_index"))
    if index is not None:
        payload["image_index"] = index
    return payload


def map_event(
    event: Event,
    kind: str = "image_generation",
    *,
    job: Job | None = None,
    output_format: str = ARK_OUTPUT_FORMAT,
) -> list[dict[str, Any]]:
    """The OpenAI stream payloads (each to be sent with `event: <type>`) for one Ark stream event.

    `kind` is "image_generation" or "image_edit" (the client's endpoint); `job`, when given, supplies the
    key to scrub from messages and the channel name for them.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    if is_done(event):
        return []
    job = job if job is not None else _ANONYMOUS
    data = _payload(event)
    if data is None:
        broken = BadGateway(f"channel '{job.channel.name}' streamed an event that is not a JSON object",
                            code="bad_upstream_response")
        return [_error(broken, None)]
    kind_of_event = data.get("type")
    if kind_of_event == SUCCEEDED:
        return [_succeeded(job, data, kind, output_format)]
    error = data.get("error")
    if kind_of_event == FAILED or (kind_of_event in (None, "error") and isinstance(error, dict)):
        return [_error(_item_error(job, error if isinstance(error, dict) else {}), data.get("image_index"))]
    return []


def stream_call(job: Job) -> Step:
    """The usual Ark call, asking for the stream (Ark streams each image as it finishes)."""
    step = seedream.start(job)
    if not isinstance(step, Send) or step.call.json is None:
        return step
    return Send(replace(step.call, json=stream_body(step.call.json)))


def stream_events(job: Job, event: Event) -> list[dict[str, Any]]:
    # A Seedream 5 channel may have been asked for png; any other makes Ark's JPEG.
    asked = job.plan.fields.get("output_format")
    return map_event(event, job=job, output_format=asked if isinstance(asked, str) else ARK_OUTPUT_FORMAT)


# The seedream channel type, with its native stream.
SPEC = replace(seedream.SPEC, stream_call=stream_call, stream_events=stream_events, stream_usage=usage_of)
