"""Adapter layer: Google's Generative Language API, Imagen (`:predict`) and Gemini image models (`:generateContent`).

Family from the upstream model: `imagen-*` -> `POST {base}/models/{model}:predict`; any other name
(gemini-2.5-flash-image, gemini-3-pro-image-preview, ...) -> `:generateContent`. Auth `x-goog-api-key`.
Imagen: `instances[0].prompt`; `parameters.sampleCount` = n, always explicit (Imagen's default is 4);
`aspectRatio` the nearest of 1:1 3:4 4:3 9:16 16:9; `sampleImageSize` 2K when the size is nearer 4 MP than
1 MP; `output_format` png|jpeg|jpg -> `outputOptions.mimeType`, `output_compression` -> `compressionQuality`;
the channel setting `person_generation` -> `personGeneration`. Missing predictions were filtered: none left
-> 400 moderation; some -> returned, with `filtered_images` (and `filtered_reasons`) in the response.
Gemini: `contents[0].parts` = the prompt, then each `image` (data URI or raw base64) as `inlineData`;
`responseModalities` from the setting `response_modalities` (default TEXT+IMAGE); `imageConfig.aspectRatio`
the nearest of its ten ratios and `imageSize` 2K/4K by pixel count (1K, the default, is never sent). Image
parts are the images, the model's text is their `revised_prompt` (thought parts are skipped); finishReason
IMAGE_SAFETY/SAFETY/PROHIBITED_CONTENT/... or promptFeedback.blockReason -> 400 moderation; usageMetadata
-> `usage`. Both: a forwarded `aspect_ratio` wins over `size`; `extra_body` adds keys at any depth (never replaces);
`quality` is not sent; any other forwarded field -> 400 naming it (the Gemini API has no such parameter).
Errors `{"error": {"code", "message", "status", "details"}}`: 429 -> retryable, Retry-After from RetryInfo;
400 API_KEY_INVALID -> the channel's key was refused (502); the rest per upstream_errors.
Imagen takes `n` natively (sampleCount 1..4, one call); Gemini has no `n`, so the driver fans out one call per image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.adapters.base import AdapterSpec, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.inline_images import inline_image
from proxy.adapters.kit import bad_answer, header_key, json_call, setting, upstream_failure
from proxy.core.channel_settings import names, one_of
from proxy.core.errors import BadGateway, ContentPolicyViolation, InvalidRequest, ProxyError, RateLimited
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import NativeFormats
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.sizes import AUTO, Size, nearest_ratio, parse_ratio, parse_size
from proxy.core.upstream_errors import scrub, usable_wait

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
IMAGEN = "imagen"
GEMINI = "gemini"
# Imagen's `sampleCount` range (Imagen 4 on the Gemini API, checked 2026-12-04).
IMAGEN_MAX_N = 4
IMAGEN_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
GEMINI_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGEN_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg"}
DEFAULT_MODALITIES = ("TEXT", "IMAGE")
# Imagen's personGeneration values (sent only when the channel sets one; Google's default is allow_adult).
PERSON_GENERATION = ("dont_allow", "allow_adult", "allow_all")
AUTH = header_key("x-goog-api-key")
# Forwarded fields each family understands; anything else would be an upstream 400, so it is a 400 here.
SUPPORTED = {
    IMAGEN: frozenset({"size", "quality", "aspect_ratio", "output_format", "output_compression", "extra_body"}),
    GEMINI: frozenset({"size", "quality", "aspect_ratio", "image", "extra_body"}),
}
SAFETY_FINISH = frozenset(
    {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
     "IMAGE_RECITATION"}
)
_MEGAPIXEL = 1024 * 1024
# Tiers by pixel count: 1K ~ 1 MP, 2K ~ 4 MP, 4K ~ 16 MP; the cut-offs are their geometric means.
TIERS = ((2 * _MEGAPIXEL, "1K"), (8 * _MEGAPIXEL, "2K"))


@dataclass(frozen=True)
class Asked:
    """What start() asked for, carried to advance()."""

    family: str
    count: int


def family_of(upstream_model: str) -> str:
    return IMAGEN if upstream_model.removeprefix("models/").startswith("imagen") else GEMINI


def max_n_per_call(job: Job) -> int:
    return IMAGEN_MAX_N if family_of(job.plan.upstream_model) == IMAGEN else 1


def _modalities_have_image(values: Mapping[str, Any]) -> tuple[str, str] | None:
    # An image model asked for text alone would answer with no image.
    if "IMAGE" in values["response_modalities"]:
        return None
    return "response_modalities", f"must include IMAGE, got {list(values['response_modalities'])!r}"


SCHEMA = ChannelSchema(
    settings={
        "person_generation": one_of(*PERSON_GENERATION),
        "response_modalities": names(DEFAULT_MODALITIES, allowed=DEFAULT_MODALITIES),
    },
    relations=(_modalities_have_image,),
    requires_base_url=False,
)


def _wanted_shape(fields: Mapping[str, Any]) -> Size | None:
    """The shape the client asked for: its `aspect_ratio` (wins) or its `size`; None for auto or absent."""
    ratio = parse_ratio(fields["aspect_ratio"]) if "aspect_ratio" in fields else None
    return Size(*ratio) if ratio is not None else parse_size(fields.get("size", AUTO))


def image_tier(fields: Mapping[str, Any]) -> str:
    """`1K`, `2K` or `4K` for the requested `size` (`1K` when there is none)."""
    size = parse_size(fields.get("size", AUTO))
    if size is None:
        return "1K"
    return next((tier for limit, tier in TIERS if size.pixels < limit), "4K")


def _check_fields(fields: Mapping[str, Any], family: str, model: str) -> None:
    for name in fields:
        if name not in SUPPORTED[family]:
            raise InvalidRequest(f"'{name}' is not supported by model '{model}' on the Gemini API.", param=name,
                                 code="unsupported_parameter")


def _imagen_output(fields: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "output_format" in fields:
        mime = IMAGEN_FORMATS.get(fields["output_format"])
        if mime is None:
            raise InvalidRequest(f"Invalid output_format '{fields['output_format']}' for this model. Supported values: "
                                 "png, jpeg.", param="output_format", code="invalid_value")
        options["mimeType"] = mime
    if "output_compression" in fields:
        options["compressionQuality"] = fields["output_compression"]
    return options


def imagen_body(job: Job) -> dict[str, Any]:
    fields = job.plan.fields
    parameters: dict[str, Any] = {"sampleCount": job.plan.n}
    shape = _wanted_shape(fields)
    if shape is not None:
        parameters["aspectRatio"] = nearest_ratio(shape, IMAGEN_RATIOS)
    if image_tier(fields) != "1K":
        parameters["sampleImageSize"] = "2K"  # Imagen's largest
    output = _imagen_output(fields)
    if output:
        parameters["outputOptions"] = output
    person_generation = setting(job, SCHEMA, "person_generation")
    if person_generation is not None:
        parameters["personGeneration"] = person_generation
    return {"instances": [{"prompt": job.plan.prompt}], "parameters": parameters}


def inline_data(value: str) -> dict[str, Any]:
    """A Gemini `inlineData` part from a data URI or raw base64 (Gemini wants raw base64 plus a mimeType)."""
    image = inline_image(value)
    mime = image.media_type()
    if mime is None or not mime.startswith("image/"):
        raise InvalidRequest("'image' is not a recognisable image (PNG, JPEG, WebP or GIF).", param="image",
                             code="invalid_value")
    return {"inlineData": {"mimeType": mime, "data": image.payload}}


def gemini_body(job: Job) -> dict[str, Any]:
    fields = job.plan.fields
    images = fields.get("image", [])
    parts = [{"text": job.plan.prompt}, *(inline_data(item) for item in ([images] if isinstance(images, str) else images))]
    image_config: dict[str, Any] = {}
    shape = _wanted_shape(fields)
    if shape is not None:
        image_config["aspectRatio"] = nearest_ratio(shape, GEMINI_RATIOS)
    tier = image_tier(fields)
    if tier != "1K":
        image_config["imageSize"] = tier
    config: dict[str, Any] = {"responseModalities": list(setting(job, SCHEMA, "response_modalities"))}
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def start(job: Job) -> Step:
    family = family_of(job.plan.upstream_model)
    model = job.plan.upstream_model.removeprefix("models/")
    _check_fields(job.plan.fields, family, job.plan.model)
    body = imagen_body(job) if family == IMAGEN else gemini_body(job)
    # Nested objects merge, so extra_body can add to `parameters` or `generationConfig` (never replace).
    body = merge_extra_body(body, job.plan.fields.get("extra_body", {}))
    method = "predict" if family == IMAGEN else "generateContent"
    url = f"{job.channel.base_url or DEFAULT_BASE_URL}/models/{model}:{method}"
    return Send(json_call(job, url, body, AUTH), state=Asked(family, job.plan.n))


@dataclass(frozen=True)
class GoogleError:
    status: str | None  # INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...
    message: str | None
    reasons: tuple[str, ...]  # google.rpc.ErrorInfo reasons, e.g. API_KEY_INVALID
    retry_delay: float | None  # google.rpc.RetryInfo, in seconds


def _seconds(text: Any) -> float | None:
    # RetryInfo.retryDelay is a protobuf Duration in JSON: "13s", "0.5s".
    if not isinstance(text, str) or not text.endswith("s"):
        return None
    try:
        return usable_wait(float(text[:-1]))  # bounded as a Retry-After header is
    except ValueError:
        return None


def parse_google_error(body: bytes) -> GoogleError:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return GoogleError(None, None, (), None)
    details = [item for item in error.get("details") or [] if isinstance(item, dict)]
    reasons = tuple(str(item["reason"]) for item in details if "ErrorInfo" in str(item.get("@type")) and "reason" in item)
    delays = [_seconds(item.get("retryDelay")) for item in details if "RetryInfo" in str(item.get("@type"))]
    status, message = error.get("status"), error.get("message")
    return GoogleError(str(status) if status else None, str(message) if message else None, reasons,
                       next((delay for delay in delays if delay is not None), None))


def error_for(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a non-2xx Google answer."""
    secrets = (job.api_key,)
    parsed = parse_google_error(response.body)
    message = scrub(parsed.message or "", secrets)[:500]
    if "API_KEY_INVALID" in parsed.reasons and not job.channel.passthrough_key:
        # Google answers a bad key with 400, but it is the channel's key, not the client's request.
        return BadGateway(f"channel '{job.channel.name}' was refused by its upstream (HTTP {response.status}): {message}",
                          code="upstream_auth_failed", retryable=True)
    if response.status == 400 and "responsible ai" in message.lower():
        # Imagen refuses a prompt with a 400 citing Google's Responsible AI practices (observed, not documented).
        return ContentPolicyViolation(f"Your request was rejected by Google's safety system: {message}")
    # Put Google's envelope into OpenAI's shape so the shared mapping keeps its message and status name.
    body = response.body if parsed.message is None else json.dumps(
        {"error": {"message": parsed.message, "code": (parsed.status or "").lower() or None}}).encode()
    error = upstream_failure(job, response, body=body)
    if isinstance(error, RateLimited) and error.retryable and parsed.retry_delay is not None:
        error.retry_after = parsed.retry_delay
    return error


