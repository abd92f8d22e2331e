"""Adapter layer: Stability AI v2beta Stable Image generate (ultra / core / sd3), multipart/form-data always.

Mapping: upstream model `stable-image-ultra` -> `/v2beta/stable-image/generate/ultra`, `stable-image-core`
-> `.../core`, any `sd3*` name (sd3.5-large, sd3.5-large-turbo, sd3.5-medium, ...) -> `.../sd3` with form
field `model`. `size` -> `aspect_ratio`, the nearest of 16:9 1:1 21:9 2:3 3:2 4:5 5:4 9:16 9:21 (`auto`:
not sent, Stability's 1:1); a forwarded `aspect_ratio` wins and is snapped to that list the same way.
`negative_prompt`, `style_preset` go as they are; `seed` -1 -> 0 (both mean random); `output_format`
jpg -> jpeg. `image` (one data URI or raw base64) becomes a file part with `strength` (seed 001's 0.5 when
absent); sd3 adds `mode=image-to-image`, core takes no image, and `aspect_ratio` is not sent with one.
`quality` has no Stability meaning (the tier is the endpoint) and is not sent. Any other forwarded field and
each `extra_body` key go as form fields verbatim (an extra_body key naming a field already set is a 400).
One image per call; the driver fans out for n > 1.
Auth `Authorization: Bearer`; `Accept` from the channel setting `accept` (application/json, the default,
or image/*); both answer shapes are read. `finish_reason` CONTENT_FILTERED in a 200 -> 400 moderation.
Errors `{"id", "name", "errors"}`: content_moderation -> 400 moderation_blocked; 402 -> insufficient_quota,
not retried; 429 -> retryable with Retry-After 60 (the documented lockout); the rest per upstream_errors.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.adapters.base import AdapterSpec, Call, Job, Send, Step, UpstreamResponse
from proxy.adapters.inline_images import inline_image
from proxy.adapters.kit import bearer, images_step, misconfigured, setting, upstream_failure
from proxy.core.channel_settings import one_of
from proxy.core.errors import ContentPolicyViolation, InvalidRequest, ProxyError, RateLimited, UpstreamError
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import FORMATS, NativeFormats
from proxy.core.mime import EXTENSIONS, sniff_image_type
from proxy.core.multipart import Part, encode, file_part, text_part
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.sizes import AUTO, Size, nearest_ratio, parse_ratio, parse_size
from proxy.core.upstream_errors import scrub

DEFAULT_BASE_URL = "https://api.stability.ai"
ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
ENDPOINTS = {"stable-image-ultra": "ultra", "stable-image-core": "core"}
IMAGE_ENDPOINTS = frozenset({"ultra", "sd3"})  # core is text-to-image only
ACCEPTS = ("application/json", "image/*")
# `accept`: the answer's shape, JSON with base64 or the bytes.
SCHEMA = ChannelSchema(settings={"accept": one_of(*ACCEPTS, default=ACCEPTS[0])}, requires_base_url=False)
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
FORMAT_NAMES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}  # OpenAI's output_format spelling
INPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
SEED_MAX = 4_294_967_294
DEFAULT_STRENGTH = 0.5  # seed 001: strength defaults to 0.5
LOCKOUT_SECONDS = 60.0  # Stability locks a key out for 60 s after a 429 and sends no Retry-After
# Plan fields this module maps itself; any other forwarded field becomes a form field as it is.
MAPPED = frozenset(
    {"size", "quality", "aspect_ratio", "negative_prompt", "seed", "style_preset", "output_format", "image",
     "strength", "extra_body"}
)


@dataclass(frozen=True)
class Asked:
    """What start() asked for, carried to advance(): the MIME type a JSON answer's image will have."""

    content_type: str


def endpoint_for(upstream_model: str) -> str | None:
    """`ultra`, `core` or `sd3` for an upstream model name; None when it is no Stable Image model."""
    if upstream_model in ENDPOINTS:
        return ENDPOINTS[upstream_model]
    return "sd3" if upstream_model.startswith("sd3") else None


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def aspect_ratio(fields: Mapping[str, Any]) -> str | None:
    """The Stability ratio for the client's `aspect_ratio` (wins) or `size`; None: Stability's default."""
    ratio = parse_ratio(fields["aspect_ratio"]) if "aspect_ratio" in fields else None
    if ratio is not None:
        return nearest_ratio(Size(*ratio), ASPECT_RATIOS)
    size = parse_size(fields.get("size", AUTO))
    return None if size is None else nearest_ratio(size, ASPECT_RATIOS)


