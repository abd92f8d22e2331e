"""Suite-wide hooks: the hardening figures are printed in the terminal summary."""

from __future__ import annotations

from _pytest.terminal import TerminalReporter

from tests.hardening.figures import lines


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    figures = lines()
    if figures:
        terminalreporter.section("hardening figures")
        for line in figures:
            terminalreporter.write_line(line)
