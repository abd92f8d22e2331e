"""Fake Zhipu BigModel CogView upstream: `POST /api/paas/v4/images/generations` as docs.z.ai documents it.

Checks the Bearer key (401 with business code 1002 otherwise), rejects sizes CogView would reject
(400, code 1214), and answers `{"created", "data": [{"url"}], "content_filter"}` with a URL to a tiny
real PNG served by the same app under `/files/<name>.png`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PREFIX = "/api/paas/v4"
RECOMMENDED = frozenset({"1024x1024", "768x1344", "864x1152", "1344x768", "1152x864", "1440x720", "720x1440"})
PNG = encode_png(2, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"])
CREATED = 1760335349
MODERATED = (400, {"error": {"code": "1301", "message": "系统检测到输入或生成内容可能包含不安全或敏感内容"}})
ARREARS = (429, {"error": {"code": "1113", "message": "您的账户已欠费，请充值后重试"}})
TOO_MANY = (429, {"error": {"code": "1302", "message": "您当前使用该API的并发数过高，请降低并发"}})


def _size_ok(size: str, model: str) -> bool:
    if size in RECOMMENDED:
        return True
    width, _, height = size.partition("x")
    if not (model.startswith("cogview-4") and width.isdigit() and height.isdigit()):
        return False
    sides = (int(width), int(height))
    return all(512 <= side <= 2048 and side % 16 == 0 for side in sides) and sides[0] * sides[1] <= 2**21


@dataclass
class FakeZhipu:
    api_key: str = "zhipu-test-key"
    # Canned failure answered instead of an image: (HTTP status, JSON body), e.g. MODERATED or ARREARS.
    fail_with: tuple[int, dict[str, Any]] | None = None
    content_filter: list[dict[str, Any]] = field(default_factory=lambda: [{"role": "assistant", "level": 3}])
    # Refuse every k-th call with the content-filter code (0: never), for partial fan-out failures.
    moderate_every: int = 0
    recorder: Recorder = field(default_factory=Recorder)
    served: int = 0
    calls: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{PREFIX}/images/generations", self.generate)
        app.router.add_get("/files/{name}", self.file)
        return app

    async def generate(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"code": "1002", "message": "Authorization Token非法"}}, status=401)
        if self.fail_with is not None:
            return web.json_response(self.fail_with[1], status=self.fail_with[0])
        self.calls += 1
        if self.moderate_every and self.calls % self.moderate_every == 0:
            return web.json_response(MODERATED[1], status=MODERATED[0])
        body = received.json()
        if not body.get("model") or not body.get("prompt"):
            return web.json_response({"error": {"code": "1213", "message": "未正常接收到prompt参数"}}, status=400)
        if "size" in body and not _size_ok(str(body["size"]), str(body["model"])):
            return web.json_response({"error": {"code": "1214", "message": "size参数非法"}}, status=400)
        self.served += 1
        url = f"{request.scheme}://{request.host}/files/cogview-{self.served}.png"
        return web.json_response({"created": CREATED, "data": [{"url": url}], "content_filter": self.content_filter})

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")
