"""Core tests: `${VAR}` and `${VAR:-default}` interpolation with the environment passed in."""

from __future__ import annotations

import pytest

from proxy.core.interpolate import Interpolated, interpolate


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "1"}, Interpolated("1", ())),
        ("x-${A}-y", {"A": "mid"}, Interpolated("x-mid-y", ())),
        ("${A}${B}", {"A": "a", "B": "b"}, Interpolated("ab", ())),
        ("${A:-fallback}", {}, Interpolated("fallback", ())),
        ("${A:-fallback}", {"A": ""}, Interpolated("fallback", ())),
        ("${A:-fallback}", {"A": "set"}, Interpolated("set", ())),
        ("${A:-}", {}, Interpolated("", ())),
        ("${A:-https://api.openai.com/v1}", {}, Interpolated("https://api.openai.com/v1", ())),
        ("${A}", {}, Interpolated("", ("A",))),
        ("${A}", {"A": ""}, Interpolated("", ("A",))),
        ("${A}/${B}/${A}", {}, Interpolated("//", ("A", "B", "A"))),
        ("no refs at all", {"A": "1"}, Interpolated("no refs at all", ())),
        ("$A and $(A) and ${1A} and ${A", {"A": "1"}, Interpolated("$A and $(A) and ${1A} and ${A", ())),
        ("${_UNDER_9}", {"_UNDER_9": "ok"}, Interpolated("ok", ())),
    ],
)
def test_interpolate(text: str, env: dict[str, str], expected: Interpolated) -> None:
    assert interpolate(text, env) == expected


def test_values_are_not_interpolated_again() -> None:
    assert interpolate("${A}", {"A": "${B}", "B": "secret"}) == Interpolated("${B}", ())


def test_default_is_taken_literally() -> None:
    assert interpolate("${A:-${B}", {"B": "x"}).value == "${B"
