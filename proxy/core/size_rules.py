"""Core layer: size rules, the sizes a model accepts when its provider takes a range rather than a list.

A model's `size_rules` in rules.yaml say which `WxH` a client may ask for:
- `multiple_of`: width and height are both multiples of N;
- `min_side`, `max_side`: every side within these pixel bounds;
- `min_pixels`, `max_pixels`: width x height within these bounds;
- `max_aspect_ratio`: the long side over the short side at most this (`"3:1"`, `"21:9"`), either orientation;
- `auto`: whether `auto` is accepted (the provider has it, or the adapter maps it).
`size_problem` names the first rule a size breaks and `describe` says in one sentence what is allowed,
so the client's 400 tells it what to send instead. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.sizes import AUTO, Size, parse_size


@dataclass(frozen=True)
class SizeRules:
    multiple_of: int | None = None
    min_side: int | None = None
    max_side: int | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    # (long, short): the widest shape accepted, the same bound for landscape and portrait.
    max_aspect_ratio: tuple[int, int] | None = None
    auto: bool = False


def widest(ratio: tuple[int, int]) -> tuple[int, int]:
    """A ratio as (long, short), so that 9:21 and 21:9 are the same bound."""
    return (max(ratio), min(ratio))


def _ratio_text(ratio: tuple[int, int]) -> str:
    return f"{ratio[0]}:{ratio[1]}"


def size_problem(size: str, rules: SizeRules) -> str | None:
    """Why the canonical size (`WxH` or `auto`) breaks the rules, or None when it keeps them."""
    if size == AUTO:
        return None if rules.auto else "'auto' is not accepted"
    parsed = parse_size(size)
    if parsed is None:
        return "it is not WIDTHxHEIGHT"
    return _sides_problem(parsed, rules) or _area_problem(parsed, rules)


def _sides_problem(size: Size, rules: SizeRules) -> str | None:
    long, short = max(size.width, size.height), min(size.width, size.height)
    step = rules.multiple_of
    if step is not None and (size.width % step or size.height % step):
        return f"width and height must be multiples of {step}"
    if rules.min_side is not None and short < rules.min_side:
        return f"each side must be at least {rules.min_side} px"
    if rules.max_side is not None and long > rules.max_side:
        return f"each side must be at most {rules.max_side} px"
    return None


def _area_problem(size: Size, rules: SizeRules) -> str | None:
    if rules.min_pixels is not None and size.pixels < rules.min_pixels:
        return f"width x height must be at least {rules.min_pixels:,} pixels"
    if rules.max_pixels is not None and size.pixels > rules.max_pixels:
        return f"width x height must be at most {rules.max_pixels:,} pixels"
    ratio = rules.max_aspect_ratio
    # Compared as integers (long * r_short <= short * r_long), so no float rounding decides a border case.
    if ratio is not None and max(size.width, size.height) * ratio[1] > min(size.width, size.height) * ratio[0]:
        return f"the aspect ratio must be at most {_ratio_text(ratio)}"
    return None


def describe(rules: SizeRules) -> str:
    """What the rules allow, e.g. `WIDTHxHEIGHT with sides multiples of 16, ...; or 'auto'`."""
    parts: list[str] = []
    if rules.multiple_of is not None:
        parts.append(f"sides multiples of {rules.multiple_of}")
    parts.extend(_bounds("each side", rules.min_side, rules.max_side, "px"))
    parts.extend(_bounds("width x height", rules.min_pixels, rules.max_pixels, "pixels"))
    if rules.max_aspect_ratio is not None:
        parts.append(f"aspect ratio at most {_ratio_text(rules.max_aspect_ratio)}")
    text = "WIDTHxHEIGHT" + (f" with {', '.join(parts)}" if parts else "")
    return f"{text}; or 'auto'" if rules.auto else text


def _bounds(what: str, low: int | None, high: int | None, unit: str) -> list[str]:
    def spell(number: int) -> str:
        # Pixel counts read better grouped (8,294,400); sides stay plain (2048 px).
        return f"{number:,}" if unit == "pixels" else str(number)

    if low is not None and high is not None:
        return [f"{what} {spell(low)} to {spell(high)} {unit}"]
    if low is not None:
        return [f"{what} at least {spell(low)} {unit}"]
    if high is not None:
        return [f"{what} at most {spell(high)} {unit}"]
    return []
