"""Adapter layer: Kling AI (Kolors) image generation, a task API (`POST {base_url}/v1/images/generations`, then poll).

Auth: the channel key is `ACCESS_KEY:SECRET_KEY`; `credential()` mints the HS256 JWT Kling wants
({"iss": access, "exp": now+1800, "nbf": now-5}) and the shell hands it to the adapter as Job.api_key,
sent as `Authorization: Bearer <jwt>`. A raw key pair is never sent (the adapter refuses it).
Mapping: `model` -> `model_name` (the rule's upstream model); `n` -> `n` (native, 1-9; max_n_per_call 9).
`size` WxH -> `aspect_ratio`, the nearest by shape of 16:9 9:16 1:1 4:3 3:4 3:2 2:3 21:9 (no 21:9 on
kling-v1); `auto` -> 1:1; a forwarded client `aspect_ratio` wins (snapped to that list the same way).
`quality` -> `resolution` (seed 001 calls Kling's tiers std|pro): std/standard/medium/low -> 1k,
pro/hd/high -> 2k (only on the channel's `hd_models`, default kling-v2 and kling-v2-1; elsewhere 1k,
Kling's default, is left unsent); `auto` -> unsent; anything else -> 400 param quality.
`image`: a URL is kept, a data URI loses its prefix (Kling wants raw base64), raw base64 is kept; more
than one image -> 400. `negative_prompt` with `image` -> 400 param negative_prompt (Kling rejects it).
`strength` (seed 001: the reference image's influence, 0-1) -> `image_fidelity`, sent only with an
image; a passed-through `image_fidelity` wins. `watermark` -> `watermark_info: {"enabled": bool}`
(tri-state: absent stays absent). Other passed-through fields (`image_reference`, `human_fidelity`, ...)
go verbatim; `extra_body` is merged into the top level last.
Polling `GET {base_url}/v1/images/generations/{task_id}`: waits start at `poll_interval` (1 s) and
double up to `max_poll_interval` (8 s). submitted/processing -> wait again; succeed -> `task_result.images[]`
(`url`, or `watermark_url` when the client asked for a watermark; URLs live 30 days); failed -> the error
its `task_status_msg` describes (content-risk wording -> moderation 400; else 502, not retried: a second
task could be billed twice). A poll answered 5xx/429 or unreadably is polled again (after its Retry-After);
three in a row -> 502 upstream_poll_failed (adapters.polling); any other 4xx on a poll -> 502
upstream_task_lost at once. Neither is retried. Kling has no cancel endpoint.
Settings (checked when the rules load): `hd_models` (a list, or one name), `poll_interval`, `max_poll_interval`.
Failures (HTTP + business code): 1300/1301 -> moderation 400; 1100/1101/1102 (account exception,
arrears, resource pack exhausted, sent as 429) -> 429 insufficient_quota, not retryable; 1302/1303 -> 429
retryable; 1304 (IP whitelist) -> 502 (the channel's problem); 1203 at create -> 404 model_not_found;
the rest as proxy.core.upstream_errors maps their HTTP status.
Sources: app.klingai.com/global/dev/document-api (copies: artykrd/ai-bot-misha docs/kling_api.md,
inference-sh/grid api/klingai/docs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import (
    ACCOUNT,
    BILLING,
    MODERATION,
    NO_MODEL,
    RATE_LIMIT,
    bad_answer,
    bearer,
    coded_error,
    json_call,
    meaning_of,
    setting,
)
from proxy.adapters.polling import Polling, TaskState, Timing, forwarded, status_error, transient
from proxy.core.channel_settings import names
from proxy.core.errors import (
    BadGateway,
    ContentPolicyViolation,
    InvalidRequest,
    ProxyError,
)
from proxy.core.formats import NativeFormats
from proxy.core.json_body import decode_object
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import Channel
from proxy.core.sizes import AUTO, Size, nearest_ratio, parse_ratio, parse_size
from proxy.core.upstream_errors import scrub

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"
PATH = "/v1/images/generations"
TOKEN_LIFETIME = 1800  # seconds, as Kling's own sample mints it
NOT_BEFORE_SLACK = 5  # seconds of clock skew Kling's sample allows
MAX_N = 9
URL_TTL = 30 * 86400.0  # "images are deleted after 30 days"

RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
NO_WIDE_MODELS = frozenset({"kling-v1"})  # 21:9 is not offered on kling-v1
AUTO_RATIO = "1:1"  # OpenAI's `auto` has no Kling equivalent: square, as OpenAI's default size is
QUALITY = {"std": "1k", "standard": "1k", "medium": "1k", "low": "1k", "pro": "2k", "hd": "2k", "high": "2k"}
DEFAULT_HD_MODELS = ("kling-v2", "kling-v2-1")  # "2k only kling-v2 text-to-image" (newer docs add v2-1)

PENDING = frozenset({"submitted", "processing"})
# Business codes -> what they mean to the client (adapters.kit.coded_error).
CODES = {
    MODERATION: frozenset({1300, 1301}),
    BILLING: frozenset({1100, 1101, 1102}),
    RATE_LIMIT: frozenset({1302, 1303}),
    ACCOUNT: frozenset({1304}),
    NO_MODEL: frozenset({1203}),
}
# Wording Kling uses in task_status_msg when its risk control stops a task (English and Chinese consoles).
_RISK_WORDS = re.compile(r"risk|safety|sensitive|policy|moderat|风控|安全|敏感|违规", re.IGNORECASE)
_DATA_URI = re.compile(r"^data:[^,;]*(;[^,]*)?;base64,", re.IGNORECASE)

_MAPPED = frozenset({
    "size", "quality", "aspect_ratio", "image", "negative_prompt", "strength", "image_fidelity", "watermark", "extra_body",
})


@dataclass(frozen=True)
class Task(TaskState):
    """A Kling task being polled (its id is all Kling needs)."""


# --- credential -------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _split_key(api_key: str | None) -> tuple[str, str]:
    access, sep, secret = (api_key or "").partition(":")
    if not sep or not access or not secret:
        raise ValueError("a kling channel's api_key must be ACCESS_KEY:SECRET_KEY")
    return access, secret


def mint_jwt(access: str, secret: str, now: float) -> str:
    """An HS256 JWT (RFC 7519) over Kling's claims, signed with the secret key."""
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"iss": access, "exp": int(now) + TOKEN_LIFETIME, "nbf": int(now) - NOT_BEFORE_SLACK}
    signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload))
    signature = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def credential(channel: Channel, api_key: str | None, now: float) -> tuple[str, float]:
    """(jwt, expires_at) for the channel's `ACCESS_KEY:SECRET_KEY`; ValueError when the key is not a pair."""
    access, secret = _split_key(api_key)
    return mint_jwt(access, secret, now), float(int(now) + TOKEN_LIFETIME)


