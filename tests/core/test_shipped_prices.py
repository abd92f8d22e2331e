"""The prices in the shipped rules.yaml: exact, parsed, and only where a list price was found (README "Prices shipped")."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from proxy.adapters import SCHEMAS
from proxy.core.pricing import Delivered, Price, cost
from proxy.core.rules import parse_rules

SHIPPED = parse_rules((Path(__file__).resolve().parents[2] / "rules.yaml").read_text(), {}, SCHEMAS)
GPT_IMAGE_2 = {"text_input": Decimal(5), "image_input": Decimal(8), "image_output": Decimal(30)}
# gpt-image-2's token rates, on the retired names it serves too.
BY_TOKENS = ("gpt-image-2", "gpt-image-2-*", "dall-e-3", "dall-e-2", "gpt-image-1")
PER_IMAGE = {
    "local-image": "0",
    "sd-webui": "0",
    "cogview-3-flash": "0",
    "stable-image-ultra": "0.08",
    "stable-image-core": "0.03",
    "sd3.5-large": "0.065",
    "sd3.5-medium": "0.035",
    "flux-pro-1.1": "0.04",
    "flux-pro-1.1-ultra": "0.06",
    "flux-schnell": "0.003",
    "flux-pro": "0.04",
}
# No confirmed USD list price (not found, reseller or CNY only, or the upstream shut down and the figure
# second-hand): unpriced, so their answers carry no cost rather than a guess.
UNPRICED = {
    "gpt-image-*", "cogview-3-plus", "cogview-4", "cogview-4-250304", "doubao-seedream-3.0-t2i", "doubao-seedream-4.0",
    "doubao-seedream-4.5", "doubao-seededit-3.0-i2i", "azure-gpt-image-1", "azure-dall-e-3", "imagen-4.0-generate-001",
    "imagen-4.0-ultra-generate-001", "imagen-4.0-fast-generate-001", "gemini-2.5-flash-image", "gemini-3-pro-image-preview",
    "kling-v1", "kling-v1-5", "kling-v2", "kling-v2-1", "wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wan2.2-t2i-flash",
    "wan2.2-t2i-plus", "qwen-image", "qwen-image-plus", "qwen-image-max", "flux-dev", "flux-kontext-pro", "flux-2-pro",
}


def price_of(model: str) -> Price:
    (rule,) = [rule for rule in SHIPPED.models if rule.pattern == model]
    assert rule.price is not None, f"{model} has no price"
    return rule.price


@pytest.mark.parametrize(("model", "usd"), sorted(PER_IMAGE.items()))
def test_per_image_prices_are_the_list_prices(model: str, usd: str) -> None:
    price = price_of(model)
    assert price.per_image == (("*", "*", Decimal(usd)),)
    assert price.per_megapixel is None and not price.per_million_tokens
    assert cost(price, [Delivered("1024x1024", None)] * 2, None) == 2 * Decimal(usd)


@pytest.mark.parametrize("model", BY_TOKENS)
def test_gpt_image_2_and_the_names_it_serves_are_priced_by_reported_tokens(model: str) -> None:
    price = price_of(model)
    assert dict(price.per_million_tokens) == GPT_IMAGE_2
    assert price.per_image == () and price.per_megapixel is None
    usage = {"input_tokens": 60, "input_tokens_details": {"text_tokens": 20, "image_tokens": 40}, "output_tokens": 1000,
             "total_tokens": 1060}
    assert cost(price, [Delivered("1024x1024", "medium")], usage) == Decimal("0.03042")  # (20*5 + 40*8 + 1000*30) / 1M


def test_every_shipped_model_is_priced_or_knowingly_unpriced() -> None:
    priced = {rule.pattern for rule in SHIPPED.models if rule.price is not None}
    assert priced == set(PER_IMAGE) | set(BY_TOKENS)
    assert {rule.pattern for rule in SHIPPED.models} - priced == UNPRICED
