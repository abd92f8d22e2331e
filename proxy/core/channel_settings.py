"""Core layer: the settings an adapter takes on its channels, declared with their types and ranges.

An adapter's `ChannelSchema` maps each setting's name to a `Setting`. When the rules load, every
value a channel sets is checked (`Setting.parse`), and a bad one is a problem with its YAML path
(`channels.kling.poll_interval: expected a positive number of seconds, got -1`), reported by
`imagegate check` and at start-up or reload like every other mistake in the rules, never at request
time. Unset settings get their declared default, so an adapter (through `adapters.kit.setting`, which
also falls back to the default for a channel built in code) never meets a value of the wrong type.
`Relation`s check settings against each other (`max_poll_interval` not below `poll_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SettingError(ValueError):
    """A setting's value is not what its declaration allows; the message says what was expected."""


@dataclass(frozen=True)
class Setting:
    """One channel setting: `parse` turns the value as written into the value kept, or raises SettingError."""

    parse: Callable[[Any], Any]
    default: Any = None


# A check across settings (already parsed, defaults filled in): a problem as (setting, message), or None.
Relation = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def seconds(default: float | None = None, *, minimum: float = 0.0) -> Setting:
    """A positive number of seconds (above `minimum`)."""

    def parse(value: Any) -> float:
        number = _number(value)
        if number is None or not math.isfinite(number) or number <= minimum:
            raise SettingError(f"expected a number of seconds above {minimum:g}, got {value!r}")
        return number

    return Setting(parse, default)


def integer(default: int | None = None, *, low: int, high: int) -> Setting:
    """A whole number from `low` to `high`."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SettingError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return Setting(parse, default)


def one_of(*choices: str, default: str | None = None) -> Setting:
    """One of a few words."""

    def parse(value: Any) -> str:
        if value not in choices:
            raise SettingError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return Setting(parse, default)


def names(default: tuple[str, ...] = (), *, allowed: tuple[str, ...] | None = None) -> Setting:
    """A list of non-empty strings (kept as a tuple), each among `allowed` when given. One name may be
    written without brackets (`hd_models: kling-v2` is one name, not its letters)."""

    def parse(value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
            raise SettingError(f"expected a list of names, got {value!r}")
        unknown = [item for item in items if allowed is not None and item not in allowed]
        if unknown:
            raise SettingError(f"unknown {', '.join(map(repr, unknown))} (expected some of {', '.join(allowed or ())})")
        return tuple(items)

    return Setting(parse, default)


def name_map(default: Mapping[str, str] | None = None, *, values: tuple[str, ...] | None = None) -> Setting:
    """A mapping of names to names (each value among `values` when given)."""

    def parse(value: Any) -> Mapping[str, str]:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise SettingError(f"expected a mapping of names to names, got {value!r}")
        unknown = sorted({v for v in value.values() if values is not None and v not in values})
        if unknown:
            raise SettingError(f"unknown {', '.join(map(repr, unknown))} (expected one of {', '.join(values or ())})")
        return dict(value)

    return Setting(parse, {} if default is None else default)


def flag(default: bool = False) -> Setting:
    """true or false."""

    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise SettingError(f"expected true or false, got {value!r}")
        return value

    return Setting(parse, default)


def text(default: str | None = None) -> Setting:
    """A non-empty string."""

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise SettingError(f"expected a non-empty string, got {value!r}")
        return value

    return Setting(parse, default)


def not_below(name: str, floor: str) -> Relation:
    """Setting `name` must not be below setting `floor` (when both have values)."""

    def relation(values: Mapping[str, Any]) -> tuple[str, str] | None:
        high, low = values.get(name), values.get(floor)
        if high is not None and low is not None and high < low:
            return name, f"must not be below {floor} ({low:g}), got {high:g}"
        return None

    return relation


def parse_settings(
    written: Mapping[str, Any], declared: Mapping[str, Setting], relations: tuple[Relation, ...] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The channel's settings (every declared one, defaults filled in) and the problems, each (setting, message).

    A default of None means "unset": such a setting is left out unless the channel writes it; a value
    written as null is unset too (its default applies).
    """
    values: dict[str, Any] = {name: setting.default for name, setting in declared.items() if setting.default is not None}
    problems: list[tuple[str, str]] = []
    for name, value in written.items():
        if value is None:
            continue  # `setting:` with no value (or `~`) leaves it unset, as it always has
        try:
            values[name] = declared[name].parse(value)
        except SettingError as error:
            problems.append((name, str(error)))
    if not problems:
        problems.extend(problem for relation in relations if (problem := relation(values)) is not None)
    return values, problems

