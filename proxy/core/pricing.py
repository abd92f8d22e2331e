"""Core layer: what a model's images cost, from the price its rule declares (USD, exact).

A model's `price` in rules.yaml takes one of three forms (or `per_image` beside `per_million_tokens`,
for providers that report usage on some answers and not on others):

    price: {per_image: 0.04}                                   # every image the same
    price:
      per_image: {"1024x1024 low": 0.011, "* high": 0.167, "*": 0.042}   # "<size> <quality>", globs; first match wins
    price: {per_megapixel: 0.05}                               # by the delivered image's pixels
    price: {per_million_tokens: {text_input: 5, image_input: 10, image_output: 40}}

Token prices apply when the answer reports usage (GPT image models do: `input_tokens_details` splits
text and image input, `output_tokens` are the image's); otherwise per-image or per-megapixel prices do.
Only delivered images cost anything: a failed or lost image is not counted, and a partial fan-out costs
what reached the client. Amounts are `Decimal`s, never floats, and a cost is rounded to whole
micro-dollars only when it is rendered.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from proxy.core.mime import image_dimensions
from proxy.core.response import Base64, ImagesResult
from proxy.core.sizes import parse_size

MICRO = Decimal("0.000001")
TOKEN_KINDS = ("text_input", "image_input", "image_output")
_MILLION = Decimal(1_000_000)


class PriceError(ValueError):
    """A price that is not one of the forms above; `path` is where inside `price` (e.g. `per_image["* hd"]`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Price:
    # ("<size glob>", "<quality glob>", USD) in the order written: the first that matches an image wins.
    per_image: tuple[tuple[str, str, Decimal], ...] = ()
    per_megapixel: Decimal | None = None
    per_million_tokens: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))


MAX_PRICE = Decimal(1_000_000)  # USD per image, megapixel or million tokens
MAX_PLACES = 12


def usd(value: Any) -> Decimal | None:
    """An amount as written in the rules (a number or a numeric string), exactly; None when it is none."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        # Through str: 0.1 written in YAML is the decimal 0.1, not the float nearest to it.
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _amount(path: str, value: Any) -> Decimal:
    amount = usd(value)
    if amount is None:
        raise PriceError(path, f"expected an amount in USD, got {value!r}")
    if amount < 0:
        raise PriceError(path, f"expected an amount of at least 0, got {value!r}")
    # Costs are rounded to micro-dollars and counted in 64-bit counters: a price past these cannot be.
    if amount > MAX_PRICE or amount.as_tuple().exponent < -MAX_PLACES:  # type: ignore[operator]
        raise PriceError(path, f"expected at most {MAX_PRICE} USD with at most {MAX_PLACES} decimal places, got {value!r}")
    return amount


def _per_image(value: Any) -> tuple[tuple[str, str, Decimal], ...]:
    if not isinstance(value, dict):
        return (("*", "*", _amount("per_image", value)),)
    entries = []
    for key, amount in value.items():
        size, _, quality = str(key).strip().partition(" ")
        entries.append((size or "*", quality.strip() or "*", _amount(f'per_image["{key}"]', amount)))
    return tuple(entries)


def _tokens(value: Any) -> Mapping[str, Decimal]:
    if not isinstance(value, dict) or not value:
        raise PriceError("per_million_tokens", f"expected a mapping of {', '.join(TOKEN_KINDS)} to USD")
    unknown = sorted(str(kind) for kind in value if kind not in TOKEN_KINDS)
    if unknown:
        raise PriceError(f"per_million_tokens.{unknown[0]}", f"unknown token kind (known: {', '.join(TOKEN_KINDS)})")
    return MappingProxyType({kind: _amount(f"per_million_tokens.{kind}", amount) for kind, amount in value.items()})


def parse_price(value: Any) -> Price:
    """A rule's `price`; PriceError naming the part that is wrong."""
    if not isinstance(value, dict) or not value:
        raise PriceError("", "expected per_image, per_megapixel or per_million_tokens")
    unknown = sorted(set(value) - {"per_image", "per_megapixel", "per_million_tokens"})
    if unknown:
        raise PriceError(unknown[0], "unknown key (known: per_image, per_megapixel, per_million_tokens)")
    if "per_image" in value and "per_megapixel" in value:
        raise PriceError("per_megapixel", "a price is per image or per megapixel, not both")
    return Price(
        per_image=_per_image(value["per_image"]) if "per_image" in value else (),
        per_megapixel=_amount("per_megapixel", value["per_megapixel"]) if "per_megapixel" in value else None,
        per_million_tokens=_tokens(value["per_million_tokens"]) if "per_million_tokens" in value else MappingProxyType({}),
    )


