"""The README's "Clients" snippets, run as written against the real proxy (`python -m proxy`, shipped rules).

Each snippet is the fenced block after its `<!-- snippet: NAME -->` marker in README.md; only the
proxy's address is substituted, so the README cannot drift from what works.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import ROOT, clean_env

README_BASE = "http://127.0.0.1:8080"
BANNER = re.compile(r"^imagegate \S+ listening on (http://127\.0\.0\.1:\d+)$", re.MULTILINE)
PNG = b"\x89PNG\r\n\x1a\n"


def snippet(name: str) -> str:
    """The code of the fenced block that follows `<!-- snippet: name -->` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"^<!-- snippet: {re.escape(name)} -->\n```[a-z]+\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert found is not None, f"README.md has no snippet {name!r}"
    return found.group(1)


def pointed_at(code: str, base: str) -> str:
    assert README_BASE in code, "the snippet no longer uses the README's base URL"
    return code.replace(README_BASE, base)


@pytest.fixture(scope="module")
def proxy_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real proxy on the shipped rules with no provider keys; its base URL (the port the system chose)."""
    directory = tmp_path_factory.mktemp("readme-proxy")
    log = directory / "proxy.log"
    env = clean_env(PROXY_IMAGE_DIR=str(directory / "images"))
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "proxy", "--port", "0"], cwd=ROOT, env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 30
        while (found := BANNER.search(log.read_text())) is None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def fetch_png(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    assert body[:8] == PNG
    return body


def run(command: list[str], cwd: Path, **env: str) -> list[str]:
    result = subprocess.run(command, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_the_python_sdk_snippet(proxy_base: str, tmp_path: Path) -> None:
    (tmp_path / "snippet.py").write_text(pointed_at(snippet("python-sdk"), proxy_base))
    assert run([sys.executable, "snippet.py"], tmp_path) == ["['local-image', 'sd-webui']", "iVBORw0KGgoA"]


@pytest.fixture(scope="session")
def node_openai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the `openai` package installed from the npm registry."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are not installed: the README's Node SDK snippet cannot be run")
    directory = tmp_path_factory.mktemp("node-openai")
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "openai"], cwd=directory, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def test_the_node_sdk_snippet(proxy_base: str, node_openai: Path) -> None:
    (node_openai / "snippet.mjs").write_text(pointed_at(snippet("node-sdk"), proxy_base))
    models, url = run(["node", "snippet.mjs"], node_openai)
    assert models == "[ 'local-image', 'sd-webui' ]"
    assert url.startswith(f"{proxy_base}/images/") and url.endswith(".png")
    fetch_png(url)


# LiteLLM otherwise tries to download its model price list at import (three attempts, seconds each).
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def test_the_litellm_snippet(proxy_base: str, tmp_path: Path) -> None:
    pytest.importorskip("litellm", reason="litellm is in the `test` extra: pip install -e '.[test]'")
    (tmp_path / "snippet.py").write_text(pointed_at(snippet("litellm"), proxy_base))
    (url,) = run([sys.executable, "snippet.py"], tmp_path, **LITELLM_ENV)[-1:]
    assert url.startswith(f"{proxy_base}/images/") and url.endswith(".png")
    fetch_png(url)


QUIRK = """
import sys
import litellm

arguments = dict(model="openai/local-image", api_base=sys.argv[1] + "/v1", api_key="k", prompt="p", size="64x64")
try:
    litellm.image_generation(response_format="url", **arguments)
    print("refused: False")
except litellm.UnsupportedParamsError as error:
    print("refused:", "response_format" in str(error))
litellm.drop_params = True
image = litellm.image_generation(response_format="url", **arguments)
print("dropped:", image.data[0].url is None and bool(image.data[0].b64_json))
"""


def test_the_litellm_quirk_the_readme_names(proxy_base: str, tmp_path: Path) -> None:
    """If this fails, LiteLLM changed how it treats `response_format`: update the README's note."""
    pytest.importorskip("litellm", reason="litellm is in the `test` extra: pip install -e '.[test]'")
    (tmp_path / "quirk.py").write_text(QUIRK)
    assert run([sys.executable, "quirk.py", proxy_base], tmp_path, **LITELLM_ENV)[-2:] == ["refused: True", "dropped: True"]


def test_the_curl_snippet(proxy_base: str, tmp_path: Path) -> None:
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("curl and bash are not installed: the README's curl snippet cannot be run")
    (tmp_path / "snippet.sh").write_text(pointed_at(snippet("curl"), proxy_base))
    output = "\n".join(run(["bash", "-e", "snippet.sh"], tmp_path))
    decoder = json.JSONDecoder()
    models, end = decoder.raw_decode(output)
    generated, _ = decoder.raw_decode(output[end:].lstrip())
    assert [model["id"] for model in models["data"]] == ["local-image", "sd-webui"]
    url = generated["data"][0]["url"]
    assert url.startswith(f"{proxy_base}/images/")
    png = fetch_png(url)
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (256, 256)
