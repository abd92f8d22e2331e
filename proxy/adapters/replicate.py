"""Adapter layer: Replicate predictions, a task API: create (waiting up to `wait` seconds), then poll.

Create: upstream model `owner/name` (an official model) -> `POST {base_url}/models/{owner}/{name}/predictions`;
`owner/name:version` -> `POST {base_url}/predictions` with `"version": "<version id>"`. base_url defaults to
https://api.replicate.com/v1; auth `Authorization: Bearer <token>`; header `Prefer: wait=<wait>` (channel
setting, 1-60, default 60; 0 turns it off) so a fast model finishes inside the create call.
Body `{"input": {...}}`, inputs per model, so the mapping is deliberately small:
`prompt`; `size` -> `aspect_ratio` (the nearest of the channel's `aspect_ratios`, default 1:1 16:9 9:16 4:3 3:4
3:2 2:3 21:9 9:21 4:5 5:4) or, with `size_mode: width_height`, `width` and `height` as given; `auto` sends
nothing. A forwarded `aspect_ratio` wins (snapped to the list; with width_height it shapes size's pixels).
`seed` (-1 means random: not sent), `negative_prompt` as is, `output_format` png|jpg|webp (jpeg -> jpg; others
400), `strength` -> `prompt_strength`, `image` -> the input named by `image_input` (default `image`), a URL
or data URI as given, raw base64 wrapped in a data URI after sniffing its type, one image as a string, several
as a list. `quality` has no Replicate meaning and is not sent. Other forwarded fields go into `input` verbatim,
`extra_body` is merged into `input` last. No native `n` here: one image per call, the driver fans out.
Prediction `{"id", "status", "output", "error", "urls": {"get", "cancel"}, "metrics"}`: succeeded (already in
the create answer, or after polls) -> every output item (a URL, url_ttl 3600, as replicate.delivery links
expire after an hour; or a `data:` URI -> b64_json); `metrics.predict_time` -> usage. starting/processing ->
poll `urls.get` when it is on the channel's own host, else `{base_url}/predictions/{id}` (the token never goes
to another host); polls wait `poll_interval` (0.5 s) doubling up to `max_poll_interval` (5 s).
failed -> 400 moderation_blocked when the error mentions NSFW/sensitive content, else 502; canceled -> 502
(it may have run and billed); aborted (its deadline passed before it started: nothing ran) -> 504, retryable.
All of these, and a finished prediction without images, are not retryable except aborted: the prediction ran.
A poll that fails (5xx, 429, unreadable) is retried; three in a row -> 502; a 404 -> 502 at once.
Cancel: `POST urls.cancel` (same host rule) or `{base_url}/predictions/{id}/cancel`.
Create failures (problem+json `{"title", "detail", "status"}`): 402 / "insufficient credit" -> 402
insufficient_quota, not retried; 422 with `invalid_fields` -> 400 naming the client's param; 429 -> retryable
429 with Retry-After; 401/403 -> 502 (the channel's token); 5xx -> retryable 502 (nothing started).
Sources: replicate.com/docs (create a prediction, sync mode, rate limits), replicate-python, observed errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse, Wait
from proxy.adapters.polling import MAX_FAILED_POLLS, Timing, polls_failed, timing_from_settings, transient
from proxy.core.channel_settings import unchecked
from proxy.core.errors import (
    BadGateway,
    ContentPolicyViolation,
    GatewayTimeout,
    InvalidRequest,
    ProxyError,
    ServiceUnavailable,
    UpstreamError,
)
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import FORMATS, NativeFormats
from proxy.core.json_body import decode_object
from proxy.core.mime import sniff_image_type
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import PROXY_FIELDS, ChannelSchema
from proxy.core.sizes import AUTO, Size, nearest_ratio, parse_ratio, parse_size
from proxy.core.upstream_errors import error_from_response, parse_retry_after, scrub

DEFAULT_BASE_URL = "https://api.replicate.com/v1"
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21", "4:5", "5:4")
SIZE_MODES = ("aspect_ratio", "width_height")
DEFAULT_WAIT = 60  # Replicate holds a create for at most 60 s
DEFAULT_PIXELS = 1024 * 1024  # the pixel budget when only an aspect ratio gives the shape
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
OUTPUT_TTL = 3600.0  # replicate.delivery file URLs expire after about an hour
POLL_INTERVAL = 0.5
MAX_POLL_INTERVAL = 5.0
RUNNING = frozenset({"starting", "processing"})
_MODEL = re.compile(r"^([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)(?::([0-9A-Za-z]+))?$")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# Model errors that are a safety filter's verdict, not a breakdown (flux: "NSFW content detected",
# SDXL: "NSFW content detected in one or more images", BFL-backed models: "flagged as sensitive (E005)").
_MODERATION = re.compile(r"nsfw|sensitive|\bE005\b|content (?:was )?flagged|safety (?:checker|filter)", re.IGNORECASE)
_BILLING = re.compile(r"insufficient credit", re.IGNORECASE)
# Plan fields mapped here; any other forwarded field goes into `input` as it is.
MAPPED = frozenset({"size", "quality", "aspect_ratio", "seed", "output_format", "image", "strength", "extra_body"})


@dataclass(frozen=True)
class Settings:
    wait: int
    size_mode: str
    aspect_ratios: tuple[str, ...]
    image_input: str
    timing: Timing


@dataclass(frozen=True)
class Prediction:
    """The conversation's state: before the create answer prediction_id is empty."""

    timing: Timing
    prediction_id: str = ""
    get_url: str = ""
    cancel_url: str = ""
    polls: int = 0  # polls sent so far
    failures: int = 0  # consecutive polls that failed


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _wait(settings: Mapping[str, Any]) -> int:
    value = settings.get("wait", DEFAULT_WAIT)
    if value is False:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= DEFAULT_WAIT:
        raise ValueError(f"setting 'wait' must be 0 (off) or 1-60 seconds, got {value!r}")
    return value