def _seed(value: int) -> str:
    # The request validator allows -1 (many APIs' "random"); Stability spells random as 0.
    if value > SEED_MAX:
        raise InvalidRequest(f"'seed' must be at most {SEED_MAX} for this model, got {value}.", param="seed",
                             code="invalid_value")
    return str(max(value, 0))


def output_format(fields: Mapping[str, Any], endpoint: str) -> str | None:
    if "output_format" not in fields:
        return None
    wanted = OUTPUT_FORMATS.get(fields["output_format"])
    if wanted is None or (endpoint == "sd3" and wanted == "webp"):
        allowed = "png, jpeg" if endpoint == "sd3" else "png, jpeg, webp"
        raise InvalidRequest(f"Invalid output_format '{fields['output_format']}' for this model. Supported values: {allowed}.",
                             param="output_format", code="invalid_value")
    return wanted


def _image_bytes(value: Any) -> tuple[bytes, str]:
    """(bytes, MIME type) of the one input image, given as a data URI or raw base64."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidRequest("This model takes exactly one input image.", param="image", code="invalid_value")
        value = value[0]
    image = inline_image(str(value))
    try:
        data = base64.b64decode(image.payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'image' is neither valid base64 nor a base64 data URI.", param="image",
                             code="invalid_value") from None
    # The whole file is at hand here: its type from all of it (an SVG's tag may lie past the head).
    content_type = sniff_image_type(data) or image.declared
    if content_type not in INPUT_TYPES:
        raise InvalidRequest("'image' must be a PNG, JPEG or WebP image.", param="image", code="invalid_value")
    return data, content_type


def _image_parts(fields: Mapping[str, Any], endpoint: str) -> list[Part]:
    if "image" not in fields:
        return []
    if endpoint not in IMAGE_ENDPOINTS:
        raise InvalidRequest("This model generates from text only: 'image' is not supported.", param="image",
                             code="unsupported_parameter")
    data, content_type = _image_bytes(fields["image"])
    strength = fields.get("strength", DEFAULT_STRENGTH)
    mode = [text_part("mode", "image-to-image")] if endpoint == "sd3" else []
    return [*mode, text_part("strength", _form_value(strength)),
            file_part("image", data, f"image.{EXTENSIONS[content_type]}", content_type)]


def build_parts(job: Job, endpoint: str, fmt: str | None) -> list[Part]:
    """The form, in a fixed order: prompt and settings first, the image file last."""
    fields = job.plan.fields
    parts = [text_part("prompt", job.plan.prompt)]
    if endpoint == "sd3":
        parts.append(text_part("model", job.plan.upstream_model))
    ratio = aspect_ratio(fields)
    # Stability ignores aspect_ratio with an input image (the output follows the input's shape).
    if ratio is not None and "image" not in fields:
        parts.append(text_part("aspect_ratio", ratio))
    for name in ("negative_prompt", "style_preset"):
        if name in fields:
            parts.append(text_part(name, _form_value(fields[name])))
    if "seed" in fields:
        parts.append(text_part("seed", _seed(fields["seed"])))
    if fmt is not None:
        parts.append(text_part("output_format", fmt))
    parts += [text_part(name, _form_value(value)) for name, value in fields.items() if name not in MAPPED]
    parts += _image_parts(fields, endpoint)
    return _with_extra_body(parts, fields.get("extra_body", {}))


def _with_extra_body(parts: list[Part], extra: Mapping[str, Any]) -> list[Part]:
    """extra_body entries as more form fields, before the file part."""
    # The shared rule: extra_body may add fields but never replace one the adapter set (a 400 naming it).
    merge_extra_body({part.name: part.data for part in parts}, extra)
    texts = [part for part in parts if part.filename is None]
    files = [part for part in parts if part.filename is not None]
    return texts + [text_part(name, _form_value(value)) for name, value in extra.items()] + files


def start(job: Job) -> Step:
    endpoint = endpoint_for(job.plan.upstream_model)
    if endpoint is None:
        raise misconfigured(job, f"'{job.plan.upstream_model}' is not a Stable Image model "
                                 "(stable-image-ultra, stable-image-core or sd3*)")
    fmt = output_format(job.plan.fields, endpoint)
    form = encode(build_parts(job, endpoint, fmt))
    headers = {**job.channel.headers, **bearer(job.api_key), "Content-Type": form.content_type,
               "Accept": setting(job, SCHEMA, "accept")}
    base_url = job.channel.base_url or DEFAULT_BASE_URL
    call = Call("POST", f"{base_url}/v2beta/stable-image/generate/{endpoint}", headers=headers, data=form.body)
    return Send(call, state=Asked(content_type=f"image/{fmt or 'png'}"))


def _stability_error(body: bytes) -> tuple[str | None, str | None]:
    """(name, message) from `{"id", "name", "errors": [...]}`; (None, None) for any other body."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None, None
    errors = data.get("errors")
    texts = [str(item) for item in errors] if isinstance(errors, list) else []
    return data["name"], "; ".join(texts) or data["name"]


