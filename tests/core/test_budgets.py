"""Budgets as values: the most a request can cost, micro-dollars rounded up, and the UTC month window."""

from __future__ import annotations

import datetime
from decimal import Decimal

from proxy.core.budgets import PIXELS_RESERVED, ceiling, micro, month_window
from proxy.core.pricing import parse_price


def test_the_ceiling_of_per_image_prices_is_the_matching_entry_or_the_dearest_for_auto() -> None:
    price = parse_price({"per_image": {"1024x1024 low": 0.011, "1024x1024": 0.042, "* high": 0.25, "*": 0.063}})
    assert ceiling(price, 3, "1024x1024", "low") == Decimal("0.033")
    assert ceiling(price, 1, "1536x1024", "high") == Decimal("0.25")
    assert ceiling(price, 2, "auto", "low") == Decimal("0.5")  # the provider picks the size: the dearest entry
    assert ceiling(None, 10, "1024x1024", None) == 0
    # The provider picks the quality (none asked, or `auto`), and the answer is priced at what it reports:
    # the dearest entry the size can match, not the entry for "auto".
    assert ceiling(price, 1, "1024x1024", None) == ceiling(price, 1, "1024x1024", "auto") == Decimal("0.25")
    sized = parse_price({"per_image": {"1024x1024 high": 0.167, "1024x1024": 0.042, "1536x1024 high": 0.25}})
    assert ceiling(sized, 2, "1024x1024", "auto") == Decimal("0.334")  # 1536x1024's entry cannot apply


def test_the_ceiling_of_pixel_and_token_prices() -> None:
    assert ceiling(parse_price({"per_megapixel": 0.05}), 2, "1000x500", None) == Decimal("0.05")
    assert ceiling(parse_price({"per_megapixel": 1}), 1, None, None) == Decimal(PIXELS_RESERVED) / 1_000_000
    tokens = parse_price({"per_million_tokens": {"text_input": 5, "image_input": 10, "image_output": 40}})
    assert ceiling(tokens, 1, "1024x1024", "high") == (Decimal(4096) * 5 + Decimal(8192) * 10 + Decimal(16384) * 40) / 1_000_000
    # Priced both ways, an answer without usage is charged by image: the reservation covers the dearer.
    both = parse_price({"per_million_tokens": {"text_input": 5, "image_output": 30}, "per_image": 1.0})
    assert ceiling(both, 2, "1024x1024", "high") == Decimal(2)


def test_micro_dollars_round_up() -> None:
    assert micro(Decimal("0.0000001")) == 1
    assert micro(Decimal("0.04")) == 40_000
    assert micro(Decimal(0)) == 0


def test_the_month_window_ends_at_the_next_utc_month() -> None:
    moment = datetime.datetime(2026, 12, 31, 23, 0, tzinfo=datetime.UTC).timestamp()
    number, left = month_window(moment)
    assert (number, left) == (2026 * 12 + 11, 3600.0)
    assert month_window(datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC).timestamp())[0] == number + 1
