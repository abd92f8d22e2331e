"""Adapter layer: Black Forest Labs FLUX API, a task API: submit, then poll the `polling_url` it returns.

Submit: `POST {base_url}/v1/{upstream_model}` (flux-pro-1.1, flux-pro-1.1-ultra, flux-kontext-pro, flux-2-pro,
flux-dev, ...), header `x-key: <key>`, JSON body; base_url defaults to https://api.bfl.ai. No `n`: one image per
task, the driver fans out. Mapping by model family (from the upstream model's name):
- FLUX.1 (flux-pro-1.1, flux-pro, flux-dev): `size` -> `width`/`height`, shape kept, sides 256-1440 in steps of 32;
- FLUX.2 (flux-2-*): `size` -> `width`/`height`, shape kept, sides >= 256 in steps of 16, at most 4 MP (2048x2048);
- Ultra (*ultra*) and Kontext (flux-kontext-*): `size` -> `aspect_ratio`, the nearest of 21:9 ... 9:21.
A forwarded `aspect_ratio` decides the shape everywhere (kept verbatim inside 21:9..9:21 on ratio models; on
pixel models it shapes `size`'s pixel count, or 1 MP); `size: auto` or no size sends nothing (BFL's default).
`seed` (-1 means random: not sent), `output_format` png|jpeg, the formats declared (the proxy converts to
webp from png; any other value handed over: 400 param output_format).
`image` (URL, raw base64 or a data URI, whose prefix is stripped) -> `input_image`,
`input_image_2`, ... on Kontext (up to 4) and FLUX.2 (up to 8), or `image_prompt` (one image) on FLUX.1 and Ultra;
`strength` -> `image_prompt_strength` on Ultra only (400 elsewhere). `quality` has no BFL meaning (the tier is
the endpoint) and is not sent. Other forwarded fields (`safety_tolerance`, `prompt_upsampling`, `raw`, ...) go
verbatim; `extra_body` is merged last.
Submit answer `{"id", "polling_url", "cost"?, "input_mp"?, "output_mp"?}`: the polling_url is used exactly as
given (BFL routes tasks across clusters such as api.eu2.bfl.ai), only when it is http(s). The key goes with a
poll only to the channel's own host or an https *.bfl.ai host: a secret never leaves for another host.
Polls wait `poll_interval` (0.5 s), doubling up to `max_poll_interval` (5 s) (channel settings, checked when the
rules load).
Poll answer `{"id", "status", "result", "progress", "details"}`: Pending (or a status we do not know) -> poll
again; Ready -> `result.sample` as url with url_ttl 600 (the signed URL dies after 10 minutes, so the shell
re-hosts it; the download carries no key), `result.seed` -> `metadata.seeds`, `result.prompt` when it differs ->
revised_prompt, `cost`/`input_mp`/`output_mp` -> usage; Request/Content Moderated -> 400 moderation_blocked;
Error -> 502; Task not found (or a 404) -> 502 upstream_task_lost at once. A poll that fails (5xx, 429,
unreadable) is polled again (after its Retry-After); three in a row -> 502 upstream_poll_failed
(adapters.polling). Every failure after the submit is not retryable: the task may already be billed.
Submit failures: 402 -> 402 insufficient_quota, not retried (a rate-limit 429 would invite retries that cannot
help); 400/422 FastAPI `{"detail": [{"loc", "msg"}]}` -> 400 with the client's param; 429 -> retryable 429 with
Retry-After; 401/403 -> 502 (the channel's key); 5xx -> retryable 502 (nothing started).
Sources: docs.bfl.ai (API reference, errors), help.bfl.ai (FLUX.2 dimensions), black-forest-labs/skills bfl-api.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import bad_answer, header_key, json_call, misconfigured
from proxy.adapters.polling import Polling, TaskState, Timing, forwarded, seed_and_format, transient
from proxy.core.errors import BadGateway, ContentPolicyViolation, InvalidRequest, ProxyError, UpstreamError
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import NativeFormats
from proxy.core.json_body import decode_object
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.sizes import AUTO, Size, nearest_ratio, parse_ratio, parse_size
from proxy.core.upstream_errors import error_from_response, scrub

DEFAULT_BASE_URL = "https://api.bfl.ai"
TRUSTED_DOMAIN = "bfl.ai"  # BFL's own clusters (api.bfl.ai, api.eu2.bfl.ai, ...) may hold a task
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
RATIO_RANGE = (9 / 21, 21 / 9)
DEFAULT_PIXELS = 1024 * 1024  # the pixel budget when only an aspect ratio gives the shape
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}
SAMPLE_TTL = 600.0  # "result.sample expires after 10 minutes"
PENDING = "Pending"
READY = "Ready"
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
FAILED = frozenset({"Error", "Failed"})
NOT_FOUND = "Task not found"
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Plan fields mapped here; any other forwarded field goes into the body as it is.
MAPPED = frozenset({"size", "quality", "aspect_ratio", "seed", "output_format", "image", "strength", "extra_body"})


@dataclass(frozen=True)
class SizeLimits:
    min_side: int
    max_side: int | None
    step: int
    max_pixels: int | None


@dataclass(frozen=True)
class Family:
    name: str
    limits: SizeLimits | None  # None: the family takes an aspect_ratio, not pixels
    image_field: str  # input_image (Kontext, FLUX.2) or image_prompt (FLUX.1 Redux, Ultra)
    max_images: int
    strength_field: str | None = None


FLUX1 = Family("flux1", SizeLimits(256, 1440, 32, None), "image_prompt", 1)
FLUX2 = Family("flux2", SizeLimits(256, None, 16, 2048 * 2048), "input_image", 8)
ULTRA = Family("ultra", None, "image_prompt", 1, strength_field="image_prompt_strength")
KONTEXT = Family("kontext", None, "input_image", 4)


@dataclass(frozen=True)
class Task(TaskState):
    """A BFL task being polled: where to poll it, and what its submit answer said it costs."""

    polling_url: str = ""
    send_key: bool = False  # the polling_url's host may see the key
    usage: tuple[tuple[str, float], ...] = ()


auth_headers = header_key("x-key")


def family_of(model: str) -> Family:
    lowered = model.lower()
    if lowered.startswith("flux-2"):
        return FLUX2
    if lowered.startswith("flux-kontext"):
        return KONTEXT
    return ULTRA if "ultra" in lowered else FLUX1


def _snap(value: float, limits: SizeLimits) -> int:
    side = max(limits.min_side, round(value / limits.step) * limits.step)
    return side if limits.max_side is None else min(side, limits.max_side)


def fit_size(size: Size, limits: SizeLimits) -> Size:
    """`size` scaled (shape kept) into the family's limits and snapped to its step."""
    scale = 1.0
    if limits.max_side is not None:
        scale = min(scale, limits.max_side / max(size.width, size.height))
    if limits.max_pixels is not None:
        scale = min(scale, math.sqrt(limits.max_pixels / size.pixels))
    # Too small grows, even when that alters the shape of an extreme ratio (the max side clamps it).
    scale = max(scale, limits.min_side / min(size.width, size.height))
    width, height = _snap(size.width * scale, limits), _snap(size.height * scale, limits)
    while limits.max_pixels is not None and width * height > limits.max_pixels:
        # Rounding up may cross the pixel ceiling by a row: take a step off the longer side.
        if width >= height:
            width -= limits.step
        else:
            height -= limits.step
    return Size(width, height)