def imagen_result(job: Job, data: dict[str, Any], asked: Asked) -> Step:
    if isinstance(data.get("error"), dict):  # an error object with a 200 is the upstream's failure, not a filter's
        return Fail(bad_answer(job, scrub(str(data["error"].get("message") or data["error"]), (job.api_key,))[:300],
                               retryable=True))
    predictions = data.get("predictions", [])
    if not isinstance(predictions, list):
        return Fail(bad_answer(job, "predictions is not a list"))
    entries = [item for item in predictions if isinstance(item, dict)]
    images = tuple(
        GeneratedImage(b64_json=item["bytesBase64Encoded"], content_type=item.get("mimeType") or None)
        for item in entries
        if isinstance(item.get("bytesBase64Encoded"), str) and item["bytesBase64Encoded"]
    )
    reasons = [str(item["raiFilteredReason"]) for item in entries if item.get("raiFilteredReason")]
    if not images:
        # Imagen drops filtered samples silently: an answer with none left means they were all filtered.
        why = f": {'; '.join(reasons)}" if reasons else ""
        return Fail(ContentPolicyViolation(f"Every generated image was rejected by Google's safety filters{why}"))
    extra: dict[str, Any] = {}
    if len(images) < asked.count:
        extra["filtered_images"] = asked.count - len(images)
        if reasons:
            extra["filtered_reasons"] = reasons
    return Done(ImagesResult(images=images, extra=extra))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_from(meta: Any) -> dict[str, Any] | None:
    """OpenAI's image `usage` from Gemini's usageMetadata; thinking tokens count as output, as Google bills them."""
    if not isinstance(meta, dict):
        return None
    input_tokens = _count(meta.get("promptTokenCount"))
    output_tokens = _count(meta.get("candidatesTokenCount")) + _count(meta.get("thoughtsTokenCount"))
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": _count(meta.get("totalTokenCount")) or input_tokens + output_tokens,
    }
    by_modality = {
        str(item.get("modality")).lower(): _count(item.get("tokenCount"))
        for item in meta.get("promptTokensDetails") or []
        if isinstance(item, dict)
    }
    if by_modality:
        usage["input_tokens_details"] = {"text_tokens": by_modality.get("text", 0), "image_tokens": by_modality.get("image", 0)}
    return usage


