"""Core layer: model cards, what the loaded rules say about each image model the proxy serves, as JSON-ready dicts.

    GET /v1/images/models        {"object": "list", "data": [card, ...]}   every model rule, in the file's order
    GET /v1/images/models/{id}   card, or 404 `model_not_found` (param `model`)

A card is built from the rules and from what the channels' adapters declare (`ChannelFacts`, filled in by
the adapter layer: `proxy.adapters.channel_facts`), never from lists kept here:
  * `operations`: generate and async always; edit where a channel's adapter has edits or the rule forwards
    `image` (an edit is then sent as a generation with the uploads in `image`, proxy.input_images); variation
    where a channel's adapter has variations; stream always, `native` when the first channel with its
    credentials streams natively (as proxy.streaming decides), else emulated;
  * `sizes` (the allowed list) or `size_rules` (the bounds, with a one-line `description`); both null: any WxH;
  * `values`: the rule's allowed values per field; `output_format` is always there (the rule's list, or the
    three formats the proxy honours for every model by converting what a provider cannot make);
  * `channels` in failover order, `credentials` saying whether the channel has what it needs (its key is
    set, or it takes none), never the key itself;
  * `translation` for a model served by another (a retired name): the target and how values, sizes and
    folded fields are mapped;
  * `price` as the rule holds it, amounts as JSON numbers like `metadata.cost_usd`, or null.
A glob rule's card says `pattern: true`; what depends on the upstream model (formats, images per call) is
evaluated on the pattern itself there. A retrieve takes an exact pattern first (`gpt-image-*` is that
rule), then a concrete name as requests are routed (`rules.match_model`): the card of the rule that serves
it, evaluated for that name, with `requested` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from proxy.core.catalog import model_not_found
from proxy.core.errors import NotFound
from proxy.core.formats import FORMATS, NativeFormats
from proxy.core.plan import EDIT, GENERATE, VARIATION
from proxy.core.pricing import Price
from proxy.core.rules import ALWAYS_FORWARDED, FORMAT_FIELDS, PROXY_FIELDS, Channel, ModelRule, Rules
from proxy.core.size_rules import SizeRules, describe
from proxy.core.translate import ORIGINAL, Translation

IMAGE_MODEL = "image_model"


@dataclass(frozen=True)
class ChannelFacts:
    """What one channel's adapter declares it does for one model."""

    operations: frozenset[str] = frozenset({GENERATE})
    native_stream: bool = False
    max_n_per_call: int | None = None  # None: any n in one call
    formats: NativeFormats = field(default_factory=lambda: NativeFormats(default=None))  # none declared


# (rule, channel, model name) -> what the channel's adapter declares for that model.
Facts = Callable[[ModelRule, Channel, str], ChannelFacts]


def model_cards(rules: Rules, facts: Facts) -> list[dict[str, Any]]:
    """A card for every model rule, exact names and globs alike, in the order of the rules file."""
    return [model_card(rules, rule, rule.pattern, facts) for rule in rules.models]


def find_card(rules: Rules, name: str, facts: Facts) -> dict[str, Any]:
    """The card of the rule whose pattern is `name`, else of the rule that serves `name`; NotFound otherwise."""
    exact = next((rule for rule in rules.models if rule.pattern == name), None)
    if exact is not None:
        return model_card(rules, exact, name, facts)
    try:
        rule = rules.match_model(name)
    except NotFound:
        raise model_not_found(name) from None
    return {**model_card(rules, rule, name, facts), "requested": name}


def model_card(rules: Rules, rule: ModelRule, name: str, facts: Facts) -> dict[str, Any]:
    """One rule's card; `name` is the model name the adapters' declarations are evaluated for."""
    channels = [rules.channels[channel] for channel in rule.channels]
    declared = [facts(rule, channel, name) for channel in channels]
    entries = [_channel(rule, channel, found, name) for channel, found in zip(channels, declared, strict=True)]
    upstream = {entry["upstream_model"] for entry in entries}
    served_as = upstream.pop() if len(upstream) == 1 else None  # channels that disagree each say their own
    return {
        "id": rule.pattern,
        "object": IMAGE_MODEL,
        "pattern": rule.is_glob,
        "available": any(channel.usable for channel in channels),
        "operations": _operations(rule, channels, declared),
        "sizes": list(rule.sizes) if rule.sizes is not None else None,
        "size_rules": _size_rules(rule.size_rules),
        "max_n": rule.max_n,
        "values": _values(rule),
        "defaults": dict(rule.defaults),
        "fields": _fields(rule),
        "upstream_model": served_as,
        "translation": _translation(rule.translation, served_as),
        "channels": entries,
        "price": _price(rule.price),
    }


