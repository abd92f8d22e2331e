"""Declared channel settings: what a `names` list accepts."""

from __future__ import annotations

import re

import pytest

from proxy.core.channel_settings import SettingError, names


def test_names_take_a_list_or_one_bare_name() -> None:
    setting = names(("a",), allowed=("a", "b"))

    assert setting.parse(["a", "b"]) == ("a", "b")
    assert setting.parse("b") == ("b",)  # one name, not its letters
    assert setting.parse([]) == ()


@pytest.mark.parametrize(("value", "problem"), [
    ("", "expected a list of names, got ''"),
    ([1], "expected a list of names, got [1]"),
    ({"a": "b"}, "expected a list of names, got {'a': 'b'}"),
    ("c", "unknown 'c' (expected some of a, b)"),
])
def test_names_refuse_what_is_not_a_list_of_allowed_names(value: object, problem: str) -> None:
    with pytest.raises(SettingError, match=re.escape(problem)):
        names(allowed=("a", "b")).parse(value)
