"""The bench's table: one row per figure, with the direct, bare-relay and proxy columns side by side.

Every proxy figure is printed with its ratio to the direct call and to the bare relay (bench.relay), so
the table says both what the proxy costs over no proxy at all and what it costs over the least an
aiohttp relay can do. A row may carry targets; each is checked and the row says PASS or MISS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MB = 1_000_000  # every MB in the table is 10^6 bytes


@dataclass
class Row:
    section: str
    metric: str
    direct: str
    relay: str
    proxy: str
    compare: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *cells: str, **named: str) -> None:
        self.rows.append(Row(*cells, **named))


@dataclass(frozen=True)
class Target:
    """A target a row is checked against: its text for the table and whether the figure met it."""

    text: str
    met: bool


def targets(*checks: Target | None) -> dict[str, str]:
    """The `target` and `verdict` cells for the checks that apply (None: not at this worker count)."""
    applied = [check for check in checks if check is not None]
    if not applied:
        return {}
    return {"target": "; ".join(check.text for check in applied), "verdict": verdict(all(check.met for check in applied))}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if not math.isnan(value) else "-"


def share(value: float, base: float) -> float:
    return value / base if base else float("nan")


def _beside(direct_part: str | None, value: float, relay: float | None) -> str:
    parts = [direct_part] if direct_part is not None else []
    if relay is not None:
        parts.append(f"{share(value, relay):.2f}x relay")
    return ", ".join(parts)


def versus(value: float, direct: float | None, relay: float | None) -> str:
    """A rate beside its baselines: "42% of direct, 1.15x relay"."""
    return _beside(f"{share(value, direct):.0%} of direct" if direct is not None else None, value, relay)


def versus_ms(value: float, direct: float | None, relay: float | None) -> str:
    """A latency beside its baselines: "+0.412 ms / 1.35x direct, 1.12x relay"."""
    ahead = f"{value - direct:+.3f} ms / {share(value, direct):.2f}x direct" if direct is not None else None
    return _beside(ahead, value, relay)


def workers_label(workers: int) -> str:
    return f"{workers} worker" + ("s" if workers > 1 else "")


def render(report: Report) -> str:
    columns = ("scenario", "metric", "direct", "relay", "proxy", "proxy vs direct, vs relay", "target", "")
    rows = [columns] + [
        (r.section, r.metric, r.direct, r.relay, r.proxy, r.compare, r.target, r.verdict) for r in report.rows
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    right = {2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [*report.header, "", line(columns), rule]
    for index, row in enumerate(rows[1:]):
        if row[0] and index:
            out.append("")
        out.append(line(row))
    verdicts = [r.verdict for r in report.rows if r.verdict]
    out += ["", f"targets: {verdicts.count('PASS')} pass, {verdicts.count('MISS')} miss;  MB = 10^6 bytes"]
    out += [f"note: {note}" for note in report.notes]
    return "\n".join(out)
