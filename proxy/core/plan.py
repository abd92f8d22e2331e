"""Core layer: a validated request plus its model rule becomes a Plan, what every adapter works from.

Which fields reach the upstream: `size` and `quality` always (every image API has them); every other
field only when the model's `passthrough` lists it. `response_format`, `async`, `retries` and `stream`
are the proxy's own business and are honoured whatever the upstream supports. `output_format` (and
`output_compression` with a jpeg or webp format) is honoured for every model: each channel is asked for
it when its adapter declares the provider makes it, otherwise the proxy converts (`with_output_format`).
A field the client sent that neither reaches the upstream nor is honoured by the proxy is listed in
`ignored`, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from proxy.core.errors import InvalidRequest
from proxy.core.formats import LOSSY, Conversion, NativeFormats, choose
from proxy.core.multipart import Part
from proxy.core.request import ImageRequest
from proxy.core.rules import ALWAYS_FORWARDED, PROXY_FIELDS, ModelRule
from proxy.core.size_rules import describe, size_problem
from proxy.core.translate import fold_prompt, translate_fields

GENERATE = "generate"
EDIT = "edit"
VARIATION = "variation"


@dataclass(frozen=True)
class Plan:
    model: str  # the name the client asked for
    upstream_model: str
    prompt: str  # what the upstream gets (with any folded suffixes)
    n: int
    fields: Mapping[str, Any]  # what reaches the adapter, canonical values, absence kept
    response_format: str | None  # what the client gets; None: whatever the upstream answers
    ignored: tuple[str, ...] = ()
    retries: int = 0
    wants_async: bool = False
    callback_url: str | None = None  # an async task's webhook (proxy.webhooks), as the client named it
    rule: ModelRule = field(default_factory=lambda: ModelRule(pattern="", channels=()))
    operation: str = GENERATE
    stream: bool = False
    client_prompt: str = ""  # the prompt as the client wrote it
    uploads: tuple[Part, ...] = ()  # edits and variations: the client's image files, in order
    mask: Part | None = None
    output_format: str | None = None  # what the client gets (canonical: png, jpeg, webp); None: the provider's
    output_compression: int | None = None  # with a jpeg or webp output_format: its compression, 0-100
    # Set per channel (with_output_format): what the proxy must do to that channel's images, if anything.
    conversion: Conversion | None = None

    def __repr__(self) -> str:
        # Uploads are megabytes; prompts may be private: keep both out of logs and tracebacks.
        return f"Plan(model={self.model!r}, operation={self.operation!r}, n={self.n}, uploads={len(self.uploads)})"


def _check_n(request: ImageRequest, rule: ModelRule) -> None:
    if request.n > rule.max_n:
        raise InvalidRequest(
            f"Invalid 'n': {request.n}. Model '{request.model}' allows between 1 and {rule.max_n} images.",
            param="n",
            code="invalid_value",
        )


def _check_size(model: str, size: str | None, rule: ModelRule) -> None:
    if size is None:
        return
    if rule.sizes is not None and size not in rule.sizes:
        raise InvalidRequest(
            f"Invalid size '{size}' for model '{model}'. Supported sizes: {', '.join(rule.sizes)}.",
            param="size",
            code="invalid_size",
        )
    broken = size_problem(size, rule.size_rules) if rule.size_rules is not None else None
    if broken is not None and rule.size_rules is not None:
        # Caught here, the client learns what to send instead of paying a round trip for the provider's 400.
        raise InvalidRequest(
            f"Invalid size '{size}' for model '{model}': {broken}. Allowed: {describe(rule.size_rules)}.",
            param="size",
            code="invalid_size",
        )


def _check_values(model: str, options: Mapping[str, Any], rule: ModelRule) -> None:
    for name, allowed in rule.values.items():
        if name in options and options[name] not in allowed:
            listed = ", ".join(str(value) for value in allowed)
            raise InvalidRequest(
                f"Invalid {name} '{options[name]}' for model '{model}'. Supported values: {listed}.",
                param=name,
                code="invalid_value",
            )


def forwarded(name: str, rule: ModelRule) -> bool:
    return name in ALWAYS_FORWARDED or name in rule.passthrough


def _format_field(name: str, options: Mapping[str, Any]) -> bool:
    """Whether the proxy itself honours this field: `output_format` always, `output_compression` when it
    goes with a lossy output_format (alone, or with png, it is an ordinary passthrough field)."""
    return name == "output_format" or (name == "output_compression" and options.get("output_format") in LOSSY)


def with_output_format(plan: Plan, native: NativeFormats) -> Plan:
    """The plan for one channel whose provider makes `native` formats: the output fields it is asked for,
    and the conversion the proxy owes the client when the provider cannot make what it asked."""
    if plan.output_format is None:
        return plan
    choice = choose(plan.output_format, plan.output_compression, native)
    return replace(plan, fields=MappingProxyType({**plan.fields, **choice.fields}), conversion=choice.conversion)


def defaults_for(rule: ModelRule, operation: str) -> dict[str, Any]:
    """The model's defaults that apply to this operation: OpenAI's variations endpoint has no `quality`,
    so a variation sends one only when the client did."""
    return {name: value for name, value in rule.defaults.items() if not (operation == VARIATION and name == "quality")}


def _callback_url(options: Mapping[str, Any]) -> str | None:
    """Only a task ends later: a request answered at once has nothing to call back about."""
    url = options.get("callback_url")
    if url is not None and not options.get("async", False):
        raise InvalidRequest("callback_url is only for async tasks: add `\"async\": true`.", param="callback_url",
                             code="invalid_value")
    return url


def build_plan(request: ImageRequest, rule: ModelRule, operation: str = GENERATE) -> Plan:
    """Apply defaults, whitelists and passthrough; raises InvalidRequest naming the param."""
    # Defaults fill only what the client left absent (seed 000: dall-e-3 -> quality standard).
    options = {**defaults_for(rule, operation), **request.options}
    _check_n(request, rule)
    _check_size(request.model, options.get("size"), rule)
    _check_values(request.model, options, rule)
    translation = rule.translation
    fields = translate_fields(
        {name: value for name, value in options.items() if forwarded(name, rule) and not _format_field(name, options)},
        translation,
    )
    stream = bool(options.get("stream", False))
    if stream and "partial_images" in options:
        # Part of the streaming contract itself: it reaches channels that stream natively.
        fields["partial_images"] = options["partial_images"]
    honoured = PROXY_FIELDS | translation.folded  # once, not per field
    ignored = sorted(
        name
        for name in request.options
        if not forwarded(name, rule)
        and not _format_field(name, options)
        and name not in honoured
        and not (stream and name == "partial_images")
    )
    return Plan(
        model=request.model,
        upstream_model=rule.upstream_model or request.model,
        prompt=fold_prompt(request.prompt, options, translation),
        client_prompt=request.prompt,
        n=request.n,
        fields=MappingProxyType(fields),
        response_format=options.get("response_format"),
        ignored=tuple(ignored),
        retries=int(options.get("retries", 0)),
        wants_async=bool(options.get("async", False)),
        callback_url=_callback_url(request.options),
        rule=rule,
        operation=operation,
        stream=stream,
        output_format=options.get("output_format"),
        output_compression=options.get("output_compression") if _format_field("output_compression", options) else None,
    )
