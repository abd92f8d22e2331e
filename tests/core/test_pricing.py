"""Prices in the rules and what delivered images cost (proxy.core.pricing): exact decimals, first match wins."""

from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.core.pricing import Delivered, PriceError, cost, image_price, parse_price, render_usd, token_price

GPT_USAGE = {
    "input_tokens": 50,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
    "output_tokens": 4160,
    "total_tokens": 4210,
}


def test_a_flat_price_is_per_delivered_image_and_exact() -> None:
    price = parse_price({"per_image": 0.1})
    images = [Delivered("1024x1024", None)] * 3
    assert cost(price, images, None) == Decimal("0.3")  # three floats 0.1 would not add up to 0.3
    assert cost(price, [], None) == Decimal(0)


def test_per_image_entries_match_size_and_quality_globs_in_order() -> None:
    price = parse_price({"per_image": {"1024x1024 low": 0.011, "1024x1024": 0.042, "* high": 0.25, "*": 0.063}})
    assert image_price(price, Delivered("1024x1024", "low")) == Decimal("0.011")
    assert image_price(price, Delivered("1024x1024", "medium")) == Decimal("0.042")  # size alone: any quality
    assert image_price(price, Delivered("1536x1024", "high")) == Decimal("0.25")
    assert image_price(price, Delivered(None, None)) == Decimal("0.063")  # unsaid size and quality are "auto"
    only_square = parse_price({"per_image": {"1024x1024": 0.04}})
    assert cost(only_square, [Delivered("1024x1024", None), Delivered("1792x1024", None)], None) is None


def test_per_megapixel_prices_the_pixels_delivered() -> None:
    price = parse_price({"per_megapixel": 0.05})
    assert cost(price, [Delivered("1024x1024", None, 1024 * 1024), Delivered("2048x1024", None, 2048 * 1024)], None) == (
        Decimal("0.05") * 3 * 1024 * 1024 / Decimal(1_000_000)
    )
    assert cost(price, [Delivered("auto", None)], None) is None  # pixels unknown: no figure rather than a wrong one


def test_reported_tokens_are_priced_by_kind() -> None:
    price = parse_price({"per_million_tokens": {"text_input": 5, "image_input": 10, "image_output": 40}, "per_image": 0.5})
    expected = (Decimal(40) * 5 + Decimal(10) * 10 + Decimal(4160) * 40) / Decimal(1_000_000)
    assert token_price(price, GPT_USAGE) == expected
    assert cost(price, [Delivered("1024x1024", "high")], GPT_USAGE) == expected
    # No usage reported (a relay that drops it): the per-image price applies.
    assert cost(price, [Delivered("1024x1024", "high")], None) == Decimal("0.5")
    # Usage without the text/image split: all input is the prompt.
    assert token_price(price, {"input_tokens": 100, "output_tokens": 1000, "total_tokens": 1100}) == Decimal("0.0405")


def test_rendering_rounds_to_micro_dollars() -> None:
    assert render_usd(Decimal("0.0420004")) == 0.042
    assert render_usd(Decimal(0)) == 0.0


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"per_image": -1}, "per_image", "at least 0"),
        ({"per_image": {"* hd": "cheap"}}, 'per_image["* hd"]', "expected an amount"),
        ({"per_image": 1, "per_megapixel": 1}, "per_megapixel", "not both"),
        ({"per_million_tokens": {"audio": 1}}, "per_million_tokens.audio", "unknown token kind"),
        ({"per_call": 1}, "per_call", "unknown key"),
        ({}, "", "expected per_image"),
        ({"per_image": True}, "per_image", "expected an amount"),
    ],
)
def test_bad_prices_name_their_part(value: object, path: str, message: str) -> None:
    with pytest.raises(PriceError, match=message) as caught:
        parse_price(value)
    assert caught.value.path == path


def test_the_output_tokens_of_an_image_lost_on_the_way_are_not_charged() -> None:
    price = parse_price({"per_million_tokens": {"text_input": 5, "image_output": 40}})
    usage = {"input_tokens": 50, "output_tokens": 2000, "total_tokens": 2050}  # two images made
    one = [Delivered("1024x1024", "high")]
    assert cost(price, one, usage, lost=1) == Decimal("0.04025")  # the prompt once, one image's output
    assert cost(price, one * 2, usage) == Decimal("0.08025")
