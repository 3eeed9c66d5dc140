"""The image's helper scripts: TensorFlow pins and the health check."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.deploy.files import (
    DEPLOY,
    ROOT,
    free_port,
    load_module,
    pyproject,
)


def test_tf_pins_freezes_and_checks_the_tensorflow_stack() -> None:
    pins = load_module(DEPLOY / "docker/tf_pins.py")
    dists = {"tensorflow": "2.21.0", "numpy": "2.1.0", "nvidia-cudnn-cu12": "9.3.0",
             "pillow": "11.0.0", "typing-extensions": "4.12.0"}
    frozen = pins.freeze(dists)
    assert frozen.split() == ["numpy==2.1.0", "nvidia-cudnn-cu12==9.3.0", "tensorflow==2.21.0"]
    assert pins.check(frozen, dists) == []
    assert pins.check(frozen, {**dists, "pillow": "12.3.0"}) == []  # free to move
    assert pins.check(frozen, {**dists, "tensorflow": "2.21.1"})
    assert pins.check(frozen, {k: v for k, v in dists.items() if k != "numpy"})
    assert pins.check(frozen, {**dists, "tensorflow-cpu": "2.21.0"})
    with pytest.raises(SystemExit):
        pins.freeze({"numpy": "2.1.0"})


def test_tf_pins_reads_this_environment_and_pyproject() -> None:
    script = DEPLOY / "docker/tf_pins.py"
    frozen = subprocess.run([sys.executable, str(script), "freeze"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert re.search(r"^tensorflow==2\.21\.", frozen, re.M), frozen
    reqs = subprocess.run([sys.executable, str(script), "requirements",
                           str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert reqs.split("\n")[:-1] == pyproject()["project"]["dependencies"]
    pins_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"tf-pins-{os.getpid()}.txt"
    try:
        pins_file.write_text(frozen)
        ok = subprocess.run([sys.executable, str(script), "check", str(pins_file)],
                            capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stderr
        pins_file.write_text(frozen.replace("tensorflow==2.21.", "tensorflow==2.20."))
        moved = subprocess.run([sys.executable, str(script), "check", str(pins_file)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert moved.returncode == 1 and "tensorflow" in moved.stderr
    finally:
        pins_file.unlink(missing_ok=True)


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_script_exit_code(status: int, exit_code: int) -> None:
    handler = type("Handler", (_Readiness,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "ATROUS_PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, str(DEPLOY / "docker/healthcheck.py")], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == exit_code, result.stdout + result.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    env = {**os.environ, "ATROUS_PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(DEPLOY / "docker/healthcheck.py")], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1


