"""Adapter layer: ByteDance Volcengine Ark / BytePlus ModelArk Seedream and SeedEdit (`POST {base_url}/images/generations`).

Mapping: `model` -> the rule's upstream model (a model ID or an `ep-...` endpoint ID); no `n` (one image
per call: the driver fans out). `size` WxH -> kept inside the model family's limits, otherwise scaled
(shape kept) up to its pixel floor or down to its ceiling, so an accepted size never draws a 400
(`auto` -> omitted, the provider's default; SeedEdit -> always `adaptive`, its only value).
`watermark`, `response_format`, `seed`, `guidance_scale` and any other passed-through field go verbatim
and only when present (absence kept: Ark's watermark defaults to ON). `quality` is not sent: Ark has
none. `image`: URLs pass; data URIs get a lower-case format; raw base64 gets a
`data:image/<type>;base64,` prefix after sniffing its magic bytes, or a 400 (param image) when it is no
image type Ark takes. `extra_body` (e.g. `sequential_image_generation`) adds top-level keys (never replaces a mapped one).
Answer: `data[]` items `url`|`b64_json`; items carrying `error` are failures. Policy: when some succeed
they are returned and the failures are listed under `failed_images` ({index, code, message}); when all
fail, the first item's error decides (moderation -> 400). `usage` is kept as Ark sent it; a `size`
shared by every image is reported as the response's `size`.
Failures: *SensitiveContentDetected / *RiskDetection -> moderation 400; QuotaExceeded, SetLimitExceeded,
AccountOverdueError -> 429 insufficient_quota (not retryable); RateLimitExceeded*, *RateLimitExceeded,
InflightBatchsizeExceeded -> 429 retryable; ServerOverloaded -> 503; 5xx -> 502; other 4xx keep status.
Sources: volcengine.com/docs/82379/1541523 (image API), /1299023 (error codes); BytePlus ModelArk copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.adapters.base import AdapterSpec, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.inline_images import sniff_base64
from proxy.adapters.kit import (
    BILLING,
    BUSY,
    MODERATION,
    RATE_LIMIT,
    bad_answer,
    bearer,
    coded_error,
    error_object,
    json_call,
    meaning_of,
    setting,
    upstream_failure,
)
from proxy.core.channel_settings import name_map
from proxy.core.errors import (
    BadGateway,
    InvalidRequest,
    ProxyError,
    UpstreamError,
)
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import NativeFormats
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import PROXY_FIELDS, ChannelSchema
from proxy.core.sizes import AUTO, Size, clamp_ratio, parse_size
from proxy.core.upstream_errors import scrub


@dataclass(frozen=True)
class SizeLimits:
    """What one model family accepts as `size` WxH (total pixels and width/height ratio, inclusive)."""

    min_pixels: int
    max_pixels: int
    max_ratio: float = 16.0
    only: str | None = None  # the family takes this one keyword and nothing else


# Per-family limits from the Ark image API reference (volcengine.com/docs/82379/1541523, BytePlus copy):
# 4.5: [2560x1440, 4096x4096]; 4.0: [1280x720, 4096x4096]; 3.0-t2i: [512x512, 2048x2048]; SeedEdit: adaptive.
FAMILIES: Mapping[str, SizeLimits] = {
    "seedream-4.5": SizeLimits(min_pixels=2560 * 1440, max_pixels=4096 * 4096),
    "seedream-4.0": SizeLimits(min_pixels=1280 * 720, max_pixels=4096 * 4096),
    "seedream-3.0": SizeLimits(min_pixels=512 * 512, max_pixels=2048 * 2048),
    "seededit-3.0": SizeLimits(min_pixels=0, max_pixels=0, only="adaptive"),
}
# Model-ID fragments -> family. Endpoint IDs (`ep-...`) say nothing: the channel setting `model_families`
# maps them (`{ep-2025...: seedream-4.5}`); an unknown model's size is sent as the client gave it.
_FRAGMENTS = (
    ("seedream-4-5", "seedream-4.5"),
    ("seedream-4.5", "seedream-4.5"),
    ("seedream-4-0", "seedream-4.0"),
    ("seedream-4.0", "seedream-4.0"),
    ("seedream-3-0", "seedream-3.0"),
    ("seedream-3.0", "seedream-3.0"),
    ("seededit-3-0", "seededit-3.0"),
    ("seededit-3.0", "seededit-3.0"),
)

# Input image types Ark takes (jpeg, png, webp, bmp, tiff, gif), by MIME type -> its data-URI format.
IMAGE_FORMATS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp", "image/gif": "gif",
                 "image/bmp": "bmp", "image/tiff": "tiff"}

CODES = {BILLING: frozenset({"QuotaExceeded", "SetLimitExceeded", "AccountOverdueError"}), BUSY: frozenset({"ServerOverloaded"})}
_MAPPED = frozenset({"size", "quality", "image", "extra_body"})


# `model_families`: endpoint ID -> the family whose size limits apply (one of FAMILIES).
SCHEMA = ChannelSchema(settings={"model_families": name_map(values=tuple(FAMILIES))})


def family_of(model: str, configured: Mapping[str, str]) -> str | None:
    """The size family of `model`: the channel's `model_families` entry, else read from its name."""
    if model in configured:
        return configured[model]
    lowered = model.lower()
    return next((family for fragment, family in _FRAGMENTS if fragment in lowered), None)


