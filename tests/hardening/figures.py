"""The hardening suite's figures: what was tried and what happened, printed at the end of the run.

Tests call `record(name, tried, held)`; the terminal summary prints one line per figure, e.g.
`bad inputs answered 4xx: 2400/2400 (100.0%)`. A figure is a count, not a pass/fail: the tests
assert the goals themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Figure:
    tried: int = 0
    held: int = 0


FIGURES: dict[str, Figure] = {}


def record(name: str, tried: int, held: int) -> None:
    figure = FIGURES.setdefault(name, Figure())
    figure.tried += tried
    figure.held += held


def lines() -> list[str]:
    out = []
    for name, figure in sorted(FIGURES.items()):
        share = 100.0 * figure.held / figure.tried if figure.tried else 100.0
        out.append(f"{name}: {figure.held}/{figure.tried} ({share:.1f}%)")
    return out
