"""Shell tests: the fake DashScope upstream runs the documented task flow and enforces sync/async modes."""

from __future__ import annotations

from typing import Any

from yarl import URL

from tests.fakes.dashscope import ARREARAGE, PNG, SYNC_ROUTE, TASK_ROUTE, FakeDashScope

KEY = {"Authorization": "Bearer dashscope-test-key"}
ASYNC = {**KEY, "X-DashScope-Async": "enable"}
TASK_BODY = {"model": "wanx2.1-t2i-turbo", "input": {"prompt": "a fox"}, "parameters": {"size": "1024*1024", "n": 2}}


async def test_task_create_poll_and_fetch_the_images(aiohttp_client: Any) -> None:
    fake = FakeDashScope(polls_before_done=1)
    client = await aiohttp_client(fake.app())
    created = await client.post(TASK_ROUTE, json=TASK_BODY, headers=ASYNC)
    assert created.status == 200
    output = (await created.json())["output"]
    assert output["task_status"] == "PENDING"
    answers = [await (await client.get(f"/api/v1/tasks/{output['task_id']}", headers=KEY)).json() for _ in range(2)]
    assert [answer["output"]["task_status"] for answer in answers] == ["RUNNING", "SUCCEEDED"]
    results = answers[-1]["output"]["results"]
    assert [item["actual_prompt"] for item in results] == ["a fox, detailed", "a fox, detailed"]
    assert answers[-1]["usage"] == {"image_count": 2}
    picture = await client.get(URL(results[1]["url"]).path)
    assert await picture.read() == PNG
    assert fake.recorder.received[0].json() == TASK_BODY
    assert fake.recorder.received[0].header("x-dashscope-async") == "enable"


async def test_mode_and_key_rules(aiohttp_client: Any) -> None:
    fake = FakeDashScope()
    client = await aiohttp_client(fake.app())
    wrong_key = await client.post(TASK_ROUTE, json=TASK_BODY, headers={**ASYNC, "Authorization": "Bearer nope"})
    assert (wrong_key.status, (await wrong_key.json())["code"]) == (401, "InvalidApiKey")
    no_header = await client.post(TASK_ROUTE, json=TASK_BODY, headers=KEY)
    assert no_header.status == 403
    assert "does not support synchronous calls" in (await no_header.json())["message"]
    sync_body = {"model": "qwen-image-plus", "input": {"messages": [{"role": "user", "content": [{"text": "a poster"}]}]},
                 "parameters": {"size": "1328*1328", "n": 1}}
    with_header = await client.post(SYNC_ROUTE, json=sync_body, headers=ASYNC)
    assert (with_header.status, (await with_header.json())["code"]) == (403, "AccessDenied")
    sync = await client.post(SYNC_ROUTE, json=sync_body, headers=KEY)
    assert sync.status == 200
    content = (await sync.json())["output"]["choices"][0]["message"]["content"]
    assert await (await client.get(URL(content[0]["image"]).path)).read() == PNG


async def test_knobs_cancel_and_unknown_tasks(aiohttp_client: Any) -> None:
    fake = FakeDashScope(polls_before_done=0, fail_task_with=("InternalError.Algo", "algo failed"), fail_polls=1)
    client = await aiohttp_client(fake.app())
    task_id = (await (await client.post(TASK_ROUTE, json=TASK_BODY, headers=ASYNC)).json())["output"]["task_id"]
    first = await client.get(f"/api/v1/tasks/{task_id}", headers=KEY)
    assert (first.status, (await first.json())["code"]) == (500, "InternalError")
    failed = (await (await client.get(f"/api/v1/tasks/{task_id}", headers=KEY)).json())["output"]
    assert (failed["task_status"], failed["code"], failed["message"]) == ("FAILED", "InternalError.Algo", "algo failed")
    late = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=KEY)
    assert late.status == 400
    pending = (await (await client.post(TASK_ROUTE, json=TASK_BODY, headers=ASYNC)).json())["output"]["task_id"]
    assert (await client.post(f"/api/v1/tasks/{pending}/cancel", headers=KEY)).status == 200
    canceled = (await (await client.get(f"/api/v1/tasks/{pending}", headers=KEY)).json())["output"]
    assert canceled["task_status"] == "CANCELED"
    unknown = (await (await client.get("/api/v1/tasks/nope", headers=KEY)).json())["output"]
    assert unknown["task_status"] == "UNKNOWN"
    fake.moderate = True
    moderated = await client.post(TASK_ROUTE, json=TASK_BODY, headers=ASYNC)
    assert (moderated.status, (await moderated.json())["code"]) == (400, "DataInspectionFailed")
    fake.fail_create_with = ARREARAGE
    arrears = await client.post(TASK_ROUTE, json=TASK_BODY, headers=ASYNC)
    assert (arrears.status, (await arrears.json())["code"]) == (400, "Arrearage")
