"""Form fields as the values a JSON body would carry (proxy.core.form): numbers only as JSON spells them."""

from __future__ import annotations

import pytest

from proxy.core.form import coerce_field


@pytest.mark.parametrize(("text", "value"), [("7.5", 7.5), ("-1e-2", -0.01), (".5", 0.5), ("3", 3.0)])
def test_numbers_spelled_as_json_spells_them_are_numbers(text: str, value: float) -> None:
    assert coerce_field("cfg_scale", text) == value


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999", "1_0", "\u0662", "0x10"])
def test_other_spellings_stay_text_for_the_fields_check_to_refuse(text: str) -> None:
    # NaN and the infinities are not JSON: sent on, they would make the upstream's body invalid.
    assert coerce_field("cfg_scale", text) == text
    assert coerce_field("n", text) == text
