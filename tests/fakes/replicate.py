"""Fake Replicate predictions API under `/v1`, as replicate.com/docs documents it.

Create `POST /v1/models/{owner}/{name}/predictions` or `POST /v1/predictions` (with `version`), poll
`GET /v1/predictions/{id}`, cancel `POST /v1/predictions/{id}/cancel`. Checks `Authorization: Bearer`
(401 problem+json otherwise); validates like Replicate (422 with `invalid_fields` when `input.prompt` or
`version` is missing). A prediction answers 201 `starting` with `urls.get` / `urls.cancel` on this same app,
stays `processing` for `polls_before_done` polls, then `succeeded` with `output: [<url>]` on this app's
`/files/<id>.png` (a tiny real PNG), or `failed` (NSFW when `moderate`, a crash when `fail_task`). With
`finish_within_wait` a create carrying `Prefer: wait` answers `succeeded` at once. Cancels are listed in
`cancelled`. Unknown ids answer 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PREFIX = "/v1"
PNG = encode_png(2, 2, [b"\x00\xff\x00\xff\x00\x00", b"\xff\xff\xff\x00\x00\xff"])
NSFW = "NSFW content detected. Try running it again, or try a different prompt."
NO_CREDIT = (402, {"title": "Insufficient credit", "status": 402,
                   "detail": "You have insufficient credit to run this model. Go to https://replicate.com/account/billing"
                             "#billing to purchase credit."})
THROTTLED = (429, {"detail": "Request was throttled. Expected available in 1 second.", "status": 429})
SERVER_ERROR = (500, {"title": "Internal Server Error", "detail": "Something went wrong.", "status": 500})


def _invalid(field_name: str, description: str) -> web.Response:
    body = {"detail": f"- {field_name}: {description}\n", "status": 422, "title": "Input validation failed",
            "invalid_fields": [{"type": "required", "field": field_name, "description": description}]}
    return web.json_response(body, status=422)


@dataclass
class FakeReplicate:
    api_key: str = "r8_test-token"
    polls_before_done: int = 1  # polls answered `processing` before the prediction ends
    moderate: bool = False  # the prediction fails with Replicate's NSFW error
    fail_task: bool = False  # the prediction fails with a model crash
    fail_polls: int = 0  # the next k polls answer HTTP 500
    fail_create_with: tuple[int, dict[str, Any]] | None = None  # e.g. NO_CREDIT, THROTTLED
    finish_within_wait: bool = False  # a create with `Prefer: wait` answers `succeeded` directly
    recorder: Recorder = field(default_factory=Recorder)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{PREFIX}/models/{{owner}}/{{name}}/predictions", self.create)
        app.router.add_post(f"{PREFIX}/predictions", self.create)
        app.router.add_get(f"{PREFIX}/predictions/{{id}}", self.get)
        app.router.add_post(f"{PREFIX}/predictions/{{id}}/cancel", self.cancel)
        app.router.add_get("/files/{name}", self.file)
        return app

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        body = {"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401}
        return web.json_response(body, status=401)

    def _origin(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def create(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.fail_create_with is not None:
            return web.json_response(self.fail_create_with[1], status=self.fail_create_with[0])
        body = received.json()
        if "owner" not in request.match_info and not body.get("version"):
            return _invalid("", "version is required")
        if not isinstance(body.get("input"), dict) or "prompt" not in body["input"]:
            return _invalid("input", "prompt is required")
        prediction_id = f"pred{len(self.predictions) + 1}"
        origin = self._origin(request)
        prediction = {
            "id": prediction_id, "version": body.get("version", "official"), "input": body["input"],
            "status": "starting", "output": None, "error": None, "logs": "", "metrics": {},
            "urls": {"get": f"{origin}{PREFIX}/predictions/{prediction_id}",
                     "cancel": f"{origin}{PREFIX}/predictions/{prediction_id}/cancel"},
        }
        self.predictions[prediction_id] = prediction
        self.polls[prediction_id] = 0
        if self.finish_within_wait and request.headers.get("Prefer", "").startswith("wait"):
            self._end(request, prediction)
        return web.json_response(prediction, status=201)

    def _end(self, request: web.Request, prediction: dict[str, Any]) -> None:
        if self.moderate or self.fail_task:
            prediction.update(status="failed", error=NSFW if self.moderate else "CUDA error: out of memory")
            return
        output = f"{self._origin(request)}/files/{prediction['id']}.png"
        prediction.update(status="succeeded", output=[output], metrics={"predict_time": 0.8})

    async def get(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.fail_polls > 0:
            self.fail_polls -= 1
            return web.json_response(SERVER_ERROR[1], status=SERVER_ERROR[0])
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        if prediction["status"] in ("starting", "processing"):
            self.polls[prediction["id"]] += 1
            if self.polls[prediction["id"]] <= self.polls_before_done:
                prediction["status"] = "processing"
            else:
                self._end(request, prediction)
        return web.json_response(prediction)

    async def cancel(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        refused = self._refused(request)
        if refused is not None:
            return refused
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return web.json_response({"detail": "Not found.", "status": 404}, status=404)
        self.cancelled.append(prediction["id"])
        if prediction["status"] in ("starting", "processing"):
            prediction["status"] = "canceled"
        return web.json_response(prediction)

    async def file(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        return web.Response(body=PNG, content_type="image/png")
