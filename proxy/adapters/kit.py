"""Adapter layer: the parts every adapter builds its calls from (ARCHITECTURE.md §5).

- `bearer(key)` / `header_key(name)`: the auth headers a provider takes, as `AdapterSpec.auth_headers`
  wants them (also used by pass-through).
- `json_call(job, url, body, auth)`: one JSON POST with the channel's own headers, the key as the
  provider spells it, and the body.
- `upstream_failure(job, response)`: the shared mapping of a non-2xx answer (core.upstream_errors), scrubbed.
- `error_object(body)`: the `{"error": {...}}` object most providers answer failures with.
- `bad_answer(job, why, secrets=, retryable=)`: the one error for a 2xx that carries no usable image (502, scrubbed).
- `images_step(job, response, failure, parse)`: a one-call answer: the failure, the images, or `bad_answer`.
- `setting(job, schema, name)`: the one way an adapter reads a channel setting (the declared default where
  the channel has none).
- `misconfigured(job, problem)`: the one error for a channel the operator set up wrong (503, retryable).
- `coded_error(job, meaning, text, headers)`: what a provider's own error code means to an OpenAI client
  (moderation, billing, rate limit, busy, unusable account, unknown model), written once for every
  provider whose failures carry business codes; `meaning_of(code, table)` reads an adapter's table.

An adapter raises a ProxyError where the request cannot go on (the client's input, a misconfiguration,
an upstream failure); the driver treats a raised error exactly as a returned `Fail`, so adapters do not
wrap their bodies in try/except.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from proxy.adapters.base import Call, Done, Fail, Job, Step, UpstreamResponse
from proxy.core.errors import (
    BadGateway,
    ChannelMisconfigured,
    ContentPolicyViolation,
    NotFound,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
)
from proxy.core.response import ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.upstream_errors import error_from_response, parse_retry_after, scrub

AuthHeaders = Callable[[str | None], dict[str, str]]

# What a provider's business code can mean to the client (an adapter maps its codes to these).
MODERATION = "moderation"
BILLING = "billing"
RATE_LIMIT = "rate_limit"
BUSY = "busy"
ACCOUNT = "account"
NO_MODEL = "no_model"


def bearer(api_key: str | None) -> dict[str, str]:
    """`Authorization: Bearer <key>` (no header without a key: the operator may set one in `headers`)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def header_key(name: str) -> AuthHeaders:
    """The key in a header of the provider's own (`api-key`, `x-goog-api-key`)."""

    def headers(api_key: str | None) -> dict[str, str]:
        return {name: api_key} if api_key else {}

    return headers


def json_call(
    job: Job,
    url: str,
    body: Any,
    auth: AuthHeaders = bearer,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Call:
    """POST `body` as JSON to `url` with the channel's headers, the key and any `headers` of the call's own."""
    sent = {**job.channel.headers, **auth(job.api_key), **(headers or {}), "Content-Type": "application/json"}
    return Call("POST", url, headers=sent, json=body, timeout=timeout)


def upstream_failure(
    job: Job, response: UpstreamResponse, *, body: bytes | None = None, secrets: tuple[str | None, ...] | None = None
) -> ProxyError:
    """The error for a non-2xx answer by status (core.upstream_errors), scrubbed of the key.

    `body`: the answer recast in OpenAI's envelope by an adapter whose provider has its own; `secrets`: what
    to scrub when the key has more spellings than itself.
    """
    return error_from_response(
        response.status,
        response.headers,
        response.body if body is None else body,
        channel=job.channel.name,
        secrets=(job.api_key,) if secrets is None else secrets,
        client_key=job.channel.passthrough_key,
    )


def error_object(body: bytes) -> dict[str, Any] | None:
    """The `error` object of a JSON answer `{"error": {...}}`, if it has one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def bad_answer(job: Job, why: str, *, secrets: Iterable[str | None] | None = None, retryable: bool = False) -> BadGateway:
    """A 2xx that carries no usable image: a failure, never a success with an empty list.

    `secrets`: what to scrub (default: the job's key) when the key has more spellings than itself;
    `retryable`: whether another channel may be tried (not once a task may exist and bill).
    """
    message = scrub(f"channel '{job.channel.name}' answered with no usable images: {why}",
                    (job.api_key,) if secrets is None else secrets)
    return BadGateway(message[:500], code="bad_upstream_response", retryable=retryable)


def images_step(
    job: Job,
    response: UpstreamResponse,
    failure: Callable[[Job, UpstreamResponse], ProxyError],
    parse: Callable[[UpstreamResponse], ImagesResult],
) -> Step:
    """A one-call provider's answer: `failure` for a non-2xx, else the images `parse` reads from the answer
    (a ValueError from it, or a body nested past the parser's depth, is `bad_answer`). `parse` is given the
    answer rather than its body so it can read the chunks as received (UpstreamResponse)."""
    if not 200 <= response.status < 300:
        return Fail(failure(job, response))
    try:
        return Done(parse(response))
    except (ValueError, RecursionError) as exc:
        return Fail(bad_answer(job, str(exc)))


def setting(job: Job, schema: ChannelSchema, name: str) -> Any:
    """The channel's value of the setting `schema` declares as `name`: checked when the rules loaded, the
    declared default where the channel has none (a channel made in code rather than loaded from rules)."""
    return job.channel.settings.get(name, schema.settings[name].default)


def misconfigured(job: Job, problem: str) -> ChannelMisconfigured:
    """The error for a channel that cannot serve this request as configured (raise it)."""
    return ChannelMisconfigured(job.channel.name, problem)


def meaning_of(code: object, table: Mapping[str, frozenset[Any]]) -> str | None:
    """The meaning whose codes in `table` include `code` ({MODERATION: {...}, BILLING: {...}}), if any."""
    return next((meaning for meaning, codes in table.items() if code in codes), None)


def coded_error(job: Job, meaning: str | None, text: str, headers: Mapping[str, str]) -> ProxyError | None:
    """The error a business code's meaning calls for; None: the code says nothing the status does not."""
    if meaning == MODERATION:
        return ContentPolicyViolation(text)
    if meaning == BILLING:
        # Arrears often arrive as HTTP 429, but no retry fixes them: OpenAI's insufficient_quota, not a rate limit.
        return RateLimited(text, code="insufficient_quota", type="insufficient_quota", retryable=False)
    if meaning == RATE_LIMIT:
        return RateLimited(text, code="rate_limit_exceeded", retryable=True, retry_after=parse_retry_after(headers))
    if meaning == BUSY:
        return ServiceUnavailable(f"channel '{job.channel.name}' is busy: {text}", code="upstream_unavailable", retryable=True)
    if meaning == ACCOUNT:
        # The channel's account is unusable; another channel may still serve the request.
        return BadGateway(f"channel '{job.channel.name}' account is unusable: {text}", code="upstream_auth_failed",
                          retryable=True)
    if meaning == NO_MODEL:
        return NotFound(text, param="model", code="model_not_found")
    return None
