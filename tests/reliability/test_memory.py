"""Bounded memory: a real server answering large tiled requests (a small network at
proportional geometry: a 129 input on a 1500 x 1000 image, 204 tiles) stays within the
documented per-request bound, and four at once stay within the memory budget, each
answered 200 or 503 ``memory_busy`` (never an OOM kill)."""

import io
import re
import threading

import httpx
import pytest
from PIL import Image

from model.inference.contract import ModelMetadata
from model.inference.options import InferenceOptions, Tiling
from model.inference.pipeline import OutputFormat, working_bytes
from tests.images import photo_like
from tests.reliability.conftest import MB, PeakRss

SIZE = (1500, 1000)
# What the interpreter, the allocator and the runtime may add beyond the estimated work
# (thread stacks, arenas not yet returned, TensorFlow's per-call buffers).
SLACK = 48 * MB


def _png(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    photo_like(width, height, seed).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _estimate(model_dir) -> int:
    metadata = ModelMetadata.read(model_dir)
    return working_bytes(SIZE, metadata.input_size, metadata.num_classes,
                         InferenceOptions(tiling=Tiling.on), OutputFormat.png)


def _segment(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url + "/segment", params={"tiling": "on"}, content=body,
                      headers={"Content-Type": "image/png"}, timeout=180)


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def budgeted_server(server_factory, tiling_saved_model):
    estimate = _estimate(tiling_saved_model)
    budget_mb = int(1.5 * estimate / MB) + 1  # one request runs, one waits, more: 503
    server = server_factory({"ATROUS_MODEL": str(tiling_saved_model),
                             "ATROUS_MAX_BATCH_SIZE": "1", "ATROUS_MAX_QUEUE": "512",
                             "ATROUS_REQUEST_TIMEOUT_S": "150",
                             "ATROUS_MEMORY_BUDGET_MB": str(budget_mb)})
    # Warm the probabilities path (first-call allocations are idle memory, not work).
    assert _segment(server.url, _png(300, 200, 1)).status_code == 200
    yield server, estimate, budget_mb * MB
    server.stop()


def test_one_large_tiled_request_stays_within_the_documented_bound(budgeted_server):
    server, estimate, _ = budgeted_server
    body = _png(*SIZE, seed=2)
    rss = PeakRss(server.process.pid)
    idle = rss.now()
    with rss.watching():
        response = _segment(server.url, body)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == SIZE
    assert "tiles;dur=204" in response.headers["server-timing"]
    # The old full stack held 204 tiles x 129 x 129 x 21 float32 (570 MB) plus a
    # 1500 x 1000 x 21 float32 map (126 MB); the streamed merge holds one tile row.
    grown = rss.peak - idle
    assert grown <= estimate + SLACK, (
        f"RSS rose {grown / MB:.0f} MB for one request; bound {estimate / MB:.0f} MB "
        f"+ {SLACK / MB:.0f} MB slack")


def test_four_at_once_stay_within_the_budget_and_the_excess_gets_503(budgeted_server):
    server, _, budget = budgeted_server
    body = _png(*SIZE, seed=3)
    responses: list[httpx.Response] = []
    in_use: list[float] = []
    done = threading.Event()

    def send() -> None:
        responses.append(_segment(server.url, body))

    def watch_gauge() -> None:
        while not done.is_set():
            in_use.append(_metric(server.url, "atrous_memory_budget_in_use_bytes"))
            done.wait(0.2)

    rss = PeakRss(server.process.pid)
    idle = rss.now()
    senders = [threading.Thread(target=send) for _ in range(4)]
    watcher = threading.Thread(target=watch_gauge)
    with rss.watching():
        watcher.start()
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        done.set()
        watcher.join()
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "memory_busy", response.text
            assert response.headers["retry-after"]
    assert _metric(server.url, "atrous_memory_budget_bytes") == budget
    assert 0 < max(in_use) <= budget
    assert _metric(server.url, "atrous_memory_budget_in_use_bytes") == 0
    grown = rss.peak - idle
    assert grown <= budget + SLACK, (f"RSS rose {grown / MB:.0f} MB; the budget is "
                                     f"{budget / MB:.0f} MB")
    assert server.process.poll() is None