# --- request ----------------------------------------------------------------------------------------


def _base_url(job: Job) -> str:
    return job.channel.base_url or DEFAULT_BASE_URL


def _secrets(job: Job) -> tuple[str | None, ...]:
    pair = job.channel.api_key or ""
    return (job.api_key, pair, *pair.split(":"))


def map_aspect_ratio(fields: Mapping[str, Any], model: str) -> str | None:
    """Kling's `aspect_ratio`: the client's own when forwarded, else the nearest to `size`; None: unsent."""
    ratios = tuple(r for r in RATIOS if not (r == "21:9" and model in NO_WIDE_MODELS))
    if "aspect_ratio" in fields:
        wanted = parse_ratio(str(fields["aspect_ratio"]))
        if wanted is None:
            return None
        text = f"{wanted[0]}:{wanted[1]}"
        return text if text in ratios else nearest_ratio(Size(*wanted), ratios)
    if "size" not in fields:
        return None
    size = parse_size(str(fields["size"])) if fields["size"] != AUTO else None
    return AUTO_RATIO if size is None else nearest_ratio(size, ratios)


def map_resolution(job: Job) -> str | None:
    """Kling's `resolution` for the plan's quality; None: leave Kling's default (1k)."""
    value = job.plan.fields.get("quality")
    if value is None or value == "auto":
        return None
    mapped = QUALITY.get(str(value))
    if mapped is None:
        raise InvalidRequest(
            f"Invalid quality '{value}': Kling accepts std or pro (standard/medium/low map to std, hd/high to pro).",
            param="quality",
            code="invalid_value",
        )
    if mapped == "2k" and job.plan.upstream_model in setting(job, SCHEMA, "hd_models"):
        return mapped
    return None


