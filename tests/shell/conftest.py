"""Shell-test helpers shared by the modules here (the fixtures live in tests/conftest.py)."""

from __future__ import annotations

CLIENT_KEY = "client-key-1"


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