def _ratios(settings: Mapping[str, Any]) -> tuple[str, ...]:
    value = settings.get("aspect_ratios", ASPECT_RATIOS)
    ratios = [value] if isinstance(value, str) else value
    if not isinstance(ratios, (list, tuple)) or not ratios or any(parse_ratio(str(r)) is None for r in ratios):
        raise ValueError(f"setting 'aspect_ratios' must be a list of W:H ratios, got {value!r}")
    return tuple(str(ratio) for ratio in ratios)


def settings_of(settings: Mapping[str, Any]) -> Settings:
    """The channel's settings, checked; ValueError names the one that makes no sense."""
    size_mode = settings.get("size_mode", SIZE_MODES[0])
    if size_mode not in SIZE_MODES:
        raise ValueError(f"setting 'size_mode' must be one of {', '.join(SIZE_MODES)}, got {size_mode!r}")
    image_input = settings.get("image_input", "image")
    if not isinstance(image_input, str) or not image_input:
        raise ValueError(f"setting 'image_input' must be an input name, got {image_input!r}")
    return Settings(_wait(settings), size_mode, _ratios(settings), image_input,
                    timing_from_settings(settings, POLL_INTERVAL, MAX_POLL_INTERVAL))


def _requested_size(fields: Mapping[str, Any]) -> Size | None:
    text = fields.get("size", AUTO)
    return None if text == AUTO else parse_size(text)


def _shaped(ratio: tuple[int, int], size: Size | None) -> Size:
    """`ratio`'s shape at `size`'s pixel count (or about 1 MP), in multiples of 8 as diffusion models want."""
    pixels = size.pixels if size is not None else DEFAULT_PIXELS
    width = math.sqrt(pixels * ratio[0] / ratio[1])
    return Size(max(8, round(width / 8) * 8), max(8, round(pixels / width / 8) * 8))