def fit_size(size: Size, limits: SizeLimits) -> Size:
    """`size` scaled (shape kept) to the nearest size within the pixel range; unchanged when already inside."""
    size = clamp_ratio(size, limits.max_ratio)
    if limits.min_pixels <= size.pixels <= limits.max_pixels:
        return size
    scale = math.sqrt((limits.min_pixels if size.pixels < limits.min_pixels else limits.max_pixels) / size.pixels)
    # Rounded before ceil/floor so that float noise (1920.0000001) does not cost a pixel row.
    width, height = round(size.width * scale, 6), round(size.height * scale, 6)
    if size.pixels < limits.min_pixels:
        scaled = Size(math.ceil(width), math.ceil(height))
        return scaled if scaled.pixels >= limits.min_pixels else Size(scaled.width + 1, scaled.height)
    return Size(max(1, math.floor(width)), max(1, math.floor(height)))


def map_size(text: str, family: str | None) -> str | None:
    """Ark's `size` for a canonical client size; None: send none (the provider's default)."""
    limits = FAMILIES.get(family) if family else None
    if limits is not None and limits.only is not None:
        return limits.only
    if text == AUTO:
        return None
    size = parse_size(text)
    if size is None or limits is None:
        return text
    return str(fit_size(size, limits))


def map_image(value: str) -> str:
    """An input image as Ark wants it: a URL, or `data:image/<lower-case format>;base64,...`."""
    if value.startswith(("http://", "https://")):
        return value
    if value[:5].lower() == "data:":
        header, sep, payload = value.partition(",")
        if sep and ";base64" in header.lower():
            return f"{header.lower()},{payload}"
    else:
        image_format = IMAGE_FORMATS.get(sniff_base64(value.strip()) or "")
        if image_format is not None:
            return f"data:image/{image_format};base64,{value.strip()}"
    raise InvalidRequest(
        "Invalid image: expected an http(s) URL, a data:image/...;base64 URI, or base64 of a jpeg, png, webp, "
        "bmp, tiff or gif image.",
        param="image",
        code="invalid_value",
    )


def build_body(job: Job) -> dict[str, Any]:
    """The Ark body; raises InvalidRequest for an input image Ark cannot take."""
    plan = job.plan
    fields = plan.fields
    body: dict[str, Any] = {"model": plan.upstream_model, "prompt": plan.prompt}
    family = family_of(plan.upstream_model, setting(job, SCHEMA, "model_families"))
    size = map_size(fields["size"], family) if "size" in fields else None
    if size is not None:
        body["size"] = size
    if "image" in fields:
        image = fields["image"]
        body["image"] = [map_image(item) for item in image] if isinstance(image, list) else map_image(image)
    for name, value in fields.items():
        # response_format is Ark's own field too: forwarded when the rule passes it through.
        if name not in _MAPPED and (name not in PROXY_FIELDS or name == "response_format"):
            body[name] = value
    body = merge_extra_body(body, fields.get("extra_body", {}))
    return body


def start(job: Job) -> Step:
    return Send(json_call(job, f"{job.channel.base_url}/images/generations", build_body(job)))


def _is_moderation(code: str) -> bool:
    return code.endswith(("SensitiveContentDetected", "RiskDetection"))


def _is_rate_limit(code: str) -> bool:
    return code.startswith("RateLimitExceeded") or code.endswith("RateLimitExceeded") or code == "InflightBatchsizeExceeded"


def _param_of(code: str, param: Any) -> str | None:
    # `InvalidParameter.Size` names the parameter in the code when `param` is empty.
    if isinstance(param, str) and param:
        return param
    kind, dot, name = code.partition(".")
    return name.lower() if dot and kind in ("InvalidParameter", "MissingParameter") else None


