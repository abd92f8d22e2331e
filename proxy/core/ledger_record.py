"""Core layer: one ledger record per image request, built from what the request noted while it was served.

The shell gathers two mappings for a request: the fields its access line holds (`proxy.observe.note`:
model, rule, channel, attempts, images, tokens, cost, error code...) and the facts the ledger keeps
beside them (the key's name, the idempotency key, the prompt). `build_record` turns them, with the
request's status and timings, into a frozen `LedgerRecord`; the shell writes it (`proxy.ledger`).

Nothing here trusts a noted value's type: a field of the wrong type is left empty rather than failing
the record. Texts lose NUL characters and unpaired surrogates (PostgreSQL refuses both, and one bad
record would fail the whole batch it is written in). The prompt is kept only when the operator opted in
(`server.log_prompts`); otherwise its SHA-256 is, so equal prompts can still be told apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

MAX_TEXT = 1000  # characters of any short text kept (model names, codes); prompts are kept whole
_OPERATIONS = {"/v1/images/generations": "generate", "/v1/images/edits": "edit", "/v1/images/variations": "variation"}
IMAGE_ROUTES = frozenset(_OPERATIONS)


@dataclass(frozen=True)
class LedgerRecord:
    """One image request as the ledger keeps it (one row of the `generations` table)."""

    at: datetime  # when the request arrived (UTC)
    request_id: str
    key_name: str  # the client key's name in the rules, never the key
    operation: str  # generate | edit | variation
    mode: str  # sync | async | stream
    status: int  # the HTTP status answered (an async task's: what its result would have been)
    images: int  # images delivered to the client
    total_ms: float
    upstream_ms: float
    model: str | None = None
    rule: str | None = None
    upstream_model: str | None = None
    channel: str | None = None
    attempts: int | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    output_format: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cost_micro_usd: int | None = None  # exact: USD x 1,000,000
    task_id: str | None = None
    idempotency_key: str | None = None
    prompt: str | None = None  # only with server.log_prompts
    prompt_sha256: str | None = None
    image_ids: str | None = None  # the images the proxy hosts for it (`/images/<name>`), space-separated
    images_expire_at: datetime | None = None  # when the last of them stops being served

    def row(self) -> tuple[Any, ...]:
        """The values in `COLUMNS` order (one C call: `dataclasses.asdict` deep-copied every value, ~35 us)."""
        return _VALUES(self)


COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(LedgerRecord))  # the table's columns, its id aside
_VALUES = attrgetter(*COLUMNS)


@dataclass(frozen=True)
class Outcome:
    """How the request ended: its status, how long it took, and (for async tasks) the task's own error."""

    status: int
    total_ms: float
    upstream_ms: float
    error_type: str | None = None
    error_code: str | None = None


def operation_of(path: str) -> str | None:
    """The operation an image route performs; None for every other path."""
    return _OPERATIONS.get(path)


def clean_text(value: Any, limit: int | None = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return None
    # ASCII without NUL (nearly every value: names, sizes, ids) is stored as it is; the round trip through
    # UTF-8 that replaces lone surrogates is for the rest.
    text = value
    if not value.isascii() or "\x00" in value:
        text = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text[:limit] if limit is not None else text


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def micro_usd(value: Any) -> int | None:
    """A USD amount (Decimal, or the float a JSON line shows, rounded to micro-dollars) as whole micro-dollars."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(repr(value))  # repr: 0.04 is 0.04, not 0.0400000000000000008
        return int(amount.scaleb(6).to_integral_value())
    except (InvalidOperation, ValueError, OverflowError):
        return None


def _prompt(prompt: Any, keep: bool) -> tuple[str | None, str | None]:
    if not isinstance(prompt, str):
        return None, None
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
    return (clean_text(prompt, None) if keep else None), digest


def _mode(fields: Mapping[str, Any]) -> str:
    if fields.get("task_id"):
        return "async"
    return "stream" if fields.get("stream") else "sync"


def build_record(
    at: datetime, request_id: str, path: str, fields: Mapping[str, Any], outcome: Outcome, *, log_prompts: bool
) -> LedgerRecord:
    """The record of one image request: `fields` are the access line's notes and the ledger's own facts."""
    prompt, digest = _prompt(fields.get("prompt"), log_prompts)
    named = ("model", "rule", "upstream_model", "channel", "size", "quality")
    text: dict[str, Any] = {name: clean_text(fields.get(name)) for name in named}
    return LedgerRecord(
        at=at,
        request_id=clean_text(request_id) or "",
        key_name=clean_text(fields.get("key_name")) or "anonymous",
        operation=clean_text(fields.get("operation")) or operation_of(path) or path,
        mode=_mode(fields),
        status=outcome.status,
        images=_count(fields.get("images")) or 0,
        total_ms=round(outcome.total_ms, 1),
        upstream_ms=round(outcome.upstream_ms, 1),
        **text,
        attempts=_count(fields.get("attempts")),
        n=_count(fields.get("n")),
        output_format=clean_text(fields.get("output_format")),
        error_type=clean_text(outcome.error_type or fields.get("error_type")),
        error_code=clean_text(outcome.error_code or fields.get("error_code")),
        input_tokens=_count(fields.get("input_tokens")),
        output_tokens=_count(fields.get("output_tokens")),
        total_tokens=_count(fields.get("total_tokens")),
        cost_micro_usd=micro_usd(fields.get("cost_usd")),
        task_id=clean_text(fields.get("task_id")),
        idempotency_key=clean_text(fields.get("idempotency_key")),
        prompt=prompt,
        prompt_sha256=digest,
        **_hosted(fields),
    )


def _hosted(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The hosted images' names and the last one's expiry (observe.note_hosted), when there are any."""
    names = [name for name in fields.get("image_ids") or () if isinstance(name, str)]
    expires = fields.get("images_expire_at")
    if not names:
        return {}
    until = datetime.fromtimestamp(expires, UTC) if isinstance(expires, int | float) else None
    return {"image_ids": " ".join(names), "images_expire_at": until}
