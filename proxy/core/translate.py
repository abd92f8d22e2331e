"""Core layer: translating a request for a model that speaks another dialect (retired names, aliases).

A model rule may say how the client's values become the target's (rules.yaml keys in parentheses):
- value maps (`translate: {quality: {standard: medium, hd: high}}`); a value mapped to null is dropped;
- sizes: to the nearest of the target's sizes (`upstream_sizes`), nearest in shape first, then in
  pixel count (1792x1024 -> 1536x1024), or rounded to a multiple (`upstream_size_multiple: 16`) for
  targets that take any WxH;
- fields the target rejects folded into the prompt (`prompt_suffix: {style: {vivid: "..."}}`);
- `revised_prompt: original`: when the target returns no revised prompt, the client still gets one
  (its own prompt), as the legacy model always sent it.
The client-facing checks (`sizes`, `values`, `max_n`) run before any of this, on the client's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from proxy.core.response import ImagesResult
from proxy.core.sizes import AUTO, Size, nearest_size, parse_size

ORIGINAL = "original"
UPSTREAM = "upstream"


@dataclass(frozen=True)
class Translation:
    values: Mapping[str, Mapping[Any, Any]] = field(default_factory=lambda: MappingProxyType({}))
    upstream_sizes: tuple[Size, ...] = ()
    size_multiple: int | None = None
    prompt_suffix: Mapping[str, Mapping[Any, str]] = field(default_factory=lambda: MappingProxyType({}))
    revised_prompt: str = UPSTREAM

    @property
    def folded(self) -> frozenset[str]:
        """Fields consumed into the prompt: neither forwarded nor reported as ignored."""
        return frozenset(self.prompt_suffix)


def _round(value: int, multiple: int) -> int:
    return max(multiple, int(value / multiple + 0.5) * multiple)  # half rounds up, not to even


def translate_size(size: str, translation: Translation) -> str:
    parsed = parse_size(size)
    if parsed is None or size == AUTO:
        return size
    if translation.upstream_sizes:
        return str(nearest_size(parsed, translation.upstream_sizes))
    if translation.size_multiple:
        return str(Size(_round(parsed.width, translation.size_multiple), _round(parsed.height, translation.size_multiple)))
    return size


def translate_fields(fields: Mapping[str, Any], translation: Translation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        mapping = translation.values.get(name)
        if mapping is not None and _hashable(value) and value in mapping:
            value = mapping[value]
            if value is None:
                continue  # mapped to null: the target has no such field
        out[name] = value
    if isinstance(out.get("size"), str):
        out["size"] = translate_size(out["size"], translation)
    return out


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def fold_prompt(prompt: str, options: Mapping[str, Any], translation: Translation) -> str:
    """The prompt with the suffixes of folded fields the client set (in the rules' order)."""
    for name, texts in translation.prompt_suffix.items():
        value = options.get(name)
        if _hashable(value) and value in texts:
            prompt += texts[value]
    return prompt


def revised_prompt(given: str | None, prompt: str, translation: Translation) -> str | None:
    """The revised_prompt an image goes out with: legacy models always returned one, so where the target
    gave none it is the client's own prompt (a variation has no prompt, so it gets none)."""
    if translation.revised_prompt != ORIGINAL or given or not prompt:
        return given
    return prompt


def with_revised_prompt(result: ImagesResult, prompt: str, translation: Translation) -> ImagesResult:
    """Every image with its revised_prompt (see revised_prompt)."""
    if translation.revised_prompt != ORIGINAL:
        return result
    images = tuple(replace(image, revised_prompt=revised_prompt(image.revised_prompt, prompt, translation))
                   for image in result.images)
    return replace(result, images=images)
