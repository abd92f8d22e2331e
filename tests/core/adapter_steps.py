"""Adapter-test helpers: a channel's settings as the rules loader keeps them, and a first step as the driver sees it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from proxy.adapters.base import AdapterSpec, Fail, Job, Step
from proxy.core.channel_settings import parse_settings
from proxy.core.errors import ProxyError


def declared(spec: AdapterSpec, written: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """`written` checked against the adapter's declaration, every default filled in; bad values fail the test."""
    values, problems = parse_settings(dict(written or {}), spec.schema.settings, spec.schema.relations)
    assert not problems, problems
    return MappingProxyType(values)


def started(spec: AdapterSpec, job: Job) -> Step:
    """The adapter's first step, a raised ProxyError taken as the Fail it stands for (as proxy.driver does)."""
    try:
        return spec.start(job)
    except ProxyError as error:
        return Fail(error)
