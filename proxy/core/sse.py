"""Core layer: Server-Sent Events as values. An incremental parser and the formatters for OpenAI's image streams.

Parsing follows WHATWG HTML "9.2.6 Interpreting an event stream": UTF-8 decoded with replacement, one
leading BOM dropped, lines end in CRLF, CR or LF (a CR that ends one chunk and an LF that starts the next
are one line end), `:` lines are comments, `field: value` loses one space after the colon, a line without
a colon is a field with an empty value, `data` lines join with "\\n", a blank line dispatches, an event
without data is not dispatched, and an event cut off by the end of the stream is discarded. `id`
persists across events as the spec's "last event ID"; `retry` is reported on the event whose block set it.
Unlike a browser the parser keeps `event` None when the stream names no type (the spec's default is
"message"), so a caller can tell "unnamed" from "named message".

A memory guard bounds one event: the characters of the line being read plus the data gathered so far
(image events carry megabytes of base64, hence a 64 MiB default). Past it `feed` raises ValueError.

Formatting: `format_event` / `format_json_event` write `event:` (optional) and one `data:` line per line
of data, then a blank line. OpenAI image streams name each event after its JSON `type`
(`event: image_generation.completed`), so callers pass `event=payload["type"]`.

Errors inside a stream: OpenAI's image streaming reference documents no error event, so this follows
what OpenAI sends mid-stream elsewhere (`event: error`, `data: {"type":"error","error":{...}}`, the
nested form seen from the Responses API) and what its SDKs catch: openai-python raises APIError for any
event whose JSON has an `error` key, openai-node does the same. The nested object is the error
envelope's own (`message`, `type`, `param`, `code`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_EVENT_SIZE = 64 * 1024 * 1024
KEEPALIVE: bytes = b": keep-alive\n\n"
DONE_DATA = "[DONE]"
KINDS = frozenset({"image_generation", "image_edit"})

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Bytes in, complete events out; chunk boundaries may fall anywhere (mid-line, mid-character, mid-CRLF)."""

    def __init__(self, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        if max_event_size <= 0:
            raise ValueError("max_event_size must be positive")
        self.max_event_size = max_event_size
        # utf-8-sig drops one BOM at the very start and only there, as the spec asks.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._line: list[str] = []  # pieces of the line not yet ended
        self._line_size = 0
        self._after_cr = False  # the last text ended in CR: an LF that comes next belongs to it
        self._data: list[str] = []
        self._data_size = 0
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._closed = False

    @property
    def pending(self) -> bool:
        """Whether an event has begun but not ended: at close it would be discarded (a cut-off stream)."""
        return bool(self._line_size or self._data or self._event_type or self._retry is not None)

    def feed(self, chunk: bytes) -> list[Event]:
        if self._closed:
            raise ValueError("feed() after close()")
        return self._text(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """End of stream: what is still buffered is an unterminated event, which the spec discards."""
        if self._closed:
            return []
        self._decoder.decode(b"", final=True)
        self._closed = True
        self._line, self._line_size, self._data, self._data_size = [], 0, [], 0
        self._event_type, self._retry = "", None
        return []

    def _text(self, text: str) -> list[Event]:
        if self._after_cr and text:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
        events: list[Event] = []
        start = 0
        for match in _LINE_END.finditer(text):
            self._append(text[start:match.start()])
            line = "".join(self._line)
            self._line, self._line_size = [], 0
            event = self._process(line)
            if event is not None:
                events.append(event)
            start = match.end()
        self._append(text[start:])
        # A CR at the end was taken as a line end already; if the next text starts with LF, it is the same one.
        if text:
            self._after_cr = text.endswith("\r")
        return events

    def _append(self, piece: str) -> None:
        if not piece:
            return
        self._line.append(piece)
        self._line_size += len(piece)
        self._check_size()

    def _check_size(self) -> None:
        if self._line_size + self._data_size > self.max_event_size:
            raise ValueError(f"SSE event larger than {self.max_event_size} characters")

    def _process(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._field(name, value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            self._check_size()
        elif name == "event":
            self._event_type = value
        elif name == "id" and "\x00" not in value:
            # An id with NUL is ignored by the spec (it could not round-trip through Last-Event-ID).
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field name (and a malformed id or retry) is ignored, as the spec says.

    def _dispatch(self) -> Event | None:
        data, event_type, retry = self._data, self._event_type, self._retry
        self._data, self._data_size, self._event_type, self._retry = [], 0, "", None
        if not data:
            return None
        return Event(event=event_type or None, data="\n".join(data), id=self._last_id, retry=retry)


def is_done(event: Event) -> bool:
    """The `data: [DONE]` sentinel that ends OpenAI-style (and Ark) streams."""
    return event.data.strip() == DONE_DATA


def format_event(data: str, event: str | None = None) -> bytes:
    """One SSE event: `event:` when named, a `data:` line per line of `data`, and the blank line that ends it."""
    parts: list[str] = []
    if event is not None:
        if _LINE_END.search(event):
            raise ValueError("an SSE event name cannot contain a line break")
        parts.append(f"event: {event}\n")
    parts.extend(f"data: {line}\n" for line in _LINE_END.split(data))
    parts.append("\n")
    # A lone surrogate (from an upstream's `"\\ud800"`) has no UTF-8 form: it goes out as that JSON escape.
    return "".join(parts).encode("utf-8", "backslashreplace")


def format_json_event(obj: Mapping[str, Any], event: str | None = None) -> bytes:
    # Compact JSON never contains a raw line break, so the payload is always one `data:` line.
    return format_event(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), event)


def error_payload(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """`{"type": "error", "error": {...}}` from an OpenAI error envelope `{"error": {...}}`."""
    error = envelope.get("error")
    if not isinstance(error, Mapping):
        raise ValueError("an error envelope needs an 'error' object")
    return {"type": "error", "error": dict(error)}


def error_event(envelope: Mapping[str, Any]) -> bytes:
    payload = error_payload(envelope)
    return format_json_event(payload, event=payload["type"])


def completed_event(
    *,
    kind: str = "image_generation",
    b64_json: str | None = None,
    url: str | None = None,
    created_at: int | None = None,
    size: str | None = None,
    quality: str | None = None,
    background: str | None = None,
    output_format: str | None = None,
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAI's `<kind>.completed` payload with only the keys that are known.

    OpenAI sends `b64_json`; `url` is this proxy's extension for upstreams that answer with links.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    if b64_json is None and url is None:
        raise ValueError("a completed event needs b64_json or url")
    payload: dict[str, Any] = {"type": f"{kind}.completed"}
    optional: dict[str, Any] = {
        "b64_json": b64_json,
        "url": url,
        "created_at": created_at,
        "size": size,
        "quality": quality,
        "background": background,
        "output_format": output_format,
        "usage": dict(usage) if usage is not None else None,
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    return payload


def partial_image_event(
    *,
    kind: str = "image_generation",
    b64_json: str,
    partial_image_index: int,
    created_at: int | None = None,
    size: str | None = None,
    quality: str | None = None,
    background: str | None = None,
    output_format: str | None = None,
) -> dict[str, Any]:
    """OpenAI's `<kind>.partial_image` payload (a base64 preview, numbered from 0) with only the keys that are known."""
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    payload: dict[str, Any] = {"type": f"{kind}.partial_image", "b64_json": b64_json,
                               "partial_image_index": partial_image_index}
    optional: dict[str, Any] = {
        "created_at": created_at,
        "size": size,
        "quality": quality,
        "background": background,
        "output_format": output_format,
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    return payload