def _ratio_of(fields: Mapping[str, Any]) -> tuple[int, int] | None:
    return parse_ratio(fields["aspect_ratio"]) if "aspect_ratio" in fields else None


def _requested_size(fields: Mapping[str, Any]) -> Size | None:
    text = fields.get("size", AUTO)
    return None if text == AUTO else parse_size(text)


def _within_range(ratio: tuple[int, int]) -> bool:
    low, high = RATIO_RANGE
    return low <= ratio[0] / ratio[1] <= high


def shape_fields(fields: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """`width`/`height` or `aspect_ratio` for the client's size and aspect ratio; {} leaves BFL's default."""
    ratio, size = _ratio_of(fields), _requested_size(fields)
    if family.limits is None:
        if ratio is not None and _within_range(ratio):
            return {"aspect_ratio": f"{ratio[0]}:{ratio[1]}"}
        shape = Size(*ratio) if ratio is not None else size
        return {} if shape is None else {"aspect_ratio": nearest_ratio(shape, ASPECT_RATIOS)}
    if ratio is not None:
        pixels = size.pixels if size is not None else DEFAULT_PIXELS
        width = math.sqrt(pixels * ratio[0] / ratio[1])
        size = Size(max(1, round(width)), max(1, round(pixels / width)))
    if size is None:
        return {}
    fitted = fit_size(size, family.limits)
    return {"width": fitted.width, "height": fitted.height}


def strip_data_uri(value: str) -> str:
    """BFL takes a URL or raw base64: a `data:...;base64,` prefix is removed."""
    text = value.strip()
    if text[:5].lower() == "data:":
        return text.partition(",")[2]
    return text


def image_fields(value: str | list[str], family: Family) -> dict[str, str]:
    images = value if isinstance(value, list) else [value]
    if len(images) > family.max_images:
        raise InvalidRequest(
            f"This model takes at most {family.max_images} input image{'s' if family.max_images > 1 else ''}, got {len(images)}.",
            param="image",
            code="invalid_value",
        )
    names = [family.image_field] + [f"{family.image_field}_{index}" for index in range(2, len(images) + 1)]
    return {name: strip_data_uri(image) for name, image in zip(names, images, strict=True)}


def strength_fields(value: float, family: Family) -> dict[str, float]:
    if family.strength_field is None:
        raise InvalidRequest("This model takes no 'strength'.", param="strength", code="unsupported_parameter")
    return {family.strength_field: value}


def build_body(job: Job) -> dict[str, Any]:
    """The submit body; raises InvalidRequest for a value BFL cannot take."""
    fields = job.plan.fields
    family = family_of(job.plan.upstream_model)
    body: dict[str, Any] = {"prompt": job.plan.prompt, **shape_fields(fields, family), **seed_and_format(fields, OUTPUT_FORMATS)}
    if "image" in fields:
        body.update(image_fields(fields["image"], family))
    if "strength" in fields:
        body.update(strength_fields(fields["strength"], family))
    return merge_extra_body({**body, **forwarded(fields, MAPPED)}, fields.get("extra_body", {}))


def base_url(job: Job) -> str:
    return job.channel.base_url or DEFAULT_BASE_URL


def start(job: Job) -> Step:
    model = job.plan.upstream_model
    if not _MODEL.match(model):
        raise misconfigured(job, f"'{model}' is not a BFL endpoint name (e.g. flux-pro-1.1)")
    body = build_body(job)
    return Send(json_call(job, f"{base_url(job)}/v1/{model}", body, auth_headers, headers={"Accept": "application/json"}))


def may_send_key(job: Job, url: str) -> bool:
    """Whether a poll to `url` may carry the channel's key: its own host, or BFL's over https."""
    target, own = urlsplit(url), urlsplit(base_url(job))
    if (target.scheme, target.netloc.lower()) == (own.scheme, own.netloc.lower()):
        return True
    host = (target.hostname or "").lower()
    return target.scheme == "https" and (host == TRUSTED_DOMAIN or host.endswith(f".{TRUSTED_DOMAIN}"))


def poll_call(job: Job, task: Task) -> Call:
    headers = {"Accept": "application/json"}
    if task.send_key:
        headers = {**job.channel.headers, **auth_headers(job.api_key), **headers}
    return Call("GET", task.polling_url, headers=headers)


POLLING = Polling(Timing(first=0.5, cap=5.0), poll_call)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _usage(data: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    # cost is in BFL credits (1 credit = 1 US cent); megapixels in and out explain it.
    pairs = ((name, _number(data.get(name))) for name in ("cost", "input_mp", "output_mp"))
    return tuple((name, value) for name, value in pairs if value is not None)


def after_submit(job: Job, response: UpstreamResponse) -> Step:
    if not 200 <= response.status < 300:
        return Fail(submit_error(job, response))
    data = decode_object(response.body) or {}
    task_id, polling_url = data.get("id"), data.get("polling_url")
    # Without a usable polling_url the task cannot be followed; a resubmit might pay twice, so no retry.
    if not isinstance(task_id, str) or not task_id:
        return Fail(bad_answer(job, "no task id in the answer"))
    if not isinstance(polling_url, str) or urlsplit(polling_url).scheme not in ("http", "https"):
        return Fail(bad_answer(job, f"polling_url {polling_url!r} is not an http(s) URL"))
    task = Task(task_id, polling_url=polling_url, send_key=may_send_key(job, polling_url), usage=_usage(data))
    return POLLING.next(job, task)


def _detail(data: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(message, field) from FastAPI's `{"detail": "..."}` or `{"detail": [{"loc", "msg"}]}`."""
    detail = data.get("detail") if data is not None else None
    if isinstance(detail, str):
        return detail, None
    items = [item for item in detail if isinstance(item, dict)] if isinstance(detail, list) else []
    if not items:
        return None, None
    loc = items[0].get("loc")
    names = [part for part in loc if isinstance(part, str) and part != "body"] if isinstance(loc, list) else []
    message = "; ".join(str(item.get("msg", item)) for item in items)
    return message, (names[-1] if names else None)


# BFL body fields and the client fields they came from, to name the client's param in a 400.
CLIENT_PARAMS = {"width": "size", "height": "size", "image_prompt": "image", "image_prompt_strength": "strength",
                 "prompt": "prompt"}


def client_param(field: str | None, job: Job) -> str | None:
    if field is None:
        return None
    if field.startswith("input_image"):
        return "image"
    if field == "aspect_ratio":
        return "aspect_ratio" if "aspect_ratio" in job.plan.fields else "size"
    if field in job.plan.fields.get("extra_body", {}):
        return f"extra_body.{field}"
    return CLIENT_PARAMS.get(field, field)


def submit_error(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a non-2xx submit answer (nothing was started, unless BFL says otherwise)."""
    secrets = (job.api_key,)
    message, field = _detail(decode_object(response.body))
    text = scrub(message or f"HTTP {response.status}", secrets)
    if response.status in (400, 422) and message is not None:
        if "moderat" in message.lower():
            return ContentPolicyViolation(f"Your request was rejected by BFL's moderation: {text}")
        return InvalidRequest(text, param=client_param(field, job), code="invalid_value")
    if response.status == 402:
        # Out of credits: the account must be topped up. A 402 (not OpenAI's 429) so no client retries it.
        return UpstreamError(f"channel '{job.channel.name}' has no credits left: {text}", status=402,
                             type="insufficient_quota", code="insufficient_quota")
    body = response.body if message is None else json.dumps({"error": {"message": message}}).encode()
    return error_from_response(response.status, response.headers, body, channel=job.channel.name, secrets=secrets,
                               client_key=job.channel.passthrough_key)


def _final(error: ProxyError) -> ProxyError:
    # After the submit the task exists and may be billed: no failover may start a second one.
    error.retryable = False
    return error


def _moderation_reasons(data: Mapping[str, Any]) -> str:
    details = data.get("details")
    reasons = details.get("Moderation Reasons") if isinstance(details, dict) else None
    return f" ({', '.join(str(reason) for reason in reasons)})" if isinstance(reasons, list) and reasons else ""


def ready(job: Job, task: Task, data: Mapping[str, Any]) -> Step:
    raw = data.get("result")
    result: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    sample = result.get("sample")
    if not isinstance(sample, str) or not sample.startswith(("http://", "https://")):
        return Fail(bad_answer(job, f"task {task.task_id} is Ready without a result.sample URL"))
    prompt = result.get("prompt")
    revised = prompt if isinstance(prompt, str) and prompt and prompt != job.plan.prompt else None
    seed = result.get("seed")
    extra = {"seeds": [seed]} if isinstance(seed, int) and not isinstance(seed, bool) else {}
    image = GeneratedImage(url=sample, revised_prompt=revised, url_ttl=SAMPLE_TTL)
    return Done(ImagesResult(images=(image,), usage=dict(task.usage) or None, extra=extra))


def finished(job: Job, task: Task, status: str, data: Mapping[str, Any]) -> Step | None:
    """The step for a status that ends the task; None when it is still running."""
    secrets = (job.api_key,)
    if status == READY:
        return ready(job, task, data)
    if status in MODERATED:
        whose = "request" if status.startswith("Request") else "generated image"
        return Fail(ContentPolicyViolation(f"The {whose} was rejected by BFL's moderation{_moderation_reasons(data)}."))
    if status in FAILED:
        detail = data.get("error") or data.get("details") or "no detail"
        message = scrub(f"channel '{job.channel.name}' task {task.task_id} failed: {detail}", secrets)
        return Fail(BadGateway(message[:500], code="upstream_task_failed"))
    if status == NOT_FOUND:
        return lost(job, task)
    return None


def lost(job: Job, task: Task) -> Fail:
    # Polling again cannot bring a task back: fail at once instead of counting failures.
    return Fail(BadGateway(f"channel '{job.channel.name}' lost task {task.task_id} (Task not found)",
                           code="upstream_task_lost"))


def after_poll(job: Job, task: Task, response: UpstreamResponse) -> Step:
    data = decode_object(response.body)
    status = data.get("status") if data is not None else None
    # A terminal status counts whatever the HTTP status (BFL has sent "Task not found" with a 404).
    if isinstance(status, str) and data is not None and status != PENDING:
        step = finished(job, task, status, data)
        if step is not None:
            return step
    if response.status == 404:
        return lost(job, task)
    if transient(response.status):
        return POLLING.failed(job, task, response)
    if not 200 <= response.status < 300:
        return Fail(_final(submit_error(job, response)))
    if not isinstance(status, str):
        return POLLING.failed(job, task, response, why="an unreadable answer")
    # Pending, or a status newer than this adapter: keep polling (the driver's deadline bounds it).
    return POLLING.next(job, task)


SPEC = AdapterSpec(
    name="flux",
    schema=POLLING.schema(),
    start=start,
    advance=POLLING.advance(after_submit, after_poll),
    task_state=Task,
    resume=POLLING.next,
    max_n_per_call=1,
    auth_headers=auth_headers,
    # BFL: output_format jpeg (the default) or png; no compression setting.
    output_formats=NativeFormats(asked=frozenset({"png", "jpeg"}), default="jpeg"),
)