def _meaning(code: str) -> str | None:
    if _is_moderation(code):
        return MODERATION
    if _is_rate_limit(code):
        return RATE_LIMIT
    return meaning_of(code, CODES)


def classify(job: Job, error: Mapping[str, Any], status: int, headers: Mapping[str, str]) -> ProxyError | None:
    """The ProxyError for an Ark `error` object whose code says more than the status; None: by status."""
    code = str(error.get("code") or "")
    text = scrub(f"{error.get('message') or 'no message'} (ark code {code or 'none'})", (job.api_key,))
    known = coded_error(job, _meaning(code), text, headers)
    if known is not None:
        return known
    if 400 <= status < 500 and status not in (401, 403, 429):
        # Ark's `type` (BadRequest, NotFound) is no OpenAI type: the client sees invalid_request_error.
        return UpstreamError(text, status=status, param=_param_of(code, error.get("param")), code=code or None)
    return None


def error_for(job: Job, response: UpstreamResponse) -> ProxyError:
    error = error_object(response.body)
    mapped = classify(job, error, response.status, response.headers) if error is not None else None
    return mapped if mapped is not None else upstream_failure(job, response)


def _image(item: Mapping[str, Any]) -> GeneratedImage | None:
    url, b64 = item.get("url"), item.get("b64_json")
    url = url if isinstance(url, str) and url else None
    b64 = b64 if isinstance(b64, str) and b64 else None
    return GeneratedImage(url=url, b64_json=b64) if url or b64 else None


def _failure(index: int, item: Mapping[str, Any]) -> dict[str, Any]:
    error = item.get("error")
    if not isinstance(error, dict):
        error = {}
    return {"index": index, "code": error.get("code"), "message": error.get("message")}


def _scrubbed(failure: dict[str, Any], job: Job) -> dict[str, Any]:
    message = failure["message"]
    return {**failure, "message": scrub(message, (job.api_key,)) if isinstance(message, str) else message}


def _extra(sizes: list[Any], failures: list[dict[str, Any]], job: Job) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if len(set(sizes)) == 1 and isinstance(sizes[0], str):
        extra["size"] = sizes[0]
    if failures:
        extra["failed_images"] = [_scrubbed(failure, job) for failure in failures]
    return extra


def answer_step(job: Job, data: Mapping[str, Any]) -> Step:
    """Done with the images that succeeded, or Fail when none did (the first item's error decides)."""
    items = data.get("data")
    if not isinstance(items, list):
        items = []
    images: list[GeneratedImage] = []
    sizes: list[Any] = []
    failures: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        image = _image(item) if isinstance(item, dict) else None
        if image is not None:
            images.append(image)
            sizes.append(item.get("size"))
        else:
            failures.append(_failure(index, item if isinstance(item, dict) else {}))
    if images:
        created, usage = data.get("created"), data.get("usage")
        return Done(ImagesResult(
            images=tuple(images),
            created=created if isinstance(created, int) and not isinstance(created, bool) else None,
            usage=usage if isinstance(usage, dict) else None,
            extra=_extra(sizes, failures, job),
        ))
    return Fail(_all_failed(job, data, failures))


def _all_failed(job: Job, data: Mapping[str, Any], failures: list[dict[str, Any]]) -> ProxyError:
    error = failures[0] if failures and failures[0]["code"] else data.get("error")
    if isinstance(error, dict):
        mapped = classify(job, error, 502, {})
        if mapped is not None:
            return mapped
        text = scrub(f"{error.get('message') or 'no message'} (ark code {error.get('code') or 'none'})", (job.api_key,))
        return BadGateway(f"channel '{job.channel.name}' generated no image: {text}", code="upstream_error", retryable=True)
    # A 200 that carries no images is a failure, never a success with an empty list.
    return bad_answer(job, "data[] holds no image")


def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
    if not 200 <= response.status < 300:
        return Fail(error_for(job, response))
    try:
        data = json.loads(response.body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return Fail(bad_answer(job, "not a JSON object"))
    return answer_step(job, data)


def output_formats(job: Job) -> NativeFormats:
    """Ark writes JPEG; Seedream 5 models also take `output_format` png|jpeg (sent verbatim)."""
    if "seedream-5" in job.plan.upstream_model.lower():
        return NativeFormats(asked=frozenset({"png", "jpeg"}), default="jpeg")
    return NativeFormats(default="jpeg")


SPEC = AdapterSpec(
    name="seedream",
    schema=SCHEMA,
    start=start,
    advance=advance,
    max_n_per_call=1,
    auth_headers=bearer,
    output_formats=output_formats,
)
