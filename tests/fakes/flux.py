"""Fake Black Forest Labs FLUX API: submit `POST /v1/{model}`, poll `GET /v1/get_result?id=`, as docs.bfl.ai documents.

Checks `x-key` (403 `{"detail": "Not authenticated"}` when missing, 401 when wrong) on submits and polls, and
validates like BFL's FastAPI (422 `{"detail": [{"loc", "msg", "type"}]}`: prompt required, FLUX.1 sides
256-1440 in multiples of 32, output_format jpeg|png). A submit answers `{"id", "polling_url", "cost", "input_mp",
"output_mp"}` with a polling_url on this same app; a task stays Pending for `polls_before_done` polls, then is
Ready with `result.sample` on this app's `/files/<id>.png` (a tiny real PNG, served without any key, like BFL's
blob storage), or ends as `moderate` / Error. Unknown ids answer status "Task not found".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PNG = encode_png(2, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"])
COST = 4.0
NO_CREDITS = (402, {"detail": "Insufficient credits"})
TOO_MANY_TASKS = (429, {"detail": "You have reached the maximum number of active tasks (24)."})
SERVER_ERROR = (500, {"detail": "Internal Server Error"})


def _validation(loc: list[str], msg: str, kind: str = "value_error") -> web.Response:
    return web.json_response({"detail": [{"loc": ["body", *loc], "msg": msg, "type": kind}]}, status=422)


def _check(model: str, body: Any) -> web.Response | None:
    """A 422 for what BFL's validation would reject; None when the body is acceptable."""
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        return _validation(["prompt"], "Field required", "missing")
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        return _validation(["output_format"], "Input should be 'jpeg' or 'png'", "enum")
    if model.startswith("flux-2"):
        return None
    for name in ("width", "height"):
        value = body.get(name, 1024)
        if not isinstance(value, int) or not 256 <= value <= 1440 or value % 32:
            return _validation([name], "Input should be a multiple of 32 between 256 and 1440")
    return None


@dataclass
class FakeFlux:
    api_key: str = "bfl-test-key"
    polls_before_done: int = 1  # polls answered Pending before the task ends
    moderate: str | None = None  # "Request Moderated" or "Content Moderated": how the task ends instead
    fail_task: bool = False  # the task ends with status Error
    fail_polls: int = 0  # the next k polls answer HTTP 500
    fail_create_with: tuple[int, dict[str, Any]] | None = None  # e.g. NO_CREDITS, TOO_MANY_TASKS
    recorder: Recorder = field(default_factory=Recorder)
    polls: dict[str, int] = field(default_factory=dict)  # task id -> polls answered so far
    submitted: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/get_result", self.get_result)
        app.router.add_post("/v1/{model}", self.submit)
        app.router.add_get("/files/{name}", self.file)
        return app

    def _refused(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-key")
        if key is None:
            return web.json_response({"detail": "Not authenticated"}, status=403)
        if key != self.api_key:
            return web.json_response({"detail": "Invalid API key"}, status=401)
        return None

    async def submit(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.fail_create_with is not None:
            return web.json_response(self.fail_create_with[1], status=self.fail_create_with[0])
        invalid = _check(request.match_info["model"], received.json())
        if invalid is not None:
            return invalid
        self.submitted += 1
        task_id = f"task-{self.submitted}"
        self.polls[task_id] = 0
        polling_url = f"{request.scheme}://{request.host}/v1/get_result?id={task_id}"
        return web.json_response({"id": task_id, "polling_url": polling_url, "cost": COST, "input_mp": 0.0,
                                  "output_mp": 1.05})

    async def get_result(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.fail_polls > 0:
            self.fail_polls -= 1
            return web.json_response(SERVER_ERROR[1], status=SERVER_ERROR[0])
        task_id = request.query.get("id", "")
        if task_id not in self.polls:
            return web.json_response({"id": task_id, "status": "Task not found", "result": None})
        self.polls[task_id] += 1
        if self.polls[task_id] <= self.polls_before_done:
            return web.json_response({"id": task_id, "status": "Pending", "result": None, "progress": 0.5})
        return web.json_response(self._ended(request, task_id))

    def _ended(self, request: web.Request, task_id: str) -> dict[str, Any]:
        if self.moderate is not None:
            return {"id": task_id, "status": self.moderate, "result": None,
                    "details": {"Moderation Reasons": ["Fake moderation"]}}
        if self.fail_task:
            return {"id": task_id, "status": "Error", "result": None, "error": "Fake generation failure"}
        sample = f"{request.scheme}://{request.host}/files/{task_id}.png"
        return {"id": task_id, "status": "Ready", "result": {"sample": sample, "prompt": "fake", "seed": 1234},
                "progress": None}

    async def file(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        return web.Response(body=PNG, content_type="image/png")
