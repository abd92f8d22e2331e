"""The command line: `check`, bad rules reported before listening, and serving the shipped rules."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.factories import ROOT, clean_env, free_port, run_cli


def test_check_passes_on_the_shipped_rules_without_keys() -> None:
    result = run_cli("check")
    assert result.returncode == 0, result.stderr
    assert "rules.yaml: ok" in result.stdout
    assert "OPENAI_API_KEY is not set" in result.stdout


def test_bad_rules_print_every_problem_with_its_path(tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text(
        "channels:\n  openai: {type: openai, base_url: http://x}\n  weird: {type: nope}\n"
        "models:\n  m:\n    channels: [opena]\n    sizes: [1024x1024, '1024-1024']\n    colour: red\n"
    )
    result = run_cli("check", "--rules", str(rules))
    assert result.returncode == 2
    for expected in (
        "channels.weird.type: unknown adapter type 'nope'",
        "models.m.channels[0]: unknown channel 'opena'",
        "models.m.sizes[1]: '1024-1024' is not WxH",
        "models.m.colour: unknown key",
    ):
        assert expected in result.stderr, result.stderr


def test_serving_refuses_to_start_on_bad_rules(tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text("models: [1, 2]\n")
    result = run_cli(env=clean_env(PROXY_RULES=str(rules), PROXY_PORT=str(free_port())))
    assert result.returncode == 2
    assert "models: expected a mapping" in result.stderr


def test_missing_rules_file_is_reported(tmp_path: Path) -> None:
    result = run_cli("check", "--rules", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "cannot read the rules file" in result.stderr


def test_a_rules_file_that_is_not_utf8_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    rules = tmp_path / "latin1.yaml"
    rules.write_bytes("models:\n  local-image: {channels: [local]}  # café\n".encode("latin-1"))
    result = run_cli("check", "--rules", str(rules))
    assert result.returncode == 2
    assert "cannot read the rules file: 'utf-8' codec can't decode byte 0xe9" in result.stderr
    assert "Traceback" not in result.stderr


def post_json(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def wait_until_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the proxy did not start listening")


def test_shipped_rules_serve_a_real_png_with_no_environment(tmp_path: Path) -> None:
    port = free_port()
    images, log = tmp_path / "images", tmp_path / "proxy.log"
    env = clean_env(PROXY_PORT=str(port), PROXY_IMAGE_DIR=str(images))
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stderr=sink, stdout=sink)
    try:
        wait_until_listening(port, process, log)
        answer = post_json(
            f"http://127.0.0.1:{port}/v1/images/generations",
            {"model": "local-image", "prompt": "a lighthouse", "size": "512x256"},
        )
        data = answer["data"]
        assert isinstance(data, list)
        png = base64.b64decode(data[0]["b64_json"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (512, 256)
        hosted = post_json(
            f"http://127.0.0.1:{port}/v1/images/generations",
            {"model": "local-image", "prompt": "a lighthouse", "response_format": "url"},
        )
        hosted_data = hosted["data"]
        assert isinstance(hosted_data, list)
        with urllib.request.urlopen(hosted_data[0]["url"], timeout=30) as response:
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert list(images.iterdir())  # hosted images went where PROXY_IMAGE_DIR said
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "accepts requests without a key" in log.read_text()


def test_text_log_format_writes_text_access_lines(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    env = clean_env(PROXY_PORT=str(port), PROXY_IMAGE_DIR=str(tmp_path / "images"))
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "proxy", "--log-format", "text"], cwd=ROOT, env=env,
                                   stderr=sink, stdout=sink)
    try:
        wait_until_listening(port, process, log)
        post_json(f"http://127.0.0.1:{port}/v1/images/generations", {"model": "local-image", "prompt": "p", "size": "32x32"})
    finally:
        process.terminate()
        process.wait(timeout=30)
    access = [line for line in log.read_text().splitlines() if "imagegate.access" in line]
    assert len(access) == 1, log.read_text()
    line = access[0]
    assert " INFO imagegate.access: POST /v1/images/generations 200 request_id=" in line
    assert " model=local-image " in line and " channel=local " in line
    assert "{" not in line and '"status"' not in line


def test_check_refuses_bad_adapter_settings_naming_each(tmp_path: Path) -> None:
    rules = tmp_path / "settings.yaml"
    rules.write_text(
        "channels:\n"
        "  k: {type: kling, api_key: 'a:b', poll_interval: -1}\n"
        "  r: {type: replicate, api_key: r, size_mode: bogus}\n"
        "  s: {type: stability, api_key: s, accept: text/html}\n"
        "models:\n  m: {channels: [k, r, s]}\n"
    )
    result = run_cli("check", "--rules", str(rules))
    assert result.returncode == 2
    for expected in (
        "channels.k.poll_interval: expected a number of seconds above 0, got -1",
        "channels.r.size_mode: expected one of aspect_ratio, width_height, got 'bogus'",
        "channels.s.accept: expected one of",
    ):
        assert expected in result.stderr, result.stderr
