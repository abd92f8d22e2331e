"""Shell layer: what each request leaves behind. Request ids, call timings, and one access line.

The request id comes from the client's `X-Request-ID` when it is sane (printable, at most 128
characters), else a new one; it is returned to the client, sent to every upstream call, and written
in the access line. Timings of upstream calls are gathered in a context variable, so the driver and
the upstream module need no extra parameters to report them. The access line never holds a key, an
image, or (unless `server.log_prompts` is on) a prompt.
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

access_log = logging.getLogger("imagegate.access")
# Attributes of an access line's log record: its fields, and those fields already encoded as JSON.
ACCESS = "access"
ACCESS_JSON = "access_json"
# Entry keys the JSON formatter writes before an access line's own fields.
_ENTRY_HEAD = ("time", "level", "logger", "worker")


@dataclass
class RequestRecord:
    """Filled in while a request is served; becomes its access line."""

    request_id: str
    started: float
    fields: dict[str, Any] = field(default_factory=dict)
    upstream_seconds: float = 0.0
    upstream_calls: int = 0
    arrived: float = field(default_factory=time.time)  # wall clock, for the ledger's `at`
    # What the ledger keeps beyond the access line (the key's name, the prompt or its hash): never logged.
    unlogged: dict[str, Any] = field(default_factory=dict)


CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("imagegate_request", default=None)


def request_id_from(header: str | None) -> str:
    if header is not None and _SANE_ID.match(header):
        return header
    # 128 random bits as 32 hex digits, as uuid4().hex gives, without its system call and UUID object (a
    # request id names a request, it guards nothing). `random` is reseeded in each forked worker.
    return f"{random.getrandbits(128):032x}"


def begin(header: str | None) -> RequestRecord:
    record = RequestRecord(request_id_from(header), time.perf_counter())
    CURRENT.set(record)
    return record


def note(**fields: Any) -> None:
    """Add fields (model, channel, attempts...) to the current request's access line."""
    record = CURRENT.get()
    if record is not None:
        for key, value in fields.items():
            if value is not None:
                record.fields[key] = value


def note_unlogged(**fields: Any) -> None:
    """Add fields the ledger keeps but the access line must not show (proxy.ledger)."""
    record = CURRENT.get()
    if record is not None:
        record.unlogged.update({key: value for key, value in fields.items() if value is not None})


def note_hosted(name: str, expires_at: float) -> None:
    """An image the proxy now hosts for this request: the ledger keeps its name and when the last one expires."""
    record = CURRENT.get()
    if record is not None:
        record.unlogged.setdefault("image_ids", []).append(name)
        record.unlogged["images_expire_at"] = max(expires_at, record.unlogged.get("images_expire_at", 0.0))


def current_request_id() -> str | None:
    record = CURRENT.get()
    return record.request_id if record is not None else None


def upstream_call_took(seconds: float) -> None:
    record = CURRENT.get()
    if record is not None:
        record.upstream_seconds += seconds
        record.upstream_calls += 1


def access_fields(record: RequestRecord, method: str, path: str, status: int) -> dict[str, Any]:
    """What one access line says, in the order it says it."""
    return {
        "request_id": record.request_id,
        "method": method,
        "path": path,
        "status": status,
        **record.fields,
        "upstream_ms": round(record.upstream_seconds * 1000, 1),
        "upstream_calls": record.upstream_calls,
        "total_ms": round((time.perf_counter() - record.started) * 1000, 1),
    }


# One encoder for every line: json.dumps with options builds a new encoder on each call.
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def log_access(fields: dict[str, Any]) -> None:
    """One access line: its message is the JSON object, and the fields ride along for the formatters.

    The record is made directly rather than through `Logger.info`, which would walk the stack for the
    caller's file and line: an access line names its request, not a line of code."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = _compact(fields)
    record = access_log.makeRecord(
        access_log.name, logging.INFO, __file__, 0, "%s", (line,), None, extra={ACCESS: fields, ACCESS_JSON: line}
    )
    access_log.handle(record)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Quoted only when needed, so `grep model=dall-e-3` works and a prompt with spaces stays one value.
    return text if text and not any(char.isspace() or char in "\"=" for char in text) else json.dumps(text, ensure_ascii=False)


def text_line(fields: dict[str, Any]) -> str:
    """`POST /v1/images/generations 200 request_id=... model=... total_ms=...`, for `--log-format text`."""
    rest = {key: value for key, value in fields.items() if key not in ("method", "path", "status")}
    head = f"{fields.get('method')} {fields.get('path')} {fields.get('status')}"
    return " ".join([head, *(f"{key}={_text_value(value)}" for key, value in rest.items())])


class TextFormatter(logging.Formatter):
    """Plain text lines; access lines as `METHOD path status key=value ...` rather than JSON."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, ACCESS, None)
        if isinstance(access, dict):
            record = logging.makeLogRecord({**record.__dict__, "msg": text_line(access), "args": ()})
        line = super().format(record)
        worker = getattr(record, "worker", None)  # set by proxy.workers in each worker process
        return line if worker is None else f"[worker {worker}] {line}"


class JsonFormatter(logging.Formatter):
    """Every log line as one JSON object (access lines are JSON already and pass through as objects)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""
        self._heads: dict[tuple[str, str, Any], str] = {}

    def stamp(self, record: logging.LogRecord) -> str:
        # Lines arrive by the thousand per second: the time text changes once a second.
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp, self._heads = second, self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), {}
        return self._stamp

    def head(self, record: logging.LogRecord) -> str:
        """`{"time":...,"level":...,"logger":...,("worker":...,)` as `entry` would encode them, made once a second
        per logger."""
        stamp = self.stamp(record)
        worker = getattr(record, "worker", None)
        key = (record.levelname, record.name, worker)
        if key not in self._heads:
            self._heads[key] = _compact(self.head_fields(record, stamp, worker))[:-1] + ","
        return self._heads[key]

    @staticmethod
    def head_fields(record: logging.LogRecord, stamp: str, worker: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": stamp, "level": record.levelname.lower(), "logger": record.name}
        if worker is not None:  # set by proxy.workers in each worker process
            entry["worker"] = worker
        return entry

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, ACCESS, None)
        line = getattr(record, ACCESS_JSON, None)
        if isinstance(access, dict) and isinstance(line, str) and _splices(access):
            # The fields are encoded once: the entry's head goes before the encoded object's own fields.
            return self.head(record) + line[1:]
        return _compact(self.entry(record, access))

    def entry(self, record: logging.LogRecord, access: Any) -> dict[str, Any]:
        message = record.getMessage()
        entry = self.head_fields(record, self.stamp(record), getattr(record, "worker", None))
        if isinstance(access, dict):
            entry.update(access)
        else:
            entry["message"] = message
            if record.exc_info:
                entry["error"] = self.formatException(record.exc_info)
        request_id = current_request_id()
        if request_id is not None:
            entry.setdefault("request_id", request_id)
        return entry


def _splices(access: dict[str, Any]) -> bool:
    """Whether an access line's encoded fields can follow the entry's head as they are: they hold the request
    id (so none is added) and none of the head's keys (which `entry` would overwrite in place)."""
    return "request_id" in access and not any(key in access for key in _ENTRY_HEAD)
