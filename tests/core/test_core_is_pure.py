"""Keeps the core honest (ARCHITECTURE.md §1): nothing in proxy/core or proxy/adapters imports I/O, clocks or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import proxy

FORBIDDEN = frozenset({"aiohttp", "asyncio", "os", "time", "random", "socket"})
ROOT = Path(proxy.__file__).parent
PURE_FILES = sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_there_are_files_to_check() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in PURE_FILES}
    assert {"core/request.py", "core/rules.py", "core/plan.py", "adapters/openai.py", "adapters/local.py"} <= names


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert _imported_roots(tree) & FORBIDDEN == set()


def test_the_scan_catches_forbidden_imports() -> None:
    source = "import os.path\nfrom asyncio import sleep\nimport json\nfrom . import time\ndef f():\n    import random\n"
    assert _imported_roots(ast.parse(source)) & FORBIDDEN == {"os", "asyncio", "random"}
