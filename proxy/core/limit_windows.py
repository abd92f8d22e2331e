"""Core layer: per-key limits as values, and the arithmetic of their windows.

Three optional limits per client key: requests per minute (a fixed one-minute window), generations
running at once, and images per day (a fixed UTC day). The counting itself happens in a shared
backend (memory, or Redis for several replicas); this module says which counter, how long it lives,
and how long a refused client should wait.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from proxy.core.budgets import Budget

MINUTE = 60
DAY = 86400


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    concurrent: int | None = None
    images_per_day: int | None = None

    @property
    def any(self) -> bool:
        return self.requests_per_minute is not None or self.concurrent is not None or self.images_per_day is not None


@dataclass(frozen=True)
class ClientKey:
    """One accepted client key; `name` is what metrics and logs show instead of the key."""

    key: str = field(repr=False)
    name: str
    limits: Limits | None = None  # None: the server's default limits apply
    budget: Budget | None = None  # None: the server's default budget applies
    webhook_url: str = ""  # where this key's async tasks are reported when the create names no callback_url
    # Signing secrets for this key's webhooks (None: the server's); secrets, so kept out of reprs.
    webhook_secrets: tuple[str, ...] | None = field(default=None, repr=False)


def key_id(key: str | None) -> str:
    """A stable, non-reversible id for a key: counters and records are filed under it, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else "anonymous"


def default_name(key: str) -> str:
    # A short digest: enough to tell keys apart in a dashboard, useless to an attacker.
    return "key-" + key_id(key)[:8]


def window(now: float, length: int) -> tuple[int, float]:
    """(window number, seconds until it ends) for fixed windows of `length` seconds."""
    number = int(now // length)
    return number, (number + 1) * length - now
