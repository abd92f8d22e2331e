"""Core layer: reading a record that another version of the proxy stored (a checkpoint, an idempotency
record, a task in Redis), during a rolling upgrade or after a rollback.

A field that a later version added is left out rather than refused, and one that an earlier version
did not write takes its default. Writers leave a new field out while it holds its default, so that the
versions before it can read what they write.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import fields
from typing import Any


@functools.cache
def _names(kind: type) -> frozenset[str]:
    return frozenset(item.name for item in fields(kind))


def known(kind: type, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `saved` that the dataclass `kind` has."""
    names = _names(kind)
    return {name: value for name, value in saved.items() if name in names}
