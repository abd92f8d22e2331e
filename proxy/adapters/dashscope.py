"""Adapter layer: Alibaba DashScope / Model Studio, Tongyi Wanxiang (wanx/wan) and Qwen-Image.

Two modes, chosen by the upstream model. Models in the channel's `sync_models` (default: qwen-image-max,
qwen-image-plus, qwen-image, qwen-image-2.0, qwen-image-2.0-pro, wan2.6-t2i, and their dated snapshots)
use the synchronous `POST {base_url}/services/aigc/multimodal-generation/generation` WITHOUT the async
header: `input.messages[0].content` = the images (if any, for edit models) then `{"text": prompt}`,
everything else in `parameters`; answer `output.choices[0].message.content[].image`.
Every other model is a task: `POST {base_url}/services/aigc/text2image/image-synthesis` with
`X-DashScope-Async: enable`, body `{"model", "input": {"prompt", "negative_prompt"?}, "parameters": {...}}`,
then `GET {base_url}/tasks/{task_id}` with waits from `poll_interval` (1 s) doubling up to
`max_poll_interval` (8 s). PENDING/RUNNING -> wait; SUCCEEDED -> `results[]` (`url`, `actual_prompt` ->
revised_prompt); items carrying `code`/`message` failed: the rest are returned and the failures listed
under the response's `failed_images` ({index, code, message}); all failed -> the first item's error.
FAILED -> the error `output.code`/`message` describe; CANCELED / UNKNOWN (expired or unknown task) -> 502.
A poll answered 5xx/429 or unreadably is polled again (after its Retry-After); three in a row -> 502
upstream_poll_failed (adapters.polling); any other 4xx on a poll -> 502 upstream_task_lost at once (neither
is retried: the task may still run and be billed). Cancel: `POST {base_url}/tasks/{task_id}/cancel`
(DashScope cancels PENDING tasks only; best-effort).
Settings (checked when the rules load): `sync_models` (a list, or one name), `poll_interval`, `max_poll_interval`.
Mapping: `n` is ALWAYS sent (wanx defaults to 4 and bills each); qwen-image models make one image per
call (rules must say `max_n: 1`; more -> 400 param n), wan models up to 4 (max_n_per_call 4).
`size` WxH -> "W*H": qwen-image/-plus -> the nearest by shape of 1664*928 1472*1140 1328*1328 1140*1472
928*1664; qwen-image-max -> of 1664*928 1472*1104 1328*1328 1104*1472 928*1664; wanx2.x/wan2.0-2.2 ->
sides within [512, 1440] (scaled, shape kept; at most 1440*1440, the documented "2 MP"); wan2.5 -> pixels
within [768², 1440²], wan2.6 -> within [1280², 1440²] (both ratio ≤ 4:1); other models -> as given.
`auto` -> unsent (the model's default). `negative_prompt` -> `input.negative_prompt` (task) or
`parameters.negative_prompt` (sync). `seed` -> `parameters.seed` (-1 -> unsent; above 2^31-1 -> 400).
`watermark` -> `parameters.watermark` (tri-state). `quality` is not sent: DashScope has none.
`image` on a task model -> 400 (text-to-image takes none); on a sync model URLs and data URIs pass, raw
base64 gets a data URI after sniffing its type. Other passed-through fields (`prompt_extend`, ...) go
into `parameters` verbatim; `extra_body` is merged last, one level deep (`{"parameters": {...}}` merges).
Answer URLs live 24 h (url_ttl); `usage` ({image_count, ...}) is kept as sent.
Failures `{"request_id", "code", "message"}`: DataInspectionFailed / IPInfringementSuspect -> moderation
400; Arrearage -> 429 insufficient_quota (not retryable); Throttling* -> 429 retryable; the rest as
proxy.core.upstream_errors maps their HTTP status (InvalidApiKey 401 / AccessDenied 403 -> 502).
Sources: help.aliyun.com/zh/model-studio (text-to-image V2, qwen-image, error codes); dashscope-sdk-python
(client/base_api.py: tasks/{id}, tasks/{id}/cancel); docs.qwencloud.com (wan2.6-t2i sync).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import BILLING, MODERATION, RATE_LIMIT, bad_answer, bearer, coded_error, json_call, meaning_of, setting
from proxy.adapters.polling import Polling, TaskState, Timing, forwarded, status_error, transient
from proxy.core.channel_settings import names
from proxy.core.errors import (
    BadGateway,
    InvalidRequest,
    ProxyError,
    UpstreamError,
)
from proxy.core.formats import NativeFormats
from proxy.core.json_body import decode_object
from proxy.core.mime import sniff_image_type
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.sizes import AUTO, Size, clamp_ratio, nearest_size, parse_size
from proxy.core.upstream_errors import scrub

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
TASK_PATH = "/services/aigc/text2image/image-synthesis"
SYNC_PATH = "/services/aigc/multimodal-generation/generation"
ASYNC_HEADER = "X-DashScope-Async"
DEFAULT_SYNC_MODELS = (
    "qwen-image-max", "qwen-image-plus", "qwen-image", "qwen-image-2.0", "qwen-image-2.0-pro", "wan2.6-t2i",
)
URL_TTL = 86400.0  # result URLs and task data are kept 24 h
MAX_N = 4
MAX_SEED = 2**31 - 1


PENDING = frozenset({"PENDING", "RUNNING"})
CODES = {MODERATION: frozenset({"DataInspectionFailed", "IPInfringementSuspect"}), BILLING: frozenset({"Arrearage"})}
_SNAPSHOT = re.compile(r"-\d[\d-]*$")  # qwen-image-plus-2025-12-30 is a dated snapshot of qwen-image-plus
_SNIFF_CHARS = 32  # base64 characters decoded to sniff a raw image: 24 bytes cover every signature used


@dataclass(frozen=True)
class SizeRule:
    """What one model family accepts as `size`: a fixed list, or a range of sides or of pixels."""

    fixed: tuple[Size, ...] = ()
    sides: tuple[int, int] | None = None
    pixels: tuple[int, int] | None = None
    max_ratio: float = 4.0
    per_call: int = MAX_N


QWEN_SIZES = tuple(Size(w, h) for w, h in ((1664, 928), (1472, 1140), (1328, 1328), (1140, 1472), (928, 1664)))
QWEN_MAX_SIZES = tuple(Size(w, h) for w, h in ((1664, 928), (1472, 1104), (1328, 1328), (1104, 1472), (928, 1664)))
# Longest prefix first: the first prefix the model name starts with decides its family.
FAMILIES: tuple[tuple[str, SizeRule], ...] = (
    ("qwen-image-max", SizeRule(fixed=QWEN_MAX_SIZES, per_call=1)),
    ("qwen-image-plus", SizeRule(fixed=QWEN_SIZES, per_call=1)),
    ("qwen-image-2", SizeRule()),  # 2.0 series: free sizes, n 1-6 (not verified further: sent as given)
    ("qwen-image-edit", SizeRule()),
    ("qwen-image", SizeRule(fixed=QWEN_SIZES, per_call=1)),
    ("wan2.6", SizeRule(pixels=(1280 * 1280, 1440 * 1440))),
    ("wan2.5", SizeRule(pixels=(768 * 768, 1440 * 1440))),
    ("wan2.", SizeRule(sides=(512, 1440))),
    ("wanx", SizeRule(sides=(512, 1440))),
)
_MAPPED = frozenset({"size", "quality", "n", "image", "negative_prompt", "seed", "watermark", "extra_body"})


@dataclass(frozen=True)
class Task(TaskState):
    """A DashScope task being polled (its id is all DashScope needs)."""


# --- request ----------------------------------------------------------------------------------------


def _base_url(job: Job) -> str:
    return job.channel.base_url or DEFAULT_BASE_URL


def is_sync(job: Job) -> bool:
    """Whether the model runs on the synchronous multimodal endpoint (else it is a task)."""
    model = job.plan.upstream_model
    sync_models = setting(job, SCHEMA, "sync_models")
    return model in sync_models or _SNAPSHOT.sub("", model) in sync_models


def size_rule(model: str) -> SizeRule | None:
    return next((rule for prefix, rule in FAMILIES if model.startswith(prefix)), None)


def fit_sides(size: Size, low: int, high: int) -> Size:
    """`size` scaled (shape kept) so both sides lie in [low, high]; extreme shapes are clamped at the ends."""
    scale = 1.0
    if max(size.width, size.height) > high:
        scale = high / max(size.width, size.height)
    if min(size.width, size.height) * scale < low:
        scale = low / min(size.width, size.height)
    width, height = (min(high, max(low, round(side * scale))) for side in (size.width, size.height))
    return Size(width, height)


def fit_pixels(size: Size, low: int, high: int, max_ratio: float) -> Size:
    """`size` scaled (shape kept) into the pixel range [low, high]; unchanged when already inside."""
    size = clamp_ratio(size, max_ratio)
    if low <= size.pixels <= high:
        return size
    target = low if size.pixels < low else high
    scale = math.sqrt(target / size.pixels)
    rounding = math.ceil if size.pixels < low else math.floor
    # Rounded before ceil/floor so that float noise (1440.0000001) does not cost a pixel row.
    return Size(rounding(round(size.width * scale, 6)), rounding(round(size.height * scale, 6)))


def map_size(text: str, model: str) -> str | None:
    """DashScope's "W*H" for a canonical WxH; None for `auto` (the model's own default)."""
    size = parse_size(text) if text != AUTO else None
    if size is None:
        return None
    rule = size_rule(model)
    if rule is not None and rule.fixed:
        size = nearest_size(size, rule.fixed)
    elif rule is not None and rule.sides is not None:
        size = fit_sides(size, *rule.sides)
    elif rule is not None and rule.pixels is not None:
        size = fit_pixels(size, *rule.pixels, rule.max_ratio)
    return f"{size.width}*{size.height}"


def _check_n(job: Job) -> int:
    rule = size_rule(job.plan.upstream_model)
    per_call = rule.per_call if rule is not None else MAX_N
    if job.plan.n > per_call:
        raise InvalidRequest(
            f"Invalid 'n': {job.plan.n}. Model '{job.plan.model}' makes at most {per_call} image(s) per request.",
            param="n",
            code="invalid_value",
        )
    return job.plan.n


def _seed(value: Any) -> int | None:
    if value == -1:
        return None  # -1 means "random" to other providers: DashScope's own default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise InvalidRequest(f"'seed' must be between 0 and {MAX_SEED} for DashScope.", param="seed", code="invalid_value")
    return value


def _sniff(raw: str) -> str | None:
    try:
        head = base64.b64decode(raw[:_SNIFF_CHARS], validate=False)
    except (binascii.Error, ValueError):
        return None
    return sniff_image_type(head)


def map_image(value: str) -> str:
    """A content image DashScope takes: a URL or a data URI (raw base64 gets one after sniffing its type)."""
    text = value.strip()
    if text.startswith(("http://", "https://", "oss://", "data:")):
        return text
    kind = _sniff(text)
    if kind is None:
        raise InvalidRequest("The image is neither a URL nor base64 of a known image type.", param="image", code="invalid_value")
    return f"data:{kind};base64,{text}"


def _parameters(job: Job, n: int) -> dict[str, Any]:
    fields = job.plan.fields
    parameters: dict[str, Any] = {}
    size = map_size(str(fields["size"]), job.plan.upstream_model) if "size" in fields else None
    if size is not None:
        parameters["size"] = size
    parameters["n"] = n  # always explicit: wanx's default is 4, each billed
    if "seed" in fields and (seed := _seed(fields["seed"])) is not None:
        parameters["seed"] = seed
    if "watermark" in fields:
        parameters["watermark"] = bool(fields["watermark"])
    return {**parameters, **forwarded(fields, _MAPPED)}


def _merge(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(body.get(key), dict)
        body[key] = {**body[key], **value} if both else value
    return body


def task_body(job: Job) -> dict[str, Any]:
    fields = job.plan.fields
    if "image" in fields:
        message = f"Model '{job.plan.model}' is text-to-image on DashScope and takes no input image."
        raise InvalidRequest(message, param="image", code="invalid_value")
    prompt: dict[str, Any] = {"prompt": job.plan.prompt}
    if "negative_prompt" in fields:
        prompt["negative_prompt"] = fields["negative_prompt"]
    body = {"model": job.plan.upstream_model, "input": prompt, "parameters": _parameters(job, _check_n(job))}
    return _merge(body, fields.get("extra_body", {}))


def sync_body(job: Job) -> dict[str, Any]:
    fields = job.plan.fields
    images = fields.get("image", [])
    content = [{"image": map_image(image)} for image in ([images] if isinstance(images, str) else images)]
    content.append({"text": job.plan.prompt})
    parameters = _parameters(job, _check_n(job))
    if "negative_prompt" in fields:
        parameters["negative_prompt"] = fields["negative_prompt"]
    body = {
        "model": job.plan.upstream_model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }
    return _merge(body, fields.get("extra_body", {}))


def start(job: Job) -> Step:
    if is_sync(job):
        return Send(json_call(job, f"{_base_url(job)}{SYNC_PATH}", sync_body(job)))
    # Required on image-synthesis; on the multimodal endpoint it draws 403 AccessDenied.
    return Send(json_call(job, f"{_base_url(job)}{TASK_PATH}", task_body(job), headers={ASYNC_HEADER: "enable"}))


def poll_call(job: Job, task: Task) -> Call:
    headers = {**job.channel.headers, **bearer(job.api_key)}
    return Call("GET", f"{_base_url(job)}/tasks/{task.task_id}", headers=headers)


POLLING = Polling(Timing(first=1.0, cap=8.0), poll_call)
SCHEMA = POLLING.schema(sync_models=names(DEFAULT_SYNC_MODELS))


def cancel(job: Job, state: Task | None) -> Call | None:
    """Best-effort cancel of a task nobody will collect (DashScope only cancels it while PENDING)."""
    if state is None:
        return None
    headers = {**job.channel.headers, **bearer(job.api_key)}
    return Call("POST", f"{_base_url(job)}/tasks/{state.task_id}/cancel", headers=headers)


# --- answers ----------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def code_error(job: Job, code: str | None, message: str, response: UpstreamResponse | None = None) -> ProxyError | None:
    """The error a DashScope `code` names on its own, whatever HTTP status carried it; None: no such code."""
    text = scrub(f"{message} (dashscope code {code})", (job.api_key,))
    if code is None:
        return None
    meaning = MODERATION if code.startswith("DataInspection") else RATE_LIMIT if code.startswith("Throttling") else None
    # Arrearage is a 400 at DashScope, but what the client needs to know is OpenAI's insufficient_quota.
    return coded_error(job, meaning or meaning_of(code, CODES), text, response.headers if response is not None else {})


def error_for(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a failed DashScope answer, keyed on its `code` before its HTTP status."""
    data = decode_object(response.body)
    code = _text(data.get("code")) if data is not None else None
    message = str(data.get("message") or "no message") if data is not None else "no message"
    known = code_error(job, code, message, response)
    if known is not None:
        return known
    detail = f"{message} (dashscope code {code})"
    return status_error(job, response, detail, (job.api_key,), client_key=job.channel.passthrough_key)


