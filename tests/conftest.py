"""Shared fixtures: a tiny real SavedModel, and real server processes on loopback."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_INPUT_SIZE = 65


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, randomly initialised cifar_resnet_20 SavedModel (65 x 65), exported once."""
    import warnings

    from model.config import ModelConfig
    from model.export import UntrainedModelWarning, export_saved_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        export_saved_model(ModelConfig(backbone="cifar_resnet_20", input_size=TINY_INPUT_SIZE),
                           path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A real server in a subprocess, configured through ``ATROUS_*`` variables."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "ATROUS_HOST": "127.0.0.1", "ATROUS_PORT": str(self.port),
                    "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **env}
        command = command or [sys.executable, "-m", "app"]
        command = [part.replace("{port}", str(self.port)) for part in command]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory: ``server_factory(env, command=None, wait=True)`` -> a started ServerProcess.

    Every server still running is stopped at the end of the session; tests that need
    their own (SIGTERM, odd settings) stop it themselves.
    """
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(env: dict[str, str], command: list[str] | None = None,
              wait: bool = True) -> ServerProcess:
        server = ServerProcess(env, logs / f"server-{len(started)}.log", command)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()
