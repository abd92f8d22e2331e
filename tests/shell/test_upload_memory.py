"""A large edit upload costs the proxy about its own size in memory, not several copies of it.

The proxy runs as its own process (as users run it), so its peak RSS (VmHWM) is measured alone.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.factories import OPENAI, free_port, rules_yaml, url_of, wait_listening
from tests.fakes.openai import KEY, FakeOpenAI, tiny_png

ROOT = Path(__file__).resolve().parents[2]
UPLOAD = 30 * 1024 * 1024
RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["openai"]},
    },
    channels={"openai": OPENAI},
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read peak RSS")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def edit(session: aiohttp.ClientSession, port: int, image: bytes) -> int:
    form = aiohttp.FormData()
    form.add_field("model", "gpt-image-1.5")
    form.add_field("prompt", "p")
    form.add_field("image", io.BytesIO(image), filename="big.png", content_type="image/png")
    async with session.post(f"http://127.0.0.1:{port}/v1/images/edits", data=form) as response:
        await response.read()
        return response.status


async def test_a_30_mb_upload_raises_peak_rss_by_well_under_three_times_its_size(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeOpenAI()
    upstream = await aiohttp_server(fake.app())
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    env = {**os.environ, "UPSTREAM": url_of(upstream), "OPENAI_API_KEY": KEY}
    log = (tmp_path / "proxy.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--rules", str(rules), "--port", str(port), cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        await wait_listening(port, pause=0.1)
        async with aiohttp.ClientSession() as session:
            assert await edit(session, port, tiny_png()) == 200  # warm up every code path first
            before = peak_rss(process.pid)
            big = tiny_png() + os.urandom(UPLOAD)
            assert await edit(session, port, big) == 200
            after = peak_rss(process.pid)
        assert fake.forms[-1][-1].data == big  # the upload arrived whole and unchanged
        growth = after - before
        print(f"peak RSS grew by {growth / 2**20:.1f} MiB for a {UPLOAD / 2**20:.0f} MiB upload")
        assert growth < 1.5 * UPLOAD  # one copy (the upload itself), not two or three
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)
        log.close()