def _failed(response: UpstreamResponse, data: Mapping[str, Any] | None) -> bool:
    # DashScope signals failure with a non-2xx status; a 200 carrying `code` and no `output` is one too.
    return not 200 <= response.status < 300 or data is None or (_text(data.get("code")) is not None and "output" not in data)


def _usage(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else None


def _answer(response: UpstreamResponse) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """(the answer, its `output`) of a successful DashScope answer; None for a failed one."""
    data = decode_object(response.body)
    if data is None or _failed(response, data):
        return None
    output = data.get("output")
    return data, output if isinstance(output, dict) else {}


def after_sync(job: Job, response: UpstreamResponse) -> Step:
    answer = _answer(response)
    if answer is None:
        return Fail(error_for(job, response))
    data, output = answer
    choices = output.get("choices")
    urls = [
        item.get("image")
        for choice in (choices if isinstance(choices, list) else [])
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict)
        for item in (choice["message"].get("content") or [])
        if isinstance(item, dict)
    ]
    images = tuple(GeneratedImage(url=url, url_ttl=URL_TTL) for url in urls if isinstance(url, str) and url)
    if not images:
        return Fail(bad_answer(job, "output.choices[].message.content[] holds no image"))
    return Done(ImagesResult(images=images, usage=_usage(data)))


