"""Core layer: `${VAR}` and `${VAR:-default}` interpolation over YAML string scalars.

The environment is passed in; the core never reads `os.environ` itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Interpolated:
    value: str
    missing: tuple[str, ...]  # variables that were unset (or empty) and had no default


def interpolate(text: str, env: Mapping[str, str]) -> Interpolated:
    """Replace every reference; `${VAR:-x}` uses x when VAR is unset or empty, as the shell does."""
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name, "")
        if value:
            return value
        if default is not None:
            return default
        missing.append(name)
        return ""

    return Interpolated(_REF.sub(substitute, text), tuple(missing))
