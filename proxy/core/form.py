"""Core layer: the text fields of a multipart edit or variation, given the JSON types a body would have.

Multipart carries every value as text; the same validators as for JSON bodies then apply, so
`n=2`, `watermark=false` and `strength=0.4` mean what they mean in JSON. A value that does not
parse stays text and the validator rejects it with the field's name. `extra_body` (and an object-
valued `style` or `background`) arrive as JSON text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from proxy.core.request import loads_strict

INTEGER_FIELDS = frozenset({"n", "output_compression", "partial_images", "retries", "seed", "steps"})
NUMBER_FIELDS = frozenset({"strength", "cfg_scale", "guidance_scale"})
BOOLEAN_FIELDS = frozenset({"watermark", "stream", "async"})
JSON_FIELDS = frozenset({"extra_body", "style", "background"})


# Spelled as JSON spells numbers: Python's own spellings (`1_0`, Unicode digits, `nan`, `inf`) stay text, which
# the field's check refuses, as the same value in a JSON body would be.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def _integer(text: str) -> Any:
    stripped = text.strip()
    return int(stripped) if _INTEGER.fullmatch(stripped) else text


def _number(text: str) -> Any:
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        return text
    value = float(stripped)
    return value if math.isfinite(value) else text  # 1e999 overflows to infinity: text too


def _boolean(text: str) -> Any:
    lowered = text.strip().lower()
    return {"true": True, "false": False}.get(lowered, text)


def _json(text: str) -> Any:
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        # The same strict JSON as a body (no NaN, Infinity, overflowing numbers or lone surrogates), so a
        # form cannot smuggle into the upstream body what a JSON request may not.
        return loads_strict(text)
    except (ValueError, RecursionError):
        return text


def coerce_field(name: str, text: str) -> Any:
    if name in INTEGER_FIELDS:
        return _integer(text)
    if name in NUMBER_FIELDS:
        return _number(text)
    if name in BOOLEAN_FIELDS:
        return _boolean(text)
    if name in JSON_FIELDS:
        return _json(text)
    return text


def coerce_fields(fields: Mapping[str, str | list[str]]) -> dict[str, Any]:
    """Typed values for a form's text fields; repeated fields (`image[]` URLs) stay lists."""
    typed: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, list):
            typed[name] = [coerce_field(name, item) for item in value]
        else:
            typed[name] = coerce_field(name, value)
    return typed
