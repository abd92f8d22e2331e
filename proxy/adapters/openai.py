"""Adapter layer: any OpenAI-compatible Images upstream (OpenAI itself, relays, LocalAI, ...).

Mapping: the body is the OpenAI body itself. `model` -> the rule's upstream model; `n` is always sent;
the plan's forwarded fields go verbatim, except `output_format: jpg` -> `jpeg` (OpenAI's spelling);
`extra_body` adds top-level keys (replacing a set one is a 400). Auth: `Authorization: Bearer <channel key>`.
Edits and variations go to `/images/edits` and `/images/variations` as multipart: the same fields as
text parts (objects as JSON), then the client's files byte for byte under their own field names.
Answer: `data[]` items keep `url` / `b64_json` / `revised_prompt`; `usage` and the response-level
`background`, `output_format`, `quality`, `size` are kept. Failures: see proxy.core.upstream_errors.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from proxy.adapters.base import AdapterSpec, Call, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import bearer, error_object, images_step, json_call, upstream_failure
from proxy.core.errors import BadGateway
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import FORMATS, NativeFormats
from proxy.core.multipart import Part, text_part
from proxy.core.plain_base64 import loads_images
from proxy.core.plan import EDIT, GENERATE, VARIATION
from proxy.core.received import Base64Chunks
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.sse import Event, error_payload, is_done
from proxy.core.upstream_errors import scrub

RESPONSE_EXTRAS = ("background", "output_format", "quality", "size")


def build_body(job: Job) -> dict[str, Any]:
    plan = job.plan
    body: dict[str, Any] = {"model": plan.upstream_model, "prompt": plan.prompt, "n": plan.n}
    for name, value in plan.fields.items():
        if name == "extra_body":
            continue
        body[name] = "jpeg" if name == "output_format" and value == "jpg" else value
    body = merge_extra_body(body, plan.fields.get("extra_body", {}))
    return body


def form_value(value: Any) -> str:
    """A JSON body value as multipart text: strings as they are, everything else as JSON (true, 3, {...})."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def build_form(job: Job) -> tuple[Part, ...]:
    """The edits / variations form: the body's fields as text, then the client's files, bytes untouched."""
    body = build_body(job)
    if job.plan.operation == VARIATION:
        body.pop("prompt", None)  # variations take no prompt
    texts = tuple(text_part(name, form_value(value)) for name, value in body.items())
    mask = (job.plan.mask,) if job.plan.mask is not None else ()
    return texts + job.plan.uploads + mask


_PATHS = {GENERATE: "/images/generations", EDIT: "/images/edits", VARIATION: "/images/variations"}


def start(job: Job) -> Step:
    url = f"{job.channel.base_url}{_PATHS[job.plan.operation]}"
    if job.plan.operation == GENERATE:
        return Send(json_call(job, url, build_body(job)))
    # Multipart: the shell sets the Content-Type with its boundary.
    headers = {**job.channel.headers, **bearer(job.api_key)}
    return Send(Call("POST", url, headers=headers, form=build_form(job)))


def stream_call(job: Job) -> Step:
    """The same request with `stream: true`: OpenAI answers with `<kind>.partial_image` / `.completed` events."""
    step = start(job)
    if not isinstance(step, Send):
        return step
    if step.call.json is not None:
        return Send(replace(step.call, json={**step.call.json, "stream": True}))
    return Send(replace(step.call, form=(*(step.call.form or ()), text_part("stream", "true"))))


