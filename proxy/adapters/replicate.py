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
A poll that fails (5xx, 429, unreadable) is polled again (after its Retry-After); three in a row -> 502
upstream_poll_failed (adapters.polling); a 404 -> 502 upstream_task_lost at once.
Settings are checked when the rules load: `wait` (0-60, or false), `size_mode`, `aspect_ratios` (W:H, a list
or one), `image_input`, `poll_interval`, `max_poll_interval`.
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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import bad_answer, bearer, json_call, misconfigured, setting
from proxy.adapters.polling import Polling, TaskState, Timing, forwarded, seed_and_format, transient
from proxy.core.channel_settings import Setting, SettingError, integer, names, one_of, text
from proxy.core.errors import BadGateway, ContentPolicyViolation, GatewayTimeout, InvalidRequest, ProxyError, UpstreamError
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import FORMATS, NativeFormats
from proxy.core.json_body import decode_object
from proxy.core.mime import sniff_image_type
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.sizes import AUTO, Size, nearest_ratio, parse_ratio, parse_size
from proxy.core.upstream_errors import error_from_response, scrub

DEFAULT_BASE_URL = "https://api.replicate.com/v1"
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21", "4:5", "5:4")
SIZE_MODES = ("aspect_ratio", "width_height")
DEFAULT_WAIT = 60  # Replicate holds a create for at most 60 s
DEFAULT_PIXELS = 1024 * 1024  # the pixel budget when only an aspect ratio gives the shape
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
OUTPUT_TTL = 3600.0  # replicate.delivery file URLs expire after about an hour
RUNNING = frozenset({"starting", "processing"})
_MODEL = re.compile(r"^([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)(?::([0-9A-Za-z]+))?$")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# Model errors that are a safety filter's verdict, not a breakdown (flux: "NSFW content detected",
# SDXL: "NSFW content detected in one or more images", BFL-backed models: "flagged as sensitive (E005)").
_MODERATION = re.compile(r"nsfw|sensitive|\bE005\b|content (?:was )?flagged|safety (?:checker|filter)", re.IGNORECASE)
_BILLING = re.compile(r"insufficient credit", re.IGNORECASE)
# Plan fields mapped here; any other forwarded field goes into `input` as it is.
MAPPED = frozenset({"size", "quality", "aspect_ratio", "seed", "output_format", "image", "strength", "extra_body"})


def _wait_setting() -> Setting:
    """`wait`: 1-60 seconds, 0 or false for none."""
    seconds = integer(DEFAULT_WAIT, low=0, high=DEFAULT_WAIT)
    return Setting(lambda value: 0 if value is False else seconds.parse(value), seconds.default)


def _ratios_setting() -> Setting:
    """`aspect_ratios`: a non-empty list of W:H ratios (or one)."""
    written = names()

    def parse(value: Any) -> tuple[str, ...]:
        ratios: tuple[str, ...] = written.parse(value)
        if not ratios or any(parse_ratio(ratio) is None for ratio in ratios):
            raise SettingError(f"expected a list of W:H ratios, got {value!r}")
        return ratios

    return Setting(parse, ASPECT_RATIOS)


@dataclass(frozen=True)
class Prediction(TaskState):
    """A prediction being polled, with the URLs Replicate named for it."""

    noun = "prediction"
    get_url: str = ""
    cancel_url: str = ""


def _requested_size(fields: Mapping[str, Any]) -> Size | None:
    text = fields.get("size", AUTO)
    return None if text == AUTO else parse_size(text)


def _shaped(ratio: tuple[int, int], size: Size | None) -> Size:
    """`ratio`'s shape at `size`'s pixel count (or about 1 MP), in multiples of 8 as diffusion models want."""
    pixels = size.pixels if size is not None else DEFAULT_PIXELS
    width = math.sqrt(pixels * ratio[0] / ratio[1])
    return Size(max(8, round(width / 8) * 8), max(8, round(pixels / width / 8) * 8))


def shape_inputs(job: Job, fields: Mapping[str, Any]) -> dict[str, Any]:
    """`aspect_ratio` or `width`/`height`; {} leaves the model's default."""
    ratio = parse_ratio(fields["aspect_ratio"]) if "aspect_ratio" in fields else None
    size = _requested_size(fields)
    if setting(job, SCHEMA, "size_mode") == "width_height":
        if ratio is not None:
            size = _shaped(ratio, size)
        return {} if size is None else {"width": size.width, "height": size.height}
    shape = Size(*ratio) if ratio is not None else size
    return {} if shape is None else {"aspect_ratio": nearest_ratio(shape, setting(job, SCHEMA, "aspect_ratios"))}


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


def build_input(job: Job) -> dict[str, Any]:
    """The prediction's `input`; raises InvalidRequest for a value that cannot be sent."""
    fields = job.plan.fields
    inputs: dict[str, Any] = {"prompt": job.plan.prompt, **shape_inputs(job, fields), **seed_and_format(fields, OUTPUT_FORMATS)}
    if "strength" in fields:
        inputs["prompt_strength"] = fields["strength"]
    if "image" in fields:
        image = fields["image"]
        sent = [image_input(item) for item in image] if isinstance(image, list) else image_input(image)
        inputs[setting(job, SCHEMA, "image_input")] = sent
    return merge_extra_body({**inputs, **forwarded(fields, MAPPED)}, fields.get("extra_body", {}))


