"""proxy.allocator: with its thresholds, a burst of megabyte buffers reuses memory instead of faulting in fresh pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Three 3 MB answers in flight, then all freed, twenty times over: glibc's default thresholds give the
# freed top of the heap back to the kernel after each burst, so every burst faults its pages in again.
PROBE = """
import resource, sys
from proxy.allocator import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers()
def burst():
    held = [b"x" * 3_000_000 for _ in range(3)]
    return len(held)
burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    burst()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_burst(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_megabyte_buffers_are_reused_rather_than_faulted_in_again() -> None:
    pages = 3 * 3_000_000 // 4096
    assert faults_per_burst("default") > pages / 2  # what the thresholds are for: fresh pages every burst
    assert faults_per_burst("keep") < 20