def error_for(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a non-2xx Stability answer."""
    secrets = (job.api_key,)
    name, message = _stability_error(response.body)
    if name == "content_moderation":
        return ContentPolicyViolation(scrub(f"Your request was rejected by Stability's content moderation: {message}", secrets))
    if response.status == 402:
        # Out of credits: the channel's account must be topped up, so retrying cannot help.
        text = scrub(message or "payment required", secrets)
        return UpstreamError(f"channel '{job.channel.name}' has no credits left: {text}", status=402,
                             type="insufficient_quota", code="insufficient_quota")
    # Put Stability's envelope into OpenAI's shape so the shared mapping reads its message and name.
    body = response.body if name is None else json.dumps({"error": {"message": message, "code": name}}).encode()
    error = upstream_failure(job, response, body=body)
    if isinstance(error, RateLimited) and error.retryable and error.retry_after is None:
        error.retry_after = LOCKOUT_SECONDS
    return error


@dataclass(frozen=True)
class Answer:
    image: str | None  # base64
    finish_reason: str | None
    seed: int | None
    content_type: str


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def parse_answer(response: UpstreamResponse, asked: Asked) -> Answer:
    """The image and its finish reason from a JSON or raw-bytes answer; ValueError for anything else."""
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        data = json.loads(response.body)
        if not isinstance(data, dict):
            raise ValueError("the JSON answer is not an object")
        image = data.get("image")
        finish = data.get("finish_reason")
        return Answer(image if isinstance(image, str) and image else None, finish if isinstance(finish, str) else None,
                      _int_or_none(data.get("seed")), asked.content_type)
    if media.startswith("image/"):
        image = base64.b64encode(response.body).decode("ascii") if response.body else None
        return Answer(image, response.headers.get("finish-reason"), _int_or_none(response.headers.get("seed")), media)
    raise ValueError(f"unexpected content type '{media or 'none'}'")


def _result(answer: Answer, image: str) -> ImagesResult:
    extra: dict[str, Any] = {}
    if answer.content_type in FORMAT_NAMES:
        extra["output_format"] = FORMAT_NAMES[answer.content_type]
    if answer.seed is not None:
        extra["seeds"] = [answer.seed]
    return ImagesResult(images=(GeneratedImage(b64_json=image, content_type=answer.content_type),), extra=extra)


def images(response: UpstreamResponse, asked: Asked) -> ImagesResult:
    """The image of a 2xx answer; ValueError when it carries none (a filtered one is a moderation error)."""
    answer = parse_answer(response, asked)
    # A filtered output is still a 200 (with a blurred image or none): it must not pass as a success.
    if answer.finish_reason == "CONTENT_FILTERED":
        raise ContentPolicyViolation("The generated image was rejected by Stability's content filter.")
    if answer.finish_reason not in (None, "SUCCESS") or answer.image is None:
        raise ValueError(f"finish reason {answer.finish_reason}" if answer.image else "no image in the answer")
    return _result(answer, answer.image)


def advance(job: Job, state: Asked, response: UpstreamResponse) -> Step:
    return images_step(job, response, error_for, lambda answer: images(answer, state))


def output_formats(job: Job) -> NativeFormats:
    """Ultra and Core make png, jpeg and webp; SD3 png and jpeg (Stability's v2beta reference); png by default."""
    endpoint = endpoint_for(job.plan.upstream_model)
    return NativeFormats(asked=frozenset({"png", "jpeg"} if endpoint == "sd3" else FORMATS), default="png")


SPEC = AdapterSpec(
    name="stability",
    schema=SCHEMA,
    start=start,
    advance=advance,
    max_n_per_call=1,
    needs_image_bytes=True,
    output_formats=output_formats,
)