def after_create(job: Job, response: UpstreamResponse) -> Step:
    if is_sync(job):
        return after_sync(job, response)
    answer = _answer(response)
    if answer is None:
        return Fail(error_for(job, response))
    task_id = answer[1].get("task_id")
    if not isinstance(task_id, str) or not task_id:
        return Fail(bad_answer(job, "the create answer has no output.task_id"))
    return POLLING.next(job, Task(task_id))


def lost(job: Job, task: Task, response: UpstreamResponse) -> Fail:
    data = decode_object(response.body)
    detail = str(data.get("message") or data.get("code")) if data is not None else f"HTTP {response.status}"
    message = scrub(f"channel '{job.channel.name}' lost track of task {task.task_id} (HTTP {response.status}): {detail}",
                    (job.api_key,))
    # Not retried: the task may still run and be billed; a second one would be billed again.
    return Fail(BadGateway(message, code="upstream_task_lost"))


def task_failed(job: Job, output: Mapping[str, Any]) -> ProxyError:
    code = _text(output.get("code"))
    message = f"DashScope task {output.get('task_id')} failed: {output.get('message') or 'no reason given'}"
    known = code_error(job, code, message)
    if known is not None:
        return known
    text = scrub(f"{message} (dashscope code {code})", (job.api_key,))
    if code is not None and code.startswith(("InvalidParameter", "BadRequest")):
        return UpstreamError(text, status=400, code=code)
    return BadGateway(text, code="upstream_task_failed")