def map_image(value: Any) -> str:
    """One reference image as Kling takes it: a URL, or raw base64 without a `data:` prefix."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidRequest("Kling takes exactly one reference image.", param="image", code="invalid_value")
        value = value[0]
    text = str(value).strip()
    match = _DATA_URI.match(text)
    return text[match.end():] if match else text


def build_body(job: Job) -> dict[str, Any]:
    """The Kling create body; raises InvalidRequest for what Kling would reject."""
    plan = job.plan
    fields = plan.fields
    body: dict[str, Any] = {"model_name": plan.upstream_model, "prompt": plan.prompt, "n": plan.n}
    if "image" in fields:
        if "negative_prompt" in fields:
            raise InvalidRequest(
                "Kling does not accept negative_prompt together with a reference image.",
                param="negative_prompt",
                code="invalid_value",
            )
        body["image"] = map_image(fields["image"])
        fidelity = fields.get("image_fidelity", fields.get("strength"))
        if fidelity is not None:
            body["image_fidelity"] = fidelity
    elif "negative_prompt" in fields:
        body["negative_prompt"] = fields["negative_prompt"]
    ratio = map_aspect_ratio(fields, plan.upstream_model)
    if ratio is not None:
        body["aspect_ratio"] = ratio
    resolution = map_resolution(job)
    if resolution is not None:
        body["resolution"] = resolution
    if "watermark" in fields:
        # Tri-state: only an explicit choice reaches Kling.
        body["watermark_info"] = {"enabled": bool(fields["watermark"])}
    body.update(forwarded(fields, _MAPPED))
    body.update(fields.get("extra_body", {}))
    return body


def _looks_like_key_pair(api_key: str | None) -> bool:
    # A JWT is three base64url parts joined by dots; `access:secret` has a colon a JWT never has.
    return api_key is None or ":" in api_key


def poll_call(job: Job, task: Task) -> Call:
    headers = {**job.channel.headers, **bearer(job.api_key)}
    return Call("GET", f"{_base_url(job)}{PATH}/{task.task_id}", headers=headers)


POLLING = Polling(Timing(first=1.0, cap=8.0), poll_call)
SCHEMA = POLLING.schema(hd_models=names(DEFAULT_HD_MODELS))


def start(job: Job) -> Step:
    if _looks_like_key_pair(job.api_key):
        # The shell mints the JWT (SPEC.credential); sending the raw secret key would leak it.
        message = f"channel '{job.channel.name}' has no Kling token: its api_key must be ACCESS_KEY:SECRET_KEY"
        return Fail(BadGateway(message, code="upstream_auth_failed"))
    return Send(json_call(job, f"{_base_url(job)}{PATH}", build_body(job)))


# --- answers ----------------------------------------------------------------------------------------


def _business_code(data: Mapping[str, Any] | None) -> int | None:
    code = data.get("code") if data is not None else None
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    return int(code) if isinstance(code, str) and code.isdigit() else None


def error_for(job: Job, response: UpstreamResponse) -> ProxyError:
    """The ProxyError for a failed Kling answer, keyed on its business code before its HTTP status."""
    data = decode_object(response.body)
    code = _business_code(data)
    message = str(data.get("message") or "no message") if data is not None else "no message"
    text = scrub(f"{message} (kling code {code})", _secrets(job))
    known = coded_error(job, meaning_of(code, CODES), text, response.headers)
    if known is not None:
        return known
    return status_error(job, response, text, _secrets(job), client_key=False)


def _task_data(response: UpstreamResponse) -> Mapping[str, Any] | None:
    """`data` of a successful `{"code": 0, "data": {...}}` answer, else None."""
    body = decode_object(response.body)
    if body is None or _business_code(body) != 0 or not isinstance(body.get("data"), dict):
        return None
    data: Mapping[str, Any] = body["data"]
    return data


def _ok(response: UpstreamResponse) -> bool:
    body = decode_object(response.body)
    return 200 <= response.status < 300 and _business_code(body) in (0, None)


def after_create(job: Job, response: UpstreamResponse) -> Step:
    if not _ok(response):
        return Fail(error_for(job, response))
    data = _task_data(response)
    task_id = data.get("task_id") if data is not None else None
    if not isinstance(task_id, str) or not task_id:
        return Fail(bad_answer(job, "the create answer has no task_id", secrets=_secrets(job)))
    return POLLING.next(job, Task(task_id))


def lost(job: Job, task: Task, response: UpstreamResponse) -> Fail:
    cause = error_for(job, response).message
    message = f"channel '{job.channel.name}' lost track of task {task.task_id} (HTTP {response.status}): {cause}"
    # Not retried: the task may still run and be billed; a second one would be billed again.
    return Fail(BadGateway(scrub(message, _secrets(job)), code="upstream_task_lost"))


def task_failed(job: Job, data: Mapping[str, Any]) -> ProxyError:
    reason = str(data.get("task_status_msg") or "no reason given")
    text = scrub(f"Kling task {data.get('task_id')} failed: {reason}", _secrets(job))
    if _RISK_WORDS.search(reason):
        return ContentPolicyViolation(text)
    return BadGateway(text, code="upstream_task_failed")


def _image(item: Any, want_watermark: bool) -> GeneratedImage | None:
    if not isinstance(item, dict):
        return None
    url = item.get("watermark_url") if want_watermark and item.get("watermark_url") else item.get("url")
    return GeneratedImage(url=url, url_ttl=URL_TTL) if isinstance(url, str) and url else None


def task_succeeded(job: Job, data: Mapping[str, Any]) -> Step:
    result = data.get("task_result")
    items = result.get("images") if isinstance(result, dict) else None
    if not isinstance(items, list):
        return Fail(bad_answer(job, "the finished task has no task_result.images", secrets=_secrets(job)))
    ordered = sorted((item for item in items if isinstance(item, dict)), key=lambda item: _index(item))
    want_watermark = job.plan.fields.get("watermark") is True
    images = tuple(image for item in ordered if (image := _image(item, want_watermark)) is not None)
    if not images:
        return Fail(bad_answer(job, "the finished task holds no image url", secrets=_secrets(job)))
    created = data.get("created_at")
    deduction = data.get("final_unit_deduction")
    return Done(ImagesResult(
        images=images,
        # Kling stamps milliseconds; OpenAI's `created` is seconds.
        created=created // 1000 if isinstance(created, int) and not isinstance(created, bool) else None,
        usage={"final_unit_deduction": deduction} if deduction is not None else None,
    ))


def _index(item: Mapping[str, Any]) -> int:
    index = item.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def after_poll(job: Job, task: Task, response: UpstreamResponse) -> Step:
    if transient(response.status):
        why = f"HTTP {response.status}: {error_for(job, response).message}"
        return POLLING.failed(job, task, response, why=why, secrets=_secrets(job))
    if not _ok(response):
        return lost(job, task, response)
    data = _task_data(response)
    if data is None:
        return POLLING.failed(job, task, response, why="an unreadable answer", secrets=_secrets(job))
    status = data.get("task_status")
    if status in PENDING:
        return POLLING.next(job, task)
    if status == "succeed":
        return task_succeeded(job, data)
    if status == "failed":
        return Fail(task_failed(job, data))
    return Fail(bad_answer(job, f"unknown task_status {status!r}", secrets=_secrets(job)))


SPEC = AdapterSpec(
    name="kling",
    schema=SCHEMA,
    start=start,
    advance=POLLING.advance(after_create, after_poll),
    task_state=Task,
    resume=POLLING.next,
    max_n_per_call=MAX_N,
    credential=credential,
    # Kling takes no output format and does not document the one it makes: the proxy looks at the bytes.
    output_formats=NativeFormats(default=None),
    # No pass-through: it would have to send the channel key, and Kling's key pair is a signing secret.
)
