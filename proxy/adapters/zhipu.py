"""Adapter layer: Zhipu BigModel / Z.AI CogView (`POST {base_url}/images/generations`, synchronous JSON).

Mapping: `model` -> the rule's upstream model; no `n` (one image per call: the driver fans out).
`size` -> kept when it is one of the seven recommended sizes (seed 001) or, on cogview-4*, a valid
custom size (sides 512-2048 divisible by 16, at most 2^21 pixels); any other accepted size (and `auto`)
-> the nearest recommended size by shape, then pixel count, so a size the rules accepted never draws a 400.
`quality` -> `standard`|`hd` (`high`/`xhigh`/`max` -> hd, `medium`/`low` -> standard, `auto` -> omitted),
sent only to the models that accept it (docs: cogview-4-250304; channel setting `quality_models`).
`watermark` -> `watermark_enabled` (tri-state: absent stays absent). `user` (else `safety_identifier`)
-> `user_id` (6-128 chars, else 400 param user). Other passed-through fields go verbatim; `extra_body`
adds top-level keys (never replaces a mapped one). Auth: `Authorization: Bearer <key>`.
Answer: `data[].url` (valid 30 days) -> url; `content_filter` -> `metadata.content_filter`.
Failures: business code 1301 -> moderation 400; 1113/1304/1308/1309/1310 -> 429 insufficient_quota
(not retryable); 1302/1303/1305 -> 429 retryable; 1312 (model busy) -> 503; account locked/inactive
-> 502 (the channel's problem); 1211 -> 404 model_not_found; the rest keep their status and message.
Sources: docs.bigmodel.cn/cn/api/api-code, docs.z.ai/api-reference/image/generate-image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.adapters.base import AdapterSpec, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import (
    ACCOUNT,
    BILLING,
    BUSY,
    MODERATION,
    NO_MODEL,
    RATE_LIMIT,
    bearer,
    coded_error,
    error_object,
    images_step,
    json_call,
    meaning_of,
    setting,
    upstream_failure,
)
from proxy.core.channel_settings import names
from proxy.core.errors import (
    InvalidRequest,
    ProxyError,
)
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import NativeFormats
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import PROXY_FIELDS, ChannelSchema
from proxy.core.sizes import AUTO, Size, nearest_size, parse_size
from proxy.core.upstream_errors import scrub

# Seed 001 and the Z.AI reference list the same seven sizes; 1024x1024 is the provider default.
SIZES = tuple(
    Size(w, h) for w, h in ((1024, 1024), (768, 1344), (864, 1152), (1344, 768), (1152, 864), (1440, 720), (720, 1440))
)
DEFAULT_SIZE = SIZES[0]
CUSTOM_SIZE_PREFIX = "cogview-4"  # cogview-4 and its snapshots accept custom WxH within the limits below
CUSTOM_SIDE = (512, 2048)
CUSTOM_STEP = 16
CUSTOM_MAX_PIXELS = 2**21
DEFAULT_QUALITY_MODELS = ("cogview-4-250304",)  # "This parameter is only supported for cogview-4-250304"
QUALITY = {"hd": "hd", "high": "hd", "xhigh": "hd", "max": "hd", "standard": "standard", "medium": "standard", "low": "standard"}
USER_ID_LENGTH = (6, 128)

# Business codes (docs.bigmodel.cn/cn/api/api-code). Zhipu sends 429 for arrears as well as for load.
CODES = {
    MODERATION: frozenset({"1301"}),
    BILLING: frozenset({"1113", "1304", "1308", "1309", "1310"}),
    RATE_LIMIT: frozenset({"1302", "1303", "1305"}),
    BUSY: frozenset({"1312"}),
    ACCOUNT: frozenset({"1110", "1111", "1112", "1120", "1121"}),
    NO_MODEL: frozenset({"1211"}),
}

# Fields with a mapping of their own, and proxy-only fields Zhipu has no use for.
_MAPPED = frozenset({"size", "quality", "watermark", "user", "safety_identifier", "extra_body"})


# `quality_models`: the upstream models that take `quality` (a list, or one name).
SCHEMA = ChannelSchema(settings={"quality_models": names(DEFAULT_QUALITY_MODELS)})


def _custom_size_ok(size: Size) -> bool:
    low, high = CUSTOM_SIDE
    sides_ok = all(low <= side <= high and side % CUSTOM_STEP == 0 for side in (size.width, size.height))
    return sides_ok and size.pixels <= CUSTOM_MAX_PIXELS


def map_size(text: str, model: str) -> str:
    """The size Zhipu will accept for `text` (canonical WxH or `auto`), never one it would reject."""
    size = parse_size(text) if text != AUTO else None
    if size is None:
        return str(DEFAULT_SIZE)
    if size in SIZES or (model.startswith(CUSTOM_SIZE_PREFIX) and _custom_size_ok(size)):
        return str(size)
    return str(nearest_size(size, SIZES))


def map_quality(value: str) -> str | None:
    """Zhipu's quality for an OpenAI-style value; None: leave it to the provider (`auto`)."""
    if value == "auto":
        return None
    mapped = QUALITY.get(value)
    if mapped is None:
        raise InvalidRequest(
            f"Invalid quality '{value}': CogView accepts standard or hd (high maps to hd, medium and low to standard).",
            param="quality",
            code="invalid_value",
        )
    return mapped


