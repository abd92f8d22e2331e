"""Core layer: Standard Webhooks signing (https://www.standardwebhooks.com), and the retry schedule of a delivery.

A message is signed as `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with each configured secret
(`whsec_<base64 key>`); two secrets give two signatures, space-separated, so a receiver can rotate its
secret without missing a message. The exact body bytes sent are the bytes signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable

PREFIX = "whsec_"
MAX_BACKOFF = 3600.0  # seconds: a retry waits at most an hour after the one before

DELIVERED = "delivered"
RETRY = "retry"
FAILED = "failed"


def secret_problem(secret: str) -> str | None:
    """Why a configured secret cannot sign (never quoting it), or None when it can."""
    if not secret.startswith(PREFIX):
        return f"a webhook secret must start with '{PREFIX}'"
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return f"the part after '{PREFIX}' must be base64"
    return None if key else f"the part after '{PREFIX}' must not be empty"


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_` secret holds."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signatures(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,` entry per secret."""
    return " ".join(signature(secret, msg_id, timestamp, body) for secret in secrets)


def headers(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures(secrets, msg_id, timestamp, body),
    }


def verdict(status: int | None) -> str:
    """What a receiver's answer means: 2xx delivered; no answer (timeout, refused), 429 and 5xx are tried
    again; any other status (4xx, and 3xx: redirects are not followed) will not change by retrying."""
    if status is None or status == 429 or status >= 500:
        return RETRY
    return DELIVERED if 200 <= status < 300 else FAILED


Draw = Callable[[float, float], float]


def backoff(attempts: int, first: float, draw: Draw, cap: float = MAX_BACKOFF) -> float:
    """Seconds before the next try after `attempts` tries: full jitter over first, 2*first, 4*first ... capped
    (`draw(low, high)`: the shell's random.uniform).

    Jitter spreads the retries of many deliveries that failed together (a receiver's outage) apart."""
    ceiling = min(cap, first * 2 ** min(max(attempts - 1, 0), 62))
    return draw(0.0, ceiling)
