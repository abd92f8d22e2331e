"""Adapter layer: the parts every adapter builds its calls from (ARCHITECTURE.md §5).

- `bearer(key)` / `header_key(name)`: the auth headers a provider takes, as `AdapterSpec.auth_headers`
  wants them (also used by pass-through).
- `json_call(job, url, body, auth)`: one JSON POST with the channel's own headers, the key as the
  provider spells it, and the body.
- `upstream_failure(job, response)`: the shared mapping of a non-2xx answer (core.upstream_errors), scrubbed.
- `misconfigured(job, problem)`: the one error for a channel the operator set up wrong (503, retryable).

An adapter raises a ProxyError where the request cannot go on (the client's input, a misconfiguration,
an upstream failure); the driver treats a raised error exactly as a returned `Fail`, so adapters do not
wrap their bodies in try/except.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.adapters.base import Call, Job, UpstreamResponse
from proxy.core.errors import ChannelMisconfigured, ProxyError
from proxy.core.upstream_errors import error_from_response

AuthHeaders = Callable[[str | None], dict[str, str]]


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


def misconfigured(job: Job, problem: str) -> ChannelMisconfigured:
    """The error for a channel that cannot serve this request as configured (raise it)."""
    return ChannelMisconfigured(job.channel.name, problem)
