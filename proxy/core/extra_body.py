"""Core layer: merging a client's `extra_body` into an upstream body without changing what was validated.

`extra_body` (seed 001) carries provider-specific fields the proxy does not map, verbatim. It may add
keys at any depth (nested objects merge), but never replace a value the adapter already set: `model`,
`n`, `size` and the rest went through the rules' whitelists, and a silent override would bypass them.
Such a conflict is the client's mistake, reported as a 400 naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.core.errors import InvalidRequest


def merge_extra_body(body: Mapping[str, Any], extra: Mapping[str, Any], *, path: str = "extra_body") -> dict[str, Any]:
    """`body` with `extra`'s keys added; InvalidRequest (param `extra_body.<key>`) when one is already set."""
    merged = dict(body)
    for key, value in extra.items():
        where = f"{path}.{key}"
        if key not in merged:
            merged[key] = value
        elif isinstance(merged[key], Mapping) and isinstance(value, Mapping):
            merged[key] = merge_extra_body(merged[key], value, path=where)
        else:
            raise InvalidRequest(
                f"'{where}' would replace '{key}', which the proxy sets from the request; use the top-level field instead.",
                param=where,
                code="invalid_value",
            )
    return merged
