"""The answer's top level is OpenAI's ImagesResponse; provider extras travel under `metadata`.

Driven over raw HTTP on the shipped rules, so the exact keys the client sees are checked, not what an
SDK model happens to keep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.factories import url_of
from tests.fakes import zhipu as zhipu_fake
from tests.fakes.sdwebui import FakeSDWebUI
from tests.fakes.stability import FakeStability
from tests.fakes.zhipu import FakeZhipu

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()
# The ImagesResponse keys OpenAI defines, and the seed documents' additions (metadata, task_id, task_status).
TOP_LEVEL = {"created", "data", "background", "output_format", "quality", "size", "usage", "metadata", "task_id", "task_status"}
ITEM = {"url", "b64_json", "revised_prompt"}


async def generate(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/images/generations", json=body)
    answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    assert set(answer) <= TOP_LEVEL, set(answer) - TOP_LEVEL
    assert all(set(item) <= ITEM for item in answer["data"]), answer["data"]
    return answer


async def test_zhipu_content_filter_is_under_metadata(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu()
    server = await aiohttp_server(zhipu.app())
    env = {"ZHIPU_BASE_URL": str(server.make_url(zhipu_fake.PREFIX)), "ZHIPU_API_KEY": zhipu.api_key}
    client = await make_proxy(SHIPPED, env)

    answer = await generate(client, {"model": "cogview-4", "prompt": "山水画", "response_format": "url"})

    assert "content_filter" not in answer
    assert answer["metadata"]["content_filter"] == [{"role": "assistant", "level": 3}]
    assert answer["metadata"]["channel"] == "zhipu"


async def test_stability_seeds_of_every_call_are_under_metadata(make_proxy: Any, aiohttp_server: Any) -> None:
    stability = FakeStability()
    server = await aiohttp_server(stability.app())
    client = await make_proxy(SHIPPED, {"STABILITY_BASE_URL": url_of(server),
                                        "STABILITY_API_KEY": stability.api_key})

    answer = await generate(client, {"model": "stable-image-core", "prompt": "a castle", "n": 2, "seed": 77,
                                     "response_format": "b64_json"})

    assert "seed" not in answer and "seeds" not in answer
    assert answer["metadata"]["seeds"] == [77, 77]  # one per fanned-out call, in order
    assert answer["output_format"] == "png"  # OpenAI's own field stays at the top
    assert len(answer["data"]) == 2


async def test_sdwebui_seeds_are_under_metadata(make_proxy: Any, aiohttp_server: Any) -> None:
    webui = FakeSDWebUI()
    server = await aiohttp_server(webui.app())
    client = await make_proxy(SHIPPED, {"SDWEBUI_BASE_URL": url_of(server)})

    answer = await generate(client, {"model": "sd-webui", "prompt": "a robot", "n": 2, "seed": 7, "size": "512x512"})

    assert "seeds" not in answer
    assert answer["metadata"]["seeds"] == [7, 8]
    assert answer["size"] == "2x2"  # measured from the bytes the fake returned, at the top level