def stream_events(job: Job, event: Event) -> list[dict[str, Any]]:
    """OpenAI's own events pass as they are; an upstream error event keeps OpenAI's nested shape."""
    if is_done(event):
        return []
    try:
        payload = json.loads(event.data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        broken = BadGateway(f"channel '{job.channel.name}' streamed an event that is not JSON", code="bad_upstream_response")
        return [error_payload(broken.envelope())]
    if "error" in payload and payload.get("type") in (None, "error"):
        error = payload["error"] if isinstance(payload["error"], dict) else {"message": str(payload["error"])}
        # Every text field scrubbed: an upstream may echo the key in any of them.
        shown = {name: scrub(value, (job.api_key,)) if isinstance(value, str) else value for name, value in error.items()}
        return [error_payload({"error": {**shown, "message": scrub(str(error.get("message", "")), (job.api_key,))}})]
    return [payload] if isinstance(payload.get("type"), str) else []


# The types a data[] item's fields may have: Base64Chunks are base64 that loads_images read unparsed.
_ITEM_FIELDS: dict[str, tuple[type, ...]] = {"b64_json": (str, Base64Chunks), "url": (str,), "revised_prompt": (str,)}


def _image(item: Any) -> GeneratedImage:
    if not isinstance(item, dict):
        raise ValueError("data[] item is not an object")
    fields = {name: item.get(name) for name in _ITEM_FIELDS}
    if not all(value is None or isinstance(value, _ITEM_FIELDS[name]) for name, value in fields.items()):
        raise ValueError("data[] item has a non-string field")
    if fields["b64_json"] is None and fields["url"] is None:
        raise ValueError("data[] item has neither url nor b64_json")
    return GeneratedImage(**fields)


def parse_images_response(body: bytes | tuple[bytes, ...]) -> ImagesResult:
    """An OpenAI ImagesResponse (whole, or the chunks it was received in); ValueError when the body is not
    one. Large base64 images are read out of the body unparsed (proxy.core.plain_base64)."""
    data = loads_images(body)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list) or not data["data"]:
        raise ValueError("no data[] in the answer")
    created = data.get("created")
    usage = data.get("usage")
    return ImagesResult(
        images=tuple(_image(item) for item in data["data"]),
        created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        usage=usage if isinstance(usage, dict) else None,
        extra={key: data[key] for key in RESPONSE_EXTRAS if key in data},
    )


# Some relays answer every error with a 200: what such an error object means decides the status it stands for.
_QUOTA = frozenset({"rate_limit_exceeded", "insufficient_quota"})
_CLIENTS = frozenset({"invalid_request_error", "image_generation_user_error", "moderation_blocked", "content_policy_violation"})


def _status_of(error: dict[str, Any]) -> int | None:
    named = {str(error.get("type") or ""), str(error.get("code") or "")}
    return 429 if named & _QUOTA else 400 if named & _CLIENTS else None


def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
    # Parsed from the chunks as received: the answer is never joined whole (proxy.core.received).
    step = images_step(job, response, upstream_failure, lambda answer: parse_images_response(answer.chunks))
    if isinstance(step, Fail) and 200 <= response.status < 300:
        error = error_object(response.body)  # a 2xx without images: small, joined only now
        status = _status_of(error) if error is not None else None
        if status is not None:  # a refused prompt stays the client's (400, not retried), a quota a 429
            return Fail(upstream_failure(job, UpstreamResponse(status, response.headers, response.body)))
    return step


# GPT image models make png, jpeg and webp and take output_compression (OpenAI's image API reference);
# DALL·E 2 and 3 have no output_format and answer PNG. Relays speaking this API are taken at their word.
GPT_IMAGE_FORMATS = NativeFormats(asked=frozenset(FORMATS), default="png", compression=True)
DALL_E_FORMATS = NativeFormats(default="png")


def is_dall_e(upstream_model: str) -> bool:
    """A DALL·E model: `dall-e-3`, a relay's `openai/dall-e-2`, an Azure deployment named after one."""
    return "dall-e" in upstream_model.lower()


def output_formats(job: Job) -> NativeFormats:
    return DALL_E_FORMATS if is_dall_e(job.plan.upstream_model) else GPT_IMAGE_FORMATS


SPEC = AdapterSpec(
    name="openai",
    schema=ChannelSchema(),
    start=start,
    advance=advance,
    auth_headers=bearer,
    operations=frozenset({GENERATE, EDIT, VARIATION}),
    stream_call=stream_call,
    stream_events=stream_events,
    output_formats=output_formats,
)