def _failure(index: int, item: Mapping[str, Any], job: Job) -> dict[str, Any]:
    message = scrub(str(item.get("message") or "no message"), (job.api_key,))
    return {"index": index, "code": _text(item.get("code")), "message": message}


def task_succeeded(job: Job, data: Mapping[str, Any], output: Mapping[str, Any]) -> Step:
    results = output.get("results")
    if not isinstance(results, list):
        return Fail(bad_answer(job, "the finished task has no output.results"))
    images: list[GeneratedImage] = []
    failures: list[dict[str, Any]] = []
    for index, item in enumerate(results):
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        if isinstance(url, str) and url:
            prompt = item.get("actual_prompt")
            images.append(GeneratedImage(url=url, revised_prompt=prompt if isinstance(prompt, str) else None, url_ttl=URL_TTL))
        elif "code" in item:
            failures.append(_failure(index, item, job))
    if not images and failures:
        first = failures[0]
        return Fail(task_failed(job, {"task_id": output.get("task_id"), "code": first["code"], "message": first["message"]}))
    if not images:
        return Fail(bad_answer(job, "output.results holds no image url"))
    extra = {"failed_images": failures} if failures else {}
    return Done(ImagesResult(images=tuple(images), usage=_usage(data), extra=extra))


def after_poll(job: Job, task: Task, response: UpstreamResponse) -> Step:
    if transient(response.status):
        why = f"HTTP {response.status}: {error_for(job, response).message}"
        return POLLING.failed(job, task, response, why=why)
    if not 200 <= response.status < 300:
        return lost(job, task, response)
    data = decode_object(response.body)
    output = data.get("output") if data is not None else None
    if data is None or _failed(response, data) or not isinstance(output, dict):
        return POLLING.failed(job, task, response, why="an unreadable answer")
    status = output.get("task_status")
    if status in PENDING:
        return POLLING.next(job, task)
    if status == "SUCCEEDED":
        return task_succeeded(job, data, output)
    if status == "FAILED":
        return Fail(task_failed(job, output))
    if status == "CANCELED":
        return Fail(BadGateway(f"DashScope task {task.task_id} was canceled upstream", code="upstream_task_canceled"))
    if status == "UNKNOWN":
        message = f"DashScope does not know task {task.task_id} (expired or never created)"
        return Fail(BadGateway(message, code="upstream_task_lost"))
    return Fail(bad_answer(job, f"unknown task_status {status!r}"))


def output_formats(job: Job) -> NativeFormats:
    """DashScope takes no output format. Wanxiang (wan*, wanx*) makes PNG (text-to-image V2 reference);
    for other models (Qwen-Image) the docs name none, so the proxy looks at the bytes."""
    return NativeFormats(default="png" if job.plan.upstream_model.startswith("wan") else None)


SPEC = AdapterSpec(
    name="dashscope",
    schema=SCHEMA,
    start=start,
    advance=POLLING.advance(after_create, after_poll),
    task_state=Task,
    resume=POLLING.next,
    max_n_per_call=MAX_N,
    cancel=cancel,
    auth_headers=bearer,
    output_formats=output_formats,
)
