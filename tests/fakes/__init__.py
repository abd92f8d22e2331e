"""Fake upstreams for shell tests: each module implements one provider's documented wire format.

Every fake records what it received, so tests assert on the exact upstream request, not only on
what the client got back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # as sent; look up with the exact case or via `header()`
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Recorder:
    received: list[Received] = field(default_factory=list)

    async def record(self, request: web.Request) -> Received:
        item = Received(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=await request.read(),
        )
        self.received.append(item)
        return item