@dataclass(frozen=True)
class Delivered:
    """One image the client got: the size it was asked as (or made at), and the quality asked."""

    size: str | None  # WxH, "auto" or None when nobody said
    quality: str | None
    pixels: int | None = None  # width * height when known (the answer's size, or the image's own)


_HEADER_CHARS = 87_384  # base64 characters of the first 64 KiB: enough for any image header's dimensions


def _pixels(size: str | None, b64: Base64 | None) -> int | None:
    parsed = parse_size(size) if size else None
    if parsed is not None:
        return parsed.pixels
    if b64 is None:
        return None
    try:
        head = base64.b64decode(b64[:_HEADER_CHARS - _HEADER_CHARS % 4])
    except (binascii.Error, ValueError):
        return None
    found = image_dimensions(head)
    return found[0] * found[1] if found is not None else None


def priced(size: Any, quality: Any, b64: Base64 | None = None, *, header: bool = False) -> Delivered:
    """One delivered image as priced: its size and quality (when they are strings), pixels from the size,
    or, with `header` (only per-megapixel prices need it), from the image's own header when the size is `auto`."""
    size = size if isinstance(size, str) else None
    return Delivered(size, quality if isinstance(quality, str) else None, _pixels(size, b64 if header else None))


def delivered(result: ImagesResult, asked_size: str | None, asked_quality: str | None, price: Price | None
              ) -> list[Delivered]:
    """The images of a delivered result as priced: the size the answer reports (else the one asked) and
    the quality asked. An image's header is read only for a per-megapixel price (it costs a base64 decode)."""
    reported = result.extra.get("size")
    size = reported if isinstance(reported, str) and parse_size(reported) is not None else asked_size
    quality = asked_quality or result.extra.get("quality")
    header = price is not None and price.per_megapixel is not None
    return [priced(size, quality, image.b64_json, header=header) for image in result.images]


def image_price(price: Price, image: Delivered) -> Decimal | None:
    """What one delivered image costs by image (None: no per-image or per-megapixel price matches it)."""
    if price.per_megapixel is not None:
        return None if image.pixels is None else price.per_megapixel * image.pixels / _MILLION
    size, quality = image.size or "auto", image.quality or "auto"
    return next((usd for size_glob, quality_glob, usd in price.per_image
                 if fnmatch.fnmatchcase(size, size_glob) and fnmatch.fnmatchcase(quality, quality_glob)), None)


def _count(usage: Mapping[str, Any], *path: str) -> int:
    value: Any = usage
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def token_price(price: Price, usage: Mapping[str, Any] | None, output_share: Decimal = Decimal(1)) -> Decimal | None:
    """What reported usage costs (None: no token price, or no usage to price); `output_share` of the output
    tokens (the images that were delivered, of those made)."""
    if not price.per_million_tokens or not usage or (not _count(usage, "total_tokens") and not _count(usage, "output_tokens")):
        return None
    text, image = _count(usage, "input_tokens_details", "text_tokens"), _count(usage, "input_tokens_details", "image_tokens")
    if not text and not image:
        text = _count(usage, "input_tokens")  # no split reported: all input is the prompt
    counts: dict[str, Decimal] = {"text_input": Decimal(text), "image_input": Decimal(image),
                                  "image_output": _count(usage, "output_tokens") * output_share}
    rates = price.per_million_tokens
    return sum((rates.get(kind, Decimal(0)) * count for kind, count in counts.items()), Decimal(0)) / _MILLION


def cost(price: Price | None, images: Sequence[Delivered], usage: Mapping[str, Any] | None, lost: int = 0) -> Decimal | None:
    """What the delivered images cost: by tokens when usage was reported and priced, else by image. `lost`:
    images the upstream made (and reported tokens for) that never reached the client; their output is not charged.

    None when the model has no price or an image matches none of its per-image entries.
    """
    if price is None:
        return None
    if not images:
        return Decimal(0)  # nothing delivered, nothing owed
    by_tokens = token_price(price, usage, Decimal(len(images)) / (len(images) + lost))
    if by_tokens is not None:
        return by_tokens
    each = [image_price(price, image) for image in images]
    return None if any(amount is None for amount in each) else sum((a for a in each if a is not None), Decimal(0))


def render_usd(amount: Decimal) -> float:
    """An amount as JSON shows it: USD rounded to whole micro-dollars."""
    return float(amount.quantize(MICRO))