def base_url(job: Job) -> str:
    return job.channel.base_url or DEFAULT_BASE_URL


def create_call(job: Job, inputs: dict[str, Any], model: re.Match[str]) -> Call:
    owner, name, version = model.groups()
    wait = setting(job, SCHEMA, "wait")
    headers = {"Prefer": f"wait={wait}"} if wait else {}
    if version is not None:
        return json_call(job, f"{base_url(job)}/predictions", {"version": version, "input": inputs}, headers=headers)
    return json_call(job, f"{base_url(job)}/models/{owner}/{name}/predictions", {"input": inputs}, headers=headers)


def start(job: Job) -> Step:
    model = _MODEL.match(job.plan.upstream_model)
    if model is None:
        raise misconfigured(job, f"'{job.plan.upstream_model}' is not a Replicate model (owner/name[:version])")
    return Send(create_call(job, build_input(job), model))


def _own_url(job: Job, url: Any) -> str | None:
    """`url` when it is on the channel's own scheme and host (so it may carry the token); else None."""
    if not isinstance(url, str):
        return None
    target, own = urlsplit(url), urlsplit(base_url(job))
    same = (target.scheme, target.netloc.lower()) == (own.scheme, own.netloc.lower())
    return url if same else None


def _headers(job: Job) -> dict[str, str]:
    return {**job.channel.headers, **bearer(job.api_key)}


def poll_call(job: Job, prediction: Prediction) -> Call:
    return Call("GET", prediction.get_url, headers=_headers(job))


POLLING = Polling(Timing(first=0.5, cap=5.0), poll_call)
SCHEMA = POLLING.schema(
    wait=_wait_setting(),
    size_mode=one_of(*SIZE_MODES, default=SIZE_MODES[0]),
    aspect_ratios=_ratios_setting(),
    image_input=text("image"),
)


def cancel(job: Job, state: Prediction | None) -> Call | None:
    """The call that stops a running prediction; None before Replicate named one."""
    if state is None:
        return None
    return Call("POST", state.cancel_url, headers=_headers(job))


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
        return Fail(bad_answer(job, f"prediction {prediction_id} succeeded without an image URL in its output"))
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
        return succeeded(job, prediction.task_id, data)
    if status in ("failed", "canceled", "aborted"):
        return failed(job, prediction.task_id, str(status), data)
    if status not in RUNNING:
        return Fail(bad_answer(job, f"prediction {prediction.task_id} has unknown status {status!r}"))
    return POLLING.next(job, prediction)


def after_create(job: Job, response: UpstreamResponse) -> Step:
    if not 200 <= response.status < 300:
        return Fail(create_error(job, response))
    data = decode_object(response.body) or {}
    prediction_id = data.get("id")
    if not isinstance(prediction_id, str) or not _ID.match(prediction_id):
        return Fail(bad_answer(job, f"prediction id {prediction_id!r} is missing or malformed"))
    get_url, cancel_url = _urls(job, prediction_id, data)
    return step_for(job, Prediction(prediction_id, get_url=get_url, cancel_url=cancel_url), data)


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
    if name == setting(job, SCHEMA, "image_input"):
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


def after_poll(job: Job, prediction: Prediction, response: UpstreamResponse) -> Step:
    if response.status == 404:
        # Polling again cannot bring a prediction back: fail at once.
        return Fail(BadGateway(f"channel '{job.channel.name}' lost prediction {prediction.task_id} (HTTP 404)",
                               code="upstream_task_lost"))
    if transient(response.status):
        return POLLING.failed(job, prediction, response)
    if not 200 <= response.status < 300:
        error = create_error(job, response)
        # The prediction exists and may bill: no failover may start a second one.
        error.retryable = False
        return Fail(error)
    data = decode_object(response.body)
    if data is None or not isinstance(data.get("status"), str):
        return POLLING.failed(job, prediction, response, why="an unreadable answer")
    return step_for(job, prediction, data)


def output_formats(job: Job) -> NativeFormats:
    """Inputs are per model: one whose rule forwards `output_format` takes png/jpg/webp (the FLUX family on
    Replicate does); any other is asked for nothing, and what it makes varies (the proxy looks at the bytes)."""
    if "output_format" in job.plan.rule.passthrough:
        return NativeFormats(asked=frozenset(FORMATS), default=None)
    return NativeFormats(default=None)


SPEC = AdapterSpec(
    name="replicate",
    schema=SCHEMA,
    start=start,
    advance=POLLING.advance(after_create, after_poll),
    task_state=Prediction,
    resume=POLLING.next,
    max_n_per_call=1,
    cancel=cancel,
    auth_headers=bearer,
    output_formats=output_formats,
)
