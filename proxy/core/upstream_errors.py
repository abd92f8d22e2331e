"""Core layer: an upstream's failure answer becomes a ProxyError with a faithful status (ARCHITECTURE.md §3).

Upstream 4xx keep their status and the provider's message; 429 stays 429 with Retry-After (unless it is
a billing problem, which no retry fixes); 504 and Cloudflare's 524 are gateway timeouts (the work may
have been done and billed behind the timeout, so they are retried only where the channel allows it,
exactly like a read timeout after sending); 503 stays 503; other 5xx become 502. A rejected channel key is the operator's
problem, not the client's: it becomes a 502 rather than a 401 that would blame the client's own key.
Every message is scrubbed of the channel's secrets before it can reach a client or a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.core.errors import BadGateway, GatewayTimeout, ProxyError, RateLimited, ServiceUnavailable, UpstreamError

_KEYISH = re.compile(r"\b(sk|key|pk|rk)-[A-Za-z0-9_\-*]{6,}")
_MAX_MESSAGE = 500
_MAX_RETRY_AFTER = 86400.0
# An intermediary gave up waiting for the provider: 504, and Cloudflare's "A timeout occurred".
TIMEOUT_STATUSES = frozenset({504, 524})
BILLING_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Remove every secret, and anything shaped like an API key, from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEYISH.sub(r"\1-***", text)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (Azure) or `retry-after` in seconds; HTTP dates are ignored."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = usable_wait(float(value) * scale)
        except ValueError:
            continue
        if seconds is not None:
            return seconds
    return None


def usable_wait(seconds: float) -> float | None:
    """A wait an upstream asked for, or None: "inf" and "1e400" parse as floats, and a wait no client could
    honour (negative, or a day and more) is no wait at all."""
    return seconds if 0 <= seconds < _MAX_RETRY_AFTER else None


def _envelope_fields(body: bytes) -> tuple[str | None, Any, Any, Any]:
    """(message, type, param, code) from an OpenAI-style `{"error": {...}}` or flat `{"message"}` body."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # deeply nested JSON from a broken upstream is still just a bad body
        return None, None, None, None
    if not isinstance(data, dict):
        return None, None, None, None
    error = data.get("error", data)
    if isinstance(error, str):
        return error, None, None, None
    if not isinstance(error, dict):
        return None, None, None, None
    message = error.get("message") or error.get("detail") or data.get("message")
    return (str(message) if message else None), error.get("type"), error.get("param"), error.get("code")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    channel: str,
    secrets: Iterable[str | None] = (),
    client_key: bool = False,
) -> ProxyError:
    """The error for a non-2xx upstream answer. `client_key`: the client's own key was forwarded."""
    secrets = tuple(secrets)
    message, kind, param, code = _envelope_fields(body)
    # An upstream may echo the key in any field of its error, not only the message.
    kind, param, code = (None if field is None else scrub(str(field), secrets) for field in (kind, param, code))
    if message is None:
        # Scrub the whole text before cutting it: a key split by the cut would escape the replacement.
        snippet = scrub(body.decode("utf-8", "replace"), secrets)[:200].strip()
        message = f"upstream answered HTTP {status}" + (f": {snippet}" if snippet else "")
    message = scrub(message, secrets)[:_MAX_MESSAGE]
    code_text = _text(code)
    if status == 429:
        billing = code_text in BILLING_CODES or _text(kind) in BILLING_CODES
        return RateLimited(
            message,
            code=code_text or "rate_limit_exceeded",
            type="insufficient_quota" if billing else "rate_limit_exceeded",
            retryable=not billing,
            retry_after=None if billing else parse_retry_after(headers),
        )
    if status in (401, 403) and not client_key:
        return BadGateway(
            f"channel '{channel}' was refused by its upstream (HTTP {status}): {message}",
            code="upstream_auth_failed",
            retryable=True,
        )
    if 400 <= status < 500:
        return UpstreamError(
            message, status=status, type=_text(kind) or "invalid_request_error", param=_text(param), code=code_text
        )
    if status in TIMEOUT_STATUSES:
        return GatewayTimeout(f"channel '{channel}' timed out upstream (HTTP {status}): {message}", code="upstream_timeout")
    if status == 503:
        return ServiceUnavailable(f"channel '{channel}' is unavailable: {message}", code="upstream_unavailable", retryable=True)
    return BadGateway(f"channel '{channel}' failed: {message}", code="upstream_error", retryable=True)