def shape_inputs(fields: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """`aspect_ratio` or `width`/`height`; {} leaves the model's default."""
    ratio = parse_ratio(fields["aspect_ratio"]) if "aspect_ratio" in fields else None
    size = _requested_size(fields)
    if settings.size_mode == "width_height":
        if ratio is not None:
            size = _shaped(ratio, size)
        return {} if size is None else {"width": size.width, "height": size.height}
    shape = Size(*ratio) if ratio is not None else size
    return {} if shape is None else {"aspect_ratio": nearest_ratio(shape, settings.aspect_ratios)}


def output_format(value: str) -> str:
    mapped = OUTPUT_FORMATS.get(value)
    if mapped is None:
        raise InvalidRequest(
            f"Invalid output_format '{value}' for this model. Supported values: png, jpg, webp.",
            param="output_format",
            code="invalid_value",
        )
    return mapped


def image_input(value: str) -> str:
    """A URL or data URI as given; raw base64 becomes a data URI of the type its bytes show."""
    text = value.strip()
    if text.startswith(("http://", "https://")) or text[:5].lower() == "data:":
        return text
    try:
        head = base64.b64decode(text[:64], validate=True)
    except (binascii.Error, ValueError):
        head = b""
    content_type = sniff_image_type(head)
    if content_type is None:
        raise InvalidRequest(
            "Invalid image: expected an http(s) URL, a data URI, or base64 of a png, jpeg, webp or gif image.",
            param="image",
            code="invalid_value",
        )
    return f"data:{content_type};base64,{text}"


def build_input(job: Job, settings: Settings) -> dict[str, Any]:
    """The prediction's `input`; raises InvalidRequest for a value that cannot be sent."""
    fields = job.plan.fields
    inputs: dict[str, Any] = {"prompt": job.plan.prompt, **shape_inputs(fields, settings)}
    if "seed" in fields and fields["seed"] >= 0:
        inputs["seed"] = fields["seed"]
    if "output_format" in fields:
        inputs["output_format"] = output_format(fields["output_format"])
    if "strength" in fields:
        inputs["prompt_strength"] = fields["strength"]
    if "image" in fields:
        image = fields["image"]
        inputs[settings.image_input] = [image_input(item) for item in image] if isinstance(image, list) else image_input(image)
    for name, value in fields.items():
        if name not in MAPPED and name not in PROXY_FIELDS:
            inputs[name] = value
    return merge_extra_body(inputs, fields.get("extra_body", {}))


def base_url(job: Job) -> str:
    return job.channel.base_url or DEFAULT_BASE_URL


def create_call(job: Job, settings: Settings, inputs: dict[str, Any], model: re.Match[str]) -> Call:
    owner, name, version = model.groups()
    headers = {**job.channel.headers, **auth_headers(job.api_key), "Content-Type": "application/json"}
    if settings.wait:
        headers["Prefer"] = f"wait={settings.wait}"
    if version is not None:
        return Call("POST", f"{base_url(job)}/predictions", headers=headers, json={"version": version, "input": inputs})
    return Call("POST", f"{base_url(job)}/models/{owner}/{name}/predictions", headers=headers, json={"input": inputs})


def _misconfigured(job: Job, problem: str) -> Fail:
    # An operator's mistake, not the client's: another channel may still serve the model.
    return Fail(ServiceUnavailable(f"channel '{job.channel.name}' is misconfigured: {problem}",
                                   code="channel_misconfigured", retryable=True))


def start(job: Job) -> Step:
    model = _MODEL.match(job.plan.upstream_model)
    if model is None:
        return _misconfigured(job, f"'{job.plan.upstream_model}' is not a Replicate model (owner/name[:version])")
    try:
        settings = settings_of(job.channel.settings)
    except ValueError as exc:
        return _misconfigured(job, str(exc))
    try:
        inputs = build_input(job, settings)
    except InvalidRequest as exc:
        return Fail(exc)
    return Send(create_call(job, settings, inputs, model), state=Prediction(settings.timing))


def _own_url(job: Job, url: Any) -> str | None:
    """`url` when it is on the channel's own scheme and host (so it may carry the token); else None."""
    if not isinstance(url, str):
        return None
    target, own = urlsplit(url), urlsplit(base_url(job))
    same = (target.scheme, target.netloc.lower()) == (own.scheme, own.netloc.lower())
    return url if same else None


def _headers(job: Job) -> dict[str, str]:
    return {**job.channel.headers, **auth_headers(job.api_key)}


def poll_call(job: Job, prediction: Prediction) -> Call:
    return Call("GET", prediction.get_url, headers=_headers(job))


def cancel(job: Job, state: Any) -> Call | None:
    """The call that stops a running prediction; None before Replicate named one."""
    if not isinstance(state, Prediction) or not state.prediction_id:
        return None
    return Call("POST", state.cancel_url, headers=_headers(job))


def _bad_answer(job: Job, why: str) -> Fail:
    # The prediction may exist and bill: never retried elsewhere.
    message = scrub(f"channel '{job.channel.name}' answered with no usable prediction: {why}", (job.api_key,))
    return Fail(BadGateway(message, code="bad_upstream_response"))


def _image(item: Any) -> GeneratedImage | None:
    if not isinstance(item, str):
        return None
    if item[:5].lower() == "data:":
        header, sep, payload = item.partition(",")
        content_type = header[5:].split(";")[0].strip().lower() or None
        return GeneratedImage(b64_json=payload, content_type=content_type) if sep and payload else None
    if item.startswith(("http://", "https://")):
        return GeneratedImage(url=item, url_ttl=OUTPUT_TTL)
    return None


def _usage(data: Mapping[str, Any]) -> dict[str, Any] | None:
    metrics = data.get("metrics")
    seconds = metrics.get("predict_time") if isinstance(metrics, dict) else None
    usable = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    return {"predict_time": seconds} if usable else None


def succeeded(job: Job, prediction_id: str, data: Mapping[str, Any]) -> Step:
    output = data.get("output")
    items = output if isinstance(output, list) else [output]
    images = tuple(image for image in map(_image, items) if image is not None)
    if not images:
        return _bad_answer(job, f"prediction {prediction_id} succeeded without an image URL in its output")
    return Done(ImagesResult(images=images, usage=_usage(data)))


def failed(job: Job, prediction_id: str, status: str, data: Mapping[str, Any]) -> Fail:
    error = data.get("error")
    detail = scrub(str(error) if error else "no detail", (job.api_key,))[:500]
    if status == "failed" and _MODERATION.search(detail):
        return Fail(ContentPolicyViolation(f"The request or its image was rejected by the model's safety filter: {detail}"))
    if status == "aborted":
        # Its deadline passed before it started: nothing ran and nothing was billed, so another try is fair.
        return Fail(GatewayTimeout(f"channel '{job.channel.name}' prediction {prediction_id} was aborted before it started",
                                   code="upstream_aborted", retryable=True))
    message = f"channel '{job.channel.name}' prediction {prediction_id} {status}: {detail}"
    return Fail(BadGateway(message, code="upstream_canceled" if status == "canceled" else "upstream_task_failed"))


def _urls(job: Job, prediction_id: str, data: Mapping[str, Any]) -> tuple[str, str]:
    raw = data.get("urls")
    urls: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    own = f"{base_url(job)}/predictions/{prediction_id}"
    return _own_url(job, urls.get("get")) or own, _own_url(job, urls.get("cancel")) or f"{own}/cancel"


def step_for(job: Job, prediction: Prediction, data: Mapping[str, Any]) -> Step:
    """The next step for a prediction object (from the create answer or a poll)."""
    status = data.get("status")
    if status == "succeeded":
        return succeeded(job, prediction.prediction_id, data)
    if status in ("failed", "canceled", "aborted"):
        return failed(job, prediction.prediction_id, str(status), data)
    if status not in RUNNING:
        return _bad_answer(job, f"prediction {prediction.prediction_id} has unknown status {status!r}")
    return Wait(prediction.timing.delay(prediction.polls), poll_call(job, prediction), prediction)


def after_create(job: Job, prediction: Prediction, response: UpstreamResponse) -> Step:
    if not 200 <= response.status < 300:
        return Fail(create_error(job, response))
    data = decode_object(response.body) or {}
    prediction_id = data.get("id")
    if not isinstance(prediction_id, str) or not _ID.match(prediction_id):
        return _bad_answer(job, f"prediction id {prediction_id!r} is missing or malformed")
    get_url, cancel_url = _urls(job, prediction_id, data)
    prediction = replace(prediction, prediction_id=prediction_id, get_url=get_url, cancel_url=cancel_url)
    return step_for(job, prediction, data)


def _problem(data: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(message, first invalid field) from Replicate's problem+json."""
    if data is None:
        return None, None
    detail, title = data.get("detail"), data.get("title")
    message = str(detail).strip() if detail else (str(title) if title else None)
    invalid = data.get("invalid_fields")
    first = invalid[0] if isinstance(invalid, list) and invalid and isinstance(invalid[0], dict) else {}
    field = first.get("field") if isinstance(first.get("field"), str) and first.get("field") else None
    if isinstance(first.get("description"), str):
        message = f"{field}: {first['description']}" if field else first["description"]
    return message, field


# Replicate inputs and the client fields they came from, to name the client's param in a 400.
CLIENT_PARAMS = {"width": "size", "height": "size", "prompt_strength": "strength"}


def client_param(field: str | None, job: Job) -> str | None:
    if field is None or not field.startswith("input."):
        return None
    name = field.removeprefix("input.").split(".")[0]
    if name in job.plan.fields.get("extra_body", {}):
        return f"extra_body.{name}"
    if name == job.channel.settings.get("image_input", "image"):
        return "image"
    if name == "aspect_ratio":
        return "aspect_ratio" if "aspect_ratio" in job.plan.fields else "size"
    return CLIENT_PARAMS.get(name, name)


def create_error(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a non-2xx create answer."""
    secrets = (job.api_key,)
    data = decode_object(response.body)
    message, field = _problem(data)
    text = scrub(message or f"HTTP {response.status}", secrets)[:500]
    if response.status == 402 or (response.status in (400, 403, 429) and _BILLING.search(text)):
        # Out of credit: the account must be topped up. A 402 (not OpenAI's 429) so no client retries it.
        return UpstreamError(f"channel '{job.channel.name}' has no credit left: {text}", status=402,
                             type="insufficient_quota", code="insufficient_quota")
    if response.status == 422 and field is not None:
        return InvalidRequest(text, param=client_param(field, job), code="invalid_value")
    body = response.body if message is None else json.dumps({"error": {"message": message}}).encode()
    return error_from_response(response.status, response.headers, body, channel=job.channel.name, secrets=secrets,
                               client_key=job.channel.passthrough_key)


def _failed_poll(job: Job, prediction: Prediction, why: str, retry_after: float | None = None) -> Step:
    failures = prediction.failures + 1
    if failures >= MAX_FAILED_POLLS:
        return polls_failed(job.channel.name, f"prediction {prediction.prediction_id}", failures, why, (job.api_key,))
    prediction = replace(prediction, polls=prediction.polls + 1, failures=failures)
    return Wait(prediction.timing.retry_delay(prediction.polls, retry_after), poll_call(job, prediction), prediction)


def after_poll(job: Job, prediction: Prediction, response: UpstreamResponse) -> Step:
    if response.status == 404:
        # Polling again cannot bring a prediction back: fail at once.
        return Fail(BadGateway(f"channel '{job.channel.name}' lost prediction {prediction.prediction_id} (HTTP 404)",
                               code="upstream_task_lost"))
    if transient(response.status):
        return _failed_poll(job, prediction, f"HTTP {response.status}", parse_retry_after(response.headers))
    if not 200 <= response.status < 300:
        error = create_error(job, response)
        # The prediction exists and may bill: no failover may start a second one.
        error.retryable = False
        return Fail(error)
    data = decode_object(response.body)
    if data is None or not isinstance(data.get("status"), str):
        return _failed_poll(job, prediction, "an unreadable answer")
    return step_for(job, replace(prediction, polls=prediction.polls + 1, failures=0), data)


def advance(job: Job, state: Any, response: UpstreamResponse) -> Step:
    prediction = state if isinstance(state, Prediction) else Prediction(Timing(POLL_INTERVAL, MAX_POLL_INTERVAL))
    if not prediction.prediction_id:
        return after_create(job, prediction, response)
    return after_poll(job, prediction, response)


def output_formats(job: Job) -> NativeFormats:
    """Inputs are per model: one whose rule forwards `output_format` takes png/jpg/webp (the FLUX family on
    Replicate does); any other is asked for nothing, and what it makes varies (the proxy looks at the bytes)."""
    if "output_format" in job.plan.rule.passthrough:
        return NativeFormats(asked=frozenset(FORMATS), default=None)
    return NativeFormats(default=None)


SPEC = AdapterSpec(
    name="replicate",
    schema=ChannelSchema(
        settings=unchecked("wait", "size_mode", "aspect_ratios", "image_input", "poll_interval", "max_poll_interval"),
        requires_base_url=False,
    ),
    start=start,
    advance=advance,
    max_n_per_call=1,
    cancel=cancel,
    auth_headers=auth_headers,
    output_formats=output_formats,
)