def _operations(rule: ModelRule, channels: Sequence[Channel], declared: Sequence[ChannelFacts]) -> dict[str, Any]:
    offered = frozenset().union(*(found.operations for found in declared))
    # The shell streams natively when the first channel it would use does (proxy.streaming.streams_natively).
    first = next((index for index, channel in enumerate(channels) if channel.usable), 0)
    return {
        GENERATE: True,
        EDIT: EDIT in offered or "image" in rule.passthrough,
        VARIATION: VARIATION in offered,
        "stream": {"native": bool(declared) and declared[first].native_stream},
        "async": True,
    }


def _channel(rule: ModelRule, channel: Channel, found: ChannelFacts, name: str) -> dict[str, Any]:
    upstream = rule.upstream_for(channel.name, name)
    return {
        "name": channel.name,
        "type": channel.type,
        "credentials": channel.usable,
        "weight": channel.weight,
        # A glob without an upstream name sends the name the client asked: no one name to give.
        "upstream_model": None if rule.is_glob and upstream == rule.pattern else upstream,
        "max_n_per_call": found.max_n_per_call,
        "native_stream": found.native_stream,
        "output_formats": {
            "native": [kind for kind in FORMATS if kind in found.formats.asked],
            "default": found.formats.default,
            "compression": found.formats.compression,
        },
    }


def _size_rules(rules: SizeRules | None) -> dict[str, Any] | None:
    if rules is None:
        return None
    limits: dict[str, Any] = {item.name: getattr(rules, item.name) for item in fields(rules)}
    ratio = rules.max_aspect_ratio
    limits["max_aspect_ratio"] = f"{ratio[0]}:{ratio[1]}" if ratio is not None else None
    return {**{key: value for key, value in limits.items() if value is not None}, "description": describe(rules)}


def _values(rule: ModelRule) -> dict[str, list[Any]]:
    values = {name: list(allowed) for name, allowed in rule.values.items()}
    # Every model takes every output format: a provider that cannot make one gets its image converted.
    values.setdefault("output_format", list(FORMATS))
    return values


def _fields(rule: ModelRule) -> dict[str, list[str]]:
    return {
        "forwarded": sorted(ALWAYS_FORWARDED | rule.passthrough),
        "honoured_by_proxy": sorted(PROXY_FIELDS | FORMAT_FIELDS),
        "folded_into_prompt": sorted(rule.translation.folded),
    }


def _translation(translation: Translation, served_as: str | None) -> dict[str, Any] | None:
    if translation == Translation():
        return None
    return {
        "served_by": served_as,
        "values": {name: dict(mapping) for name, mapping in translation.values.items()},
        "upstream_sizes": [str(size) for size in translation.upstream_sizes],
        "upstream_size_multiple": translation.size_multiple,
        "prompt_suffix": {name: dict(texts) for name, texts in translation.prompt_suffix.items()},
        "revised_prompt_is_original": translation.revised_prompt == ORIGINAL,
    }


def _usd(amount: Decimal) -> float:
    # A number, as metadata.cost_usd is; a rate is not rounded to micro-dollars (only a cost is).
    return float(amount)


def _price(price: Price | None) -> dict[str, Any] | None:
    if price is None:
        return None
    shown: dict[str, Any] = {}
    if price.per_image:
        shown["per_image"] = [{"size": size, "quality": quality, "usd": _usd(amount)}
                              for size, quality, amount in price.per_image]
    if price.per_megapixel is not None:
        shown["per_megapixel"] = _usd(price.per_megapixel)
    if price.per_million_tokens:
        shown["per_million_tokens"] = {kind: _usd(amount) for kind, amount in price.per_million_tokens.items()}
    return shown
