"""The server's allocator settings (app.allocator), each in a fresh interpreter: mallopt
changes the process for good."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ("from app import allocator\n"
          "print(allocator.keep_freed_memory())\n"
          "allocator.return_freed_memory()\n")


def run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            cwd=REPO, env={**clean, **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_thresholds_are_set_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert run({}) == "True"


def test_the_operator_s_own_malloc_variables_win():
    assert run({"MALLOC_TRIM_THRESHOLD_": "131072"}) == "False"
    assert run({"MALLOC_MMAP_THRESHOLD_": "131072"}) == "False"