def _user_id(fields: Mapping[str, Any]) -> str | None:
    value = fields.get("user", fields.get("safety_identifier"))
    if value is None:
        return None
    low, high = USER_ID_LENGTH
    if not low <= len(value) <= high:
        raise InvalidRequest(
            f"Invalid user: CogView needs an end-user id of {low} to {high} characters, got {len(value)}.",
            param="user",
            code="invalid_value",
        )
    return str(value)


def build_body(job: Job) -> dict[str, Any]:
    """The Zhipu body; raises InvalidRequest for a value CogView cannot take."""
    plan = job.plan
    fields = plan.fields
    body: dict[str, Any] = {"model": plan.upstream_model, "prompt": plan.prompt}
    if "size" in fields:
        body["size"] = map_size(fields["size"], plan.upstream_model)
    if "quality" in fields and plan.upstream_model in setting(job, SCHEMA, "quality_models"):
        quality = map_quality(fields["quality"])
        if quality is not None:
            body["quality"] = quality
    if "watermark" in fields:
        # Tri-state: an explicit false must reach Zhipu, whose default is a visible watermark.
        body["watermark_enabled"] = fields["watermark"]
    user_id = _user_id(fields)
    if user_id is not None:
        body["user_id"] = user_id
    for name, value in fields.items():
        if name not in _MAPPED and name not in PROXY_FIELDS:
            body[name] = value
    body = merge_extra_body(body, fields.get("extra_body", {}))
    return body


def start(job: Job) -> Step:
    return Send(json_call(job, f"{job.channel.base_url}/images/generations", build_body(job)))


def _business_error(body: bytes) -> tuple[str | None, str | None]:
    """(code, message) from `{"error": {"code": "1301", "message": ...}}`; the code may arrive as a number."""
    error = error_object(body)
    if error is None:
        return None, None
    code, message = error.get("code"), error.get("message")
    return (None if code is None else str(code)), (None if message is None else str(message))


def error_for(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a non-2xx Zhipu answer, keyed on its business code before its HTTP status."""
    code, message = _business_error(response.body)
    if code is None:
        return upstream_failure(job, response)
    text = scrub(f"{message or 'no message'} (zhipu code {code})", (job.api_key,))
    known = coded_error(job, meaning_of(code, CODES), text, response.headers)
    if known is not None:
        return known
    return upstream_failure(job, response)


def parse_answer(body: bytes) -> ImagesResult:
    """`{"created", "data": [{"url"}], "content_filter": [...]}`; ValueError when no image is in it."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("no data[] in the answer")
    urls = [item.get("url") for item in data["data"] if isinstance(item, dict)]
    images = tuple(GeneratedImage(url=url) for url in urls if isinstance(url, str) and url)
    if not images:
        raise ValueError(f"data[] holds no image url (content_filter: {data.get('content_filter')!r})")
    created = data.get("created")
    extra = {"content_filter": data["content_filter"]} if "content_filter" in data else {}
    return ImagesResult(
        images=images,
        created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        extra=extra,
    )


def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
    return images_step(job, response, error_for, lambda answer: parse_answer(answer.body))


SPEC = AdapterSpec(
    name="zhipu",
    schema=SCHEMA,
    start=start,
    advance=advance,
    max_n_per_call=1,
    auth_headers=bearer,
    # CogView takes no output format and its docs do not name the one it makes: the proxy looks at the bytes.
    output_formats=NativeFormats(default=None),
)
