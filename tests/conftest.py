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


# --- a server with known masks and API keys (the web page, the SDK and the CLI use it) ----

PAINTED_API_KEYS = ("painted-key-one", "painted-key-two")
PAINTED_MAX_UPLOAD_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def painted_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small resnet_v1_50 (2 units per block), OS 8, 129 x 129 SavedModel with the hand-set
    "colour routing" weights of ``checkpoint_factory``: red -> person, green -> aeroplane,
    blue -> car, black -> background. Exported in-process, so the server only loads it."""
    import dataclasses
    from unittest import mock

    from model.config import ModelConfig
    from model.export import export_saved_model
    from model.nets import network
    from model.nets.backbones import get_backbone
    from tests import checkpoint_factory

    config = ModelConfig(backbone="resnet_v1_50", output_stride=8, input_size=129)
    # Depths (2, 2, 4, 8): every block keeps at least the six routed colour channels.
    small = dataclasses.replace(get_backbone("resnet_v1_50"), units=(2, 2, 2, 2),
                                base_depths=(2, 2, 4, 8))
    root = tmp_path_factory.mktemp("painted")
    checkpoint = checkpoint_factory.write_checkpoint(
        config, root / "painted.ckpt", backbone=small,
        values=checkpoint_factory.color_routing_value)
    with mock.patch.object(network, "get_backbone", lambda name: small):
        export_saved_model(config, root / "savedmodel", checkpoint=checkpoint)
    return root / "savedmodel"


@pytest.fixture(scope="session")
def painted_server(server_factory, painted_saved_model: Path) -> "ServerProcess":
    """A real server process with ``PAINTED_API_KEYS``: the keyed routes need one of them."""
    return server_factory({"ATROUS_MODEL": str(painted_saved_model),
                           "ATROUS_API_KEYS": ",".join(PAINTED_API_KEYS),
                           "ATROUS_MAX_UPLOAD_BYTES": str(PAINTED_MAX_UPLOAD_BYTES),
                           "ATROUS_MAX_BATCH_SIZE": "1"})  # one warm-up: a faster start


# The painted model of the tiling tests (tiling_saved_model): cifar_resnet_20 at output
# stride 16 and a 129 input, with the colour-routing weights (tests/checkpoint_factory.py)
# and a balanced background bias, so the right answer is known.
TILING_INPUT_SIZE = 129


@pytest.fixture(scope="session")
def tiling_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from model.config import ModelConfig
    from tests import checkpoint_factory

    config = ModelConfig(backbone="cifar_resnet_20", output_stride=16,
                         input_size=TILING_INPUT_SIZE)
    return checkpoint_factory.write_checkpoint(
        config, tmp_path_factory.mktemp("painted") / "painted.ckpt",
        values=checkpoint_factory.color_routing_values(config.backbone))


@pytest.fixture(scope="session")
def tiling_saved_model(tmp_path_factory: pytest.TempPathFactory, tiling_checkpoint: str) -> Path:
    """A real SavedModel with hand-set colour-routing weights (red -> 15, green -> 1,
    blue -> 7, dark -> 0), exported once."""
    from model.config import ModelConfig
    from model.export import export_saved_model

    path = tmp_path_factory.mktemp("models") / "painted"
    export_saved_model(ModelConfig(backbone="cifar_resnet_20", output_stride=16,
                                   input_size=TILING_INPUT_SIZE), path,
                       checkpoint=tiling_checkpoint)
    return path
