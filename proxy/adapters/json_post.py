"""Adapter layer: starting a call that is one JSON POST (seedream, zhipu): build the body, or fail on the client's input.

`start(job, path, build_body, auth_headers)` sends `POST {base_url}{path}` with the channel's headers, the key as
the adapter's `auth_headers` spell it and `build_body(job)` as the JSON body; an InvalidRequest raised while the
body is built is the client's error, returned as Fail without a call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.adapters.base import Call, Fail, Job, Send, Step
from proxy.core.errors import InvalidRequest


def start(job: Job, path: str, build_body: Callable[[Job], dict[str, Any]],
          auth_headers: Callable[[str | None], dict[str, str]]) -> Step:
    try:
        body = build_body(job)
    except InvalidRequest as exc:
        return Fail(exc)
    headers = {**job.channel.headers, **auth_headers(job.api_key), "Content-Type": "application/json"}
    return Send(Call("POST", f"{job.channel.base_url}{path}", headers=headers, json=body))
