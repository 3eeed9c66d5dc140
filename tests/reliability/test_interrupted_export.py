"""The export cache under interruption and concurrency: a server killed (SIGKILL) in the
middle of its first export leaves nothing a later start would load, and two servers then
started at once on that cache both export or reuse, serve the same masks, and leave one
complete export (a race's loser discards its copy)."""

import io
import random
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from model.inference.contract import ModelMetadata

ENV = {"ATROUS_BACKBONE": "cifar_resnet_20", "ATROUS_INPUT_SIZE": "65",
       "ATROUS_MAX_BATCH_SIZE": "1"}


def _entries(cache: Path) -> tuple[list[Path], list[Path]]:
    """(finished exports, temporary ones) in the cache."""
    entries = sorted(cache.iterdir()) if cache.is_dir() else []
    return ([p for p in entries if not p.name.startswith(".")],
            [p for p in entries if p.name.startswith(".")])


def _png() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(5).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_kill_during_the_first_export_then_two_racing_starts_serve(server_factory, tmp_path):
    cache = tmp_path / "cache"
    first = server_factory({**ENV, "ATROUS_CACHE_DIR": str(cache)}, wait=False)
    deadline = time.monotonic() + 180
    while not _entries(cache)[1]:  # the export's temporary directory appears
        assert first.process.poll() is None, first.log
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.005)
    time.sleep(random.Random(19).uniform(0, 0.05))  # somewhere inside the export
    first.process.kill()
    first.process.wait()
    finished, temporary = _entries(cache)
    assert temporary, "the kill should leave the half-built export behind"
    for path in finished:  # renamed only when whole: if it got there, it is complete
        ModelMetadata.read(path)

    racers = [server_factory({**ENV, "ATROUS_CACHE_DIR": str(cache)}, wait=False)
              for _ in range(2)]
    bodies = []
    for server in racers:
        server.wait_ready(timeout=300)
        response = httpx.post(server.url + "/segment", content=_png(), timeout=60,
                              headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        bodies.append(response.content)
    assert bodies[0] == bodies[1]
    finished, left = _entries(cache)
    assert len(finished) == 1
    ModelMetadata.read(finished[0])
    # Only the killed server's directory may remain (removed once stale): the racers'
    # temporary copies were renamed or discarded.
    assert len(left) <= len(temporary), left
    for server in racers:
        assert server.stop() == 0, server.log
