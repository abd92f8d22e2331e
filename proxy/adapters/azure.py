"""Adapter layer: Azure OpenAI image generation (gpt-image-1 family and dall-e-3 deployments).

URL, by the channel setting `api_style` (default: `v1` when base_url ends in `/openai/v1`, else `deployment`);
base_url may be the resource root (`https://{resource}.openai.azure.com`) or end in `/openai` or `/openai/v1`:
- deployment: `{root}/openai/deployments/{deployment}/images/generations?api-version={api_version}`, no `model`
  in the body; `api_version` defaults to 2025-04-01-preview (the first dated version serving gpt-image-1).
- v1: `{root}/openai/v1/images/generations`, `model` = the deployment name; `?api-version=` only when set.
`deployment` defaults to the rule's upstream model. Body: the OpenAI body (`prompt`, `n`, forwarded fields
verbatim, `output_format: jpg` -> `jpeg`, `extra_body` adds keys, never replaces one). `output_format` png/jpeg are the formats
declared (Azure has no webp: the proxy converts; any other value handed over -> 400 before any round trip).
Auth: `api-key: <channel key>` (for
Entra ID leave api_key unset and put `Authorization: Bearer ...` in the channel's headers).
Answer: the OpenAI ImagesResponse. Failures: the content filter (`content_filter`, `contentFilter`,
`content_policy_violation`, `moderation_blocked`, inner `ResponsibleAIPolicyViolation`) -> ContentPolicyViolation
in any status, a 200 carrying `error` included; `DeploymentNotFound` -> 502 (the channel points at a deployment
that does not exist, not the request's fault; retryable); everything else via proxy.core.upstream_errors.
Settings (checked when the rules load): `api_style` v1|deployment, `deployment` and `api_version` non-empty
strings (an unquoted YAML date is taken as the version it spells).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from proxy.adapters.base import AdapterSpec, Fail, Job, Send, Step, UpstreamResponse
from proxy.adapters.kit import error_object, header_key, images_step, json_call, setting, upstream_failure
from proxy.adapters.openai import DALL_E_FORMATS, is_dall_e, parse_images_response
from proxy.core.channel_settings import Setting, SettingError, one_of
from proxy.core.errors import BadGateway, ContentPolicyViolation, InvalidRequest, ProxyError
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import NativeFormats
from proxy.core.rules import ChannelSchema
from proxy.core.upstream_errors import scrub

DEFAULT_API_VERSION = "2025-04-01-preview"
V1 = "v1"
DEPLOYMENT = "deployment"
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}  # Azure's spelling of what it accepts
# Lower-cased codes Azure uses for its content filter, at the top level or in `inner_error`.
FILTER_CODES = frozenset(
    {"content_filter", "contentfilter", "content_policy_violation", "moderation_blocked", "responsibleaipolicyviolation"}
)
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class Target:
    url: str
    deployment: str
    v1: bool


AUTH = header_key("api-key")


def _name(value: Any) -> str:
    # YAML reads an unquoted `api_version: 2024-10-21` as a date: it stands for the version it spells.
    text = value.isoformat() if isinstance(value, datetime.date) else value
    if not isinstance(text, str) or not text.strip():
        raise SettingError(f"expected a non-empty string, got {value!r}")
    return text.strip()


# No defaults: without `api_style` the base_url decides, without `deployment` the upstream model is the one.
SCHEMA = ChannelSchema(
    settings={"api_style": one_of(V1, DEPLOYMENT), "deployment": Setting(_name), "api_version": Setting(_name)}
)


def _resource_root(base_url: str) -> str:
    for suffix in ("/openai/v1", "/openai"):
        if base_url.endswith(suffix):
            return base_url[: -len(suffix)]
    return base_url


def _is_v1(job: Job) -> bool:
    style = setting(job, SCHEMA, "api_style")
    if style is None:
        return job.channel.base_url.endswith("/openai/v1")
    return bool(style == V1)


def target(job: Job) -> Target:
    """Where the request goes."""
    root = _resource_root(job.channel.base_url)
    deployment = setting(job, SCHEMA, "deployment") or job.plan.upstream_model
    api_version = setting(job, SCHEMA, "api_version")
    if _is_v1(job):
        query = f"?{urlencode({'api-version': api_version})}" if api_version else ""
        return Target(f"{root}/openai/v1/images/generations{query}", deployment, v1=True)
    version = urlencode({"api-version": api_version or DEFAULT_API_VERSION})
    url = f"{root}/openai/deployments/{quote(deployment, safe='')}/images/generations?{version}"
    return Target(url, deployment, v1=False)


def check_output_format(job: Job) -> None:
    value = job.plan.fields.get("output_format")
    if value is None or value in OUTPUT_FORMATS:
        return
    raise InvalidRequest(
        f"Invalid output_format '{value}': Azure OpenAI supports png and jpeg only.",
        param="output_format",
        code="invalid_value",
    )


def build_body(job: Job, where: Target) -> dict[str, Any]:
    plan = job.plan
    # The deployment form names the model in the URL; the v1 form wants the deployment as `model`.
    body: dict[str, Any] = {"model": where.deployment} if where.v1 else {}
    body.update({"prompt": plan.prompt, "n": plan.n})
    for name, value in plan.fields.items():
        if name != "extra_body":
            body[name] = OUTPUT_FORMATS[value] if name == "output_format" else value
    body = merge_extra_body(body, plan.fields.get("extra_body", {}))
    return body


def start(job: Job) -> Step:
    check_output_format(job)
    where = target(job)
    return Send(json_call(job, where.url, build_body(job, where), AUTH))


def _inner(error: dict[str, Any]) -> dict[str, Any]:
    # Images answers spell it `inner_error`; the chat-style content filter answers `innererror`.
    inner = error.get("inner_error", error.get("innererror"))
    return inner if isinstance(inner, dict) else {}


def is_filtered(error: dict[str, Any]) -> bool:
    codes = {str(error.get("code", "")).lower(), str(_inner(error).get("code", "")).lower()}
    return bool(codes & FILTER_CODES)


def _filtered_categories(error: dict[str, Any]) -> list[str]:
    inner = _inner(error)
    results = inner.get("content_filter_results", inner.get("content_filter_result"))
    if not isinstance(results, dict):
        return []
    return sorted(name for name, verdict in results.items() if isinstance(verdict, dict) and verdict.get("filtered") is True)


def moderation_error(job: Job, error: dict[str, Any]) -> ContentPolicyViolation:
    message = str(error.get("message") or "The request was rejected by Azure OpenAI's content filter.")
    categories = _filtered_categories(error)
    if categories:
        message += f" (filtered: {', '.join(categories)})"
    code = "moderation_blocked" if error.get("code") == "moderation_blocked" else "content_policy_violation"
    return ContentPolicyViolation(scrub(message, (job.api_key,))[:_MAX_MESSAGE], code=code)


def failure(job: Job, response: UpstreamResponse) -> ProxyError:
    """The error for a non-2xx answer."""
    error = error_object(response.body)
    if error is not None and is_filtered(error):
        return moderation_error(job, error)
    if error is not None and error.get("code") == "DeploymentNotFound":
        # The channel points at a deployment that does not exist: another channel may serve the request.
        deployment = scrub(str(error.get("message", "")), (job.api_key,))[:_MAX_MESSAGE]
        message = f"channel '{job.channel.name}' names an Azure deployment that does not exist: {deployment}"
        return BadGateway(message, code="upstream_deployment_not_found", retryable=True)
    return upstream_failure(job, response)


def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
    # The (megabytes of base64) success body is parsed once; only a 2xx without images is looked at again.
    step = images_step(job, response, failure, lambda answer: parse_images_response(answer.chunks))
    if isinstance(step, Fail) and 200 <= response.status < 300:
        # Older API versions report a filtered output as a 200 with `error` and no data.
        error = error_object(response.body)
        if error is not None and is_filtered(error):
            return Fail(moderation_error(job, error))
    return step


# gpt-image deployments make png and jpeg (no webp on Azure) and take output_compression; dall-e-3 answers PNG.
# The deployment name is the upstream model, so a deployment named after dall-e is taken as one.
GPT_IMAGE_FORMATS = NativeFormats(asked=frozenset({"png", "jpeg"}), default="png", compression=True)


def output_formats(job: Job) -> NativeFormats:
    return DALL_E_FORMATS if is_dall_e(job.plan.upstream_model) else GPT_IMAGE_FORMATS


SPEC = AdapterSpec(
    name="azure",
    schema=SCHEMA,
    start=start,
    advance=advance,
    auth_headers=AUTH,
    output_formats=output_formats,
)