def _parts(candidate: Any) -> list[dict[str, Any]]:
    content = candidate.get("content") if isinstance(candidate, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    # Thought parts (gemini-3-pro-image) hold drafts and reasoning, not the answer.
    return [part for part in parts or [] if isinstance(part, dict) and not part.get("thought")]


def _inline(part: dict[str, Any]) -> GeneratedImage | None:
    # Responses are camelCase; proto-JSON relays may answer in snake_case.
    inline = part.get("inlineData") or part.get("inline_data")
    if not isinstance(inline, dict) or not isinstance(inline.get("data"), str) or not inline["data"]:
        return None
    mime = inline.get("mimeType") or inline.get("mime_type")
    return GeneratedImage(b64_json=inline["data"], content_type=mime if isinstance(mime, str) else None)


def gemini_result(job: Job, data: dict[str, Any]) -> Step:
    feedback = data.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if block:
        return Fail(ContentPolicyViolation(f"Your prompt was rejected by Google's safety system (blockReason {block})."))
    raw = data.get("candidates")
    candidates: list[Any] = raw if isinstance(raw, list) else []
    parts = [part for candidate in candidates for part in _parts(candidate)]
    text = " ".join(part["text"].strip() for part in parts if isinstance(part.get("text"), str)).strip() or None
    images = tuple(image for image in map(_inline, parts) if image is not None)
    finishes = [str(c.get("finishReason")) for c in candidates if isinstance(c, dict) and c.get("finishReason")]
    if not images:
        unsafe = [reason for reason in finishes if reason in SAFETY_FINISH]
        if unsafe:
            return Fail(ContentPolicyViolation(f"The image was rejected by Google's safety system (finishReason {unsafe[0]})."))
        said = f"; the model said: {scrub(text, (job.api_key,))[:300]}" if text else ""
        return Fail(bad_answer(job, f"no image part (finishReason {', '.join(finishes) or 'none'}){said}"))
    images = tuple(GeneratedImage(b64_json=i.b64_json, content_type=i.content_type, revised_prompt=text) for i in images)
    return Done(ImagesResult(images=images, usage=usage_from(data.get("usageMetadata"))))


def advance(job: Job, state: Asked, response: UpstreamResponse) -> Step:
    if not 200 <= response.status < 300:
        return Fail(error_for(job, response))
    try:
        data = json.loads(response.body)
    except (ValueError, RecursionError) as exc:
        return Fail(bad_answer(job, f"the answer is not JSON ({exc})"))
    if not isinstance(data, dict):
        return Fail(bad_answer(job, "the answer is not a JSON object"))
    return imagen_result(job, data, state) if state.family == IMAGEN else gemini_result(job, data)


# Imagen: outputOptions.mimeType image/png (the default) or image/jpeg, compressionQuality for JPEG.
# Gemini image models take no output format; their inline images carry their own type (looked at, not assumed).
IMAGEN_OUTPUT = NativeFormats(asked=frozenset({"png", "jpeg"}), default="png", compression=True)
GEMINI_OUTPUT = NativeFormats(default=None)


def output_formats(job: Job) -> NativeFormats:
    return IMAGEN_OUTPUT if family_of(job.plan.upstream_model) == IMAGEN else GEMINI_OUTPUT


SPEC = AdapterSpec(
    name="gemini",
    schema=SCHEMA,
    start=start,
    advance=advance,
    max_n_per_call=max_n_per_call,
    needs_image_bytes=True,
    output_formats=output_formats,
)
