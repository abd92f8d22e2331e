"""Fake DashScope upstream: image-synthesis tasks, `GET /tasks/{id}`, cancel, and the sync multimodal endpoint.

Paths sit under `/api/v1` as on dashscope.aliyuncs.com. Checks the Bearer key (401 InvalidApiKey) and the
mode rules DashScope enforces: image-synthesis without `X-DashScope-Async: enable` -> 403 AccessDenied
"does not support synchronous calls"; the multimodal endpoint with the header -> 403 AccessDenied "does not
support asynchronous calls". A task answers PENDING, stays RUNNING for `polls_before_done` polls, then
SUCCEEDED with `parameters.n` results whose URLs point at a tiny real PNG under `/files/<name>.png`
(`fail_task_with` = (code, message): FAILED instead; `moderate`: the create answers 400 DataInspectionFailed;
`fail_polls`: the next k polls answer 500 InternalError; `fail_create_with`: (status, body) for the create).
`POST /tasks/{id}/cancel` cancels a task that has not been polled past PENDING; unknown ids poll as UNKNOWN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PREFIX = "/api/v1"
TASK_ROUTE = f"{PREFIX}/services/aigc/text2image/image-synthesis"
SYNC_ROUTE = f"{PREFIX}/services/aigc/multimodal-generation/generation"
PNG = encode_png(2, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"])
ARREARAGE = (400, {"request_id": "fake", "code": "Arrearage", "message": "Access denied, account is in arrears."})
THROTTLED = (429, {"request_id": "fake", "code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"request_id": "fake", "code": code, "message": message}, status=status)


@dataclass
class FakeTask:
    task_id: str
    n: int
    prompt: str
    polls: int = 0
    canceled: bool = False


@dataclass
class FakeDashScope:
    api_key: str = "dashscope-test-key"
    polls_before_done: int = 2
    fail_task_with: tuple[str, str] | None = None
    moderate: bool = False
    fail_polls: int = 0
    fail_create_with: tuple[int, dict[str, Any]] | None = None
    recorder: Recorder = field(default_factory=Recorder)
    tasks: dict[str, FakeTask] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(TASK_ROUTE, self.create)
        app.router.add_post(SYNC_ROUTE, self.generate)
        app.router.add_get(f"{PREFIX}/tasks/{{task_id}}", self.query)
        app.router.add_post(f"{PREFIX}/tasks/{{task_id}}/cancel", self.cancel)
        app.router.add_get("/files/{name}", self.file)
        return app

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        return None

    def _refused_create(self) -> web.Response | None:
        if self.fail_create_with is not None:
            return web.json_response(self.fail_create_with[1], status=self.fail_create_with[0])
        if self.moderate:
            return _error(400, "DataInspectionFailed", "Input data may contain inappropriate content.")
        return None

    async def create(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if request.headers.get("X-DashScope-Async") != "enable":
            return _error(403, "AccessDenied", "current user api does not support synchronous calls")
        refused = self._refused_create()
        if refused is not None:
            return refused
        body = received.json()
        prompt = (body.get("input") or {}).get("prompt")
        if not prompt:
            return _error(400, "InvalidParameter", "input.prompt is required")
        n = (body.get("parameters") or {}).get("n", 4)  # DashScope's own default for wanx is 4
        task = FakeTask(f"task-{len(self.tasks) + 1}", int(n), str(prompt))
        self.tasks[task.task_id] = task
        return web.json_response({"request_id": "fake", "output": {"task_id": task.task_id, "task_status": "PENDING"}})

    async def query(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if self.fail_polls > 0:
            self.fail_polls -= 1
            return _error(500, "InternalError", "An internal error has occured, please try again later.")
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            unknown = {"task_id": request.match_info["task_id"], "task_status": "UNKNOWN"}
            return web.json_response({"request_id": "fake", "output": unknown})
        task.polls += 1
        return web.json_response(self._task_answer(task, request))

    def _task_answer(self, task: FakeTask, request: web.Request) -> dict[str, Any]:
        output: dict[str, Any] = {"task_id": task.task_id}
        if task.canceled:
            return {"request_id": "fake", "output": {**output, "task_status": "CANCELED"}}
        if task.polls <= self.polls_before_done:
            return {"request_id": "fake", "output": {**output, "task_status": "RUNNING"}}
        if self.fail_task_with is not None:
            code, message = self.fail_task_with
            return {"request_id": "fake", "output": {**output, "task_status": "FAILED", "code": code, "message": message}}
        base = f"{request.scheme}://{request.host}/files"
        results = [
            {"orig_prompt": task.prompt, "actual_prompt": f"{task.prompt}, detailed", "url": f"{base}/{task.task_id}-{i}.png"}
            for i in range(task.n)
        ]
        metrics = {"TOTAL": task.n, "SUCCEEDED": task.n, "FAILED": 0}
        output.update(task_status="SUCCEEDED", results=results, task_metrics=metrics)
        return {"request_id": "fake", "output": output, "usage": {"image_count": task.n}}

    async def cancel(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        task = self.tasks.get(request.match_info["task_id"])
        if task is None or task.polls > 0:
            return _error(400, "UnsupportedOperation", "Failed to cancel the task: it is not PENDING.")
        task.canceled = True
        return web.json_response({"request_id": "fake"})

    async def generate(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if request.headers.get("X-DashScope-Async") is not None:
            return _error(403, "AccessDenied", "current user api does not support asynchronous calls")
        refused = self._refused_create()
        if refused is not None:
            return refused
        messages = (received.json().get("input") or {}).get("messages") or []
        if len(messages) != 1 or not any("text" in item for item in messages[0].get("content", [])):
            return _error(400, "InvalidParameter", "input.messages must hold one user message with a text item")
        url = f"{request.scheme}://{request.host}/files/sync-{len(self.recorder.received)}.png"
        choice = {"finish_reason": "stop", "message": {"role": "assistant", "content": [{"image": url}]}}
        return web.json_response({
            "request_id": "fake",
            "output": {"choices": [choice], "task_metric": {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}},
            "usage": {"width": 1328, "height": 1328, "image_count": 1},
        })

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")
