"""Core layer: per-key budgets in USD, as values, and what a request may cost at most.

A key's budget caps what its delivered images cost per UTC day and per UTC calendar month. Before
any upstream call the proxy reserves the request's highest possible cost (`ceiling`) in both windows;
over either budget it is refused without a call. When the request ends the reservation is settled to
what the delivered images really cost (tokens included), or given back. Amounts are counted in whole
micro-dollars, so the shared counters (memory or Redis) add them exactly, across replicas.
"""

from __future__ import annotations

import datetime
import fnmatch
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from proxy.core.pricing import Delivered, Price, image_price
from proxy.core.sizes import parse_size

MICRO_PER_USD = 1_000_000
_MILLION = Decimal(1_000_000)  # prices are per million tokens, or per million pixels
# What one image may use at most, for models priced only by tokens: the reservation's ceiling (the
# settlement corrects it to what was reported). Generous on purpose: GPT image's largest high-quality
# image is about 6,000 output tokens, and an edit's inputs a few thousand.
TOKENS_RESERVED_PER_IMAGE = {"text_input": 4_096, "image_input": 8_192, "image_output": 16_384}
# Pixels reserved for an `auto` size on a per-megapixel price: the largest image any shipped model makes.
PIXELS_RESERVED = 4096 * 4096


@dataclass(frozen=True)
class Budget:
    usd_per_day: Decimal | None = None
    usd_per_month: Decimal | None = None

    @property
    def any(self) -> bool:
        return self.usd_per_day is not None or self.usd_per_month is not None


def micro(amount: Decimal) -> int:
    """USD as whole micro-dollars, rounded up (a reservation never falls short of the cost)."""
    return int((amount * MICRO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def _image_ceiling(price: Price, size: str | None, quality: str | None) -> Decimal:
    # Priced by tokens and by image, an answer is charged by image when it reports no usage: either may apply.
    return max(_token_ceiling(price), _by_image_ceiling(price, size, quality))


def _token_ceiling(price: Price) -> Decimal:
    rates = price.per_million_tokens
    return sum((rates.get(kind, Decimal(0)) * count for kind, count in TOKENS_RESERVED_PER_IMAGE.items()), Decimal(0)) / _MILLION


def _by_image_ceiling(price: Price, size: str | None, quality: str | None) -> Decimal:
    parsed = parse_size(size) if size else None
    if price.per_megapixel is not None:
        return price.per_megapixel * (parsed.pixels if parsed else PIXELS_RESERVED) / _MILLION
    if parsed is not None and quality not in (None, "auto"):
        matched = image_price(price, Delivered(size, quality))
        if matched is not None:
            return matched
    # A quality or size the provider picks (`auto`, or none asked): the dearest entry its choice could match.
    fitting = [usd for size_glob, _, usd in price.per_image if parsed is None or fnmatch.fnmatchcase(size or "", size_glob)]
    return max(fitting or [usd for _, _, usd in price.per_image], default=Decimal(0))


def ceiling(price: Price | None, n: int, size: str | None, quality: str | None) -> Decimal:
    """The most `n` images of this size and quality can cost at the model's price (0 when it has none)."""
    return Decimal(0) if price is None else _image_ceiling(price, size, quality) * n


def month_window(now: float) -> tuple[int, float]:
    """(month number, seconds until the next UTC month begins) for the timestamp `now`."""
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    following = datetime.datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=datetime.UTC)
    return moment.year * 12 + moment.month - 1, (following - moment).total_seconds()
