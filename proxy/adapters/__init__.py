"""Adapter layer: pure translators between the OpenAI Images API and each provider's wire format.

An adapter never awaits anything. Given a Job it returns a Step (what to send, or the result);
given what came back it returns the next Step. The shell's driver owns the I/O.

`register(spec)` is the one registration point (ARCHITECTURE.md §7): a channel whose `type` is the
spec's name is served by it. The built-in adapters register here; a provider kept outside the package
registers the same way before the rules are loaded.
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
from proxy.adapters.base import AdapterSpec, Job
from proxy.core.model_card import ChannelFacts
from proxy.core.plan import Plan
from proxy.core.rules import Channel, ChannelSchema, ModelRule

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
_REGISTERED: dict[str, AdapterSpec] = {}
_SCHEMAS: dict[str, ChannelSchema] = {}
# Read-only views that follow registrations: the rules loader reads SCHEMAS, the driver ADAPTERS.
ADAPTERS: Mapping[str, AdapterSpec] = MappingProxyType(_REGISTERED)
SCHEMAS: Mapping[str, ChannelSchema] = MappingProxyType(_SCHEMAS)


def register(spec: AdapterSpec) -> AdapterSpec:
    """Serve channels of `type: <spec.name>` with `spec`. A name is registered once (ValueError otherwise)."""
    if _REGISTERED.get(spec.name, spec) is not spec:
        raise ValueError(f"an adapter named '{spec.name}' is already registered")
    _REGISTERED[spec.name] = spec
    _SCHEMAS[spec.name] = spec.schema
    return spec


def unregister(name: str) -> None:
    """Forget the adapter registered as `name` (its channels no longer load)."""
    _REGISTERED.pop(name, None)
    _SCHEMAS.pop(name, None)


for _spec in _ALL:
    register(_spec)


def channel_facts(rule: ModelRule, channel: Channel, model: str) -> ChannelFacts:
    """What the channel's adapter declares for `model` under `rule`, for its model card (proxy.core.model_card).

    Declarations that depend on the job (formats, images per call) are read from a plan with no request in
    it, for the name the channel serves `model` as; the job holds no key, since nothing is sent.
    """
    spec = _REGISTERED.get(channel.type)
    if spec is None:
        return ChannelFacts()  # its adapter was unregistered after the rules loaded: nothing is declared
    plan = Plan(model=model, upstream_model=rule.upstream_for(channel.name, model), prompt="", n=1,
                fields=MappingProxyType({}), response_format=None, rule=rule)
    job = Job(plan, channel, None)
    return ChannelFacts(
        operations=spec.operations,
        native_stream=spec.streams_natively,
        max_n_per_call=spec.per_call(job),
        formats=spec.native_formats(job),
    )
