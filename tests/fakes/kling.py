"""Fake Kling AI upstream: `POST /v1/images/generations` then `GET /v1/images/generations/{task_id}`.

Checks the Bearer JWT like Kling does (HS256 signature with the configured secret key, `iss` = the access
key, `nbf`/`exp` against time.time(); 401 with codes 1001-1004 otherwise). A created task answers
`submitted`, then `processing` for `polls_before_done` polls, then `succeed` with URLs to a tiny real PNG
served under `/files/<name>.png` (or `failed` with `fail_task_with` as its task_status_msg). Knobs:
`moderate` (create answers 400 code 1301), `fail_create_with` ((status, body) for the create),
`fail_polls` (the next k polls answer 500 code 5000). Unknown task ids answer 404 code 1203.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

ROUTE = "/v1/images/generations"
PNG = encode_png(2, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"])
CREATED_AT = 1722769557708  # ms, as Kling stamps
ARREARS = (429, {"code": 1101, "message": "Account arrears", "request_id": "fake"})
TOO_MANY = (429, {"code": 1303, "message": "parallel task over resource pack limit", "request_id": "fake"})
RISK = "Failure to pass the risk control system"


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "request_id": "fake"}, status=status)


@dataclass
class FakeTask:
    task_id: str
    n: int
    polls: int = 0


@dataclass
class FakeKling:
    access_key: str = "kling-access"
    secret_key: str = "kling-secret-0123456789"
    polls_before_done: int = 2
    fail_task_with: str | None = None
    moderate: bool = False
    fail_polls: int = 0
    poll_delay: float = 0.0  # seconds each poll takes to answer (a stalled status endpoint)
    fail_create_with: tuple[int, dict[str, Any]] | None = None
    recorder: Recorder = field(default_factory=Recorder)
    tasks: dict[str, FakeTask] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(ROUTE, self.create)
        app.router.add_get(ROUTE + "/{task_id}", self.query)
        app.router.add_get("/files/{name}", self.file)
        return app

    def auth_problem(self, request: web.Request) -> web.Response | None:
        """Kling's 401 for a missing, malformed, not-yet-valid or expired token; None when it is good."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _error(401, 1001, "Authorization is empty")
        parts = header.removeprefix("Bearer ").split(".")
        if len(parts) != 3:
            return _error(401, 1002, "Authorization is invalid")
        expected = hmac.new(self.secret_key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            header_claims, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except ValueError:
            return _error(401, 1002, "Authorization is invalid")
        if header_claims.get("alg") != "HS256" or not hmac.compare_digest(signature, expected):
            return _error(401, 1002, "Authorization is invalid")
        if claims.get("iss") != self.access_key:
            return _error(401, 1000, "Authentication failed")
        now = time.time()
        if now < claims.get("nbf", 0):
            return _error(401, 1003, "Authorization is not yet valid")
        if now >= claims.get("exp", 0):
            return _error(401, 1004, "Authorization has expired")
        return None

    async def create(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        problem = self.auth_problem(request)
        if problem is not None:
            return problem
        if self.fail_create_with is not None:
            return web.json_response(self.fail_create_with[1], status=self.fail_create_with[0])
        if self.moderate:
            return _error(400, 1301, "Content security policy triggered")
        body = received.json()
        if not body.get("prompt"):
            return _error(400, 1201, "prompt is required")
        if "negative_prompt" in body and "image" in body:
            return _error(400, 1201, "negative_prompt is not supported with image")
        task_id = f"task-{len(self.tasks) + 1}"
        self.tasks[task_id] = FakeTask(task_id, int(body.get("n", 1)))
        return self._task_answer(self.tasks[task_id], "submitted", request)

    async def query(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        if self.poll_delay:
            await asyncio.sleep(self.poll_delay)
        problem = self.auth_problem(request)
        if problem is not None:
            return problem
        if self.fail_polls > 0:
            self.fail_polls -= 1
            return _error(500, 5000, "Server internal error")
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return _error(404, 1203, "task not found")
        task.polls += 1
        if task.polls <= self.polls_before_done:
            return self._task_answer(task, "processing", request)
        return self._task_answer(task, "failed" if self.fail_task_with is not None else "succeed", request)

    def _task_answer(self, task: FakeTask, status: str, request: web.Request) -> web.Response:
        data: dict[str, Any] = {"task_id": task.task_id, "task_status": status}
        data.update(created_at=CREATED_AT, updated_at=CREATED_AT)
        if status == "failed":
            data["task_status_msg"] = self.fail_task_with
        if status == "succeed":
            base = f"{request.scheme}://{request.host}/files"
            data["task_result"] = {"images": [{"index": i, "url": f"{base}/{task.task_id}-{i}.png"} for i in range(task.n)]}
            data["final_unit_deduction"] = str(task.n)
        return web.json_response({"code": 0, "message": "SUCCEED", "request_id": "fake", "data": data})

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")
