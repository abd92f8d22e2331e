"""Adapter layer: pure translators between the OpenAI Images API and each provider's wire format.

An adapter never awaits anything. Given a Job it returns a Step (what to send, or the result);
given what came back it returns the next Step. The shell's driver owns the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from proxy.adapters import (
    azure,
    dashscope,
    flux,
    gemini,
    kling,
    local,
    openai,
    replicate,
    sdwebui,
    seedream_stream,
    stability,
    zhipu,
)
from proxy.adapters.base import AdapterSpec
from proxy.core.rules import ChannelSchema

_ALL = (
    openai.SPEC,
    local.SPEC,
    azure.SPEC,
    zhipu.SPEC,
    seedream_stream.SPEC,  # seedream with its native stream
    stability.SPEC,
    gemini.SPEC,
    sdwebui.SPEC,
    kling.SPEC,
    dashscope.SPEC,
    flux.SPEC,
    replicate.SPEC,
)
ADAPTERS: Mapping[str, AdapterSpec] = MappingProxyType({spec.name: spec for spec in _ALL})
SCHEMAS: Mapping[str, ChannelSchema] = MappingProxyType({name: spec.schema for name, spec in ADAPTERS.items()})
