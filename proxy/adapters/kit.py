"""Adapter layer: the parts every adapter builds its calls from (ARCHITECTURE.md §5).

- `bearer(key)` / `header_key(name)`: the auth headers a provider takes, as `AdapterSpec.auth_headers`
  wants them (also used by pass-through).
- `json_call(job, url, body, auth)`: one JSON POST with the channel's own headers, the key as the
  provider spells it, and the body.
- `misconfigured(job, problem)`: the one error for a channel the operator set up wrong (503, retryable).

An adapter raises a ProxyError where the request cannot go on (the client's input, a misconfiguration,
an upstream failure); the driver treats a raised error exactly as a returned `Fail`, so adapters do not
wrap their bodies in try/except.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.adapters.base import Call, Job
from proxy.core.errors import ChannelMisconfigured

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


def misconfigured(job: Job, problem: str) -> ChannelMisconfigured:
    """The error for a channel that cannot serve this request as configured (raise it)."""
    return ChannelMisconfigured(job.channel.name, problem)
