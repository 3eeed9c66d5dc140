"""A runtime that raises fails only its batch (a typed 500 per request, the server stays
ready); one that hangs past the request timeout turns /readyz 503 and the process exits
with status 70 for its supervisor to restart it.  The faults come from
``ATROUS_TEST_FAULT`` (``app.faults``), a wrapper where the batcher receives the model."""

import io
import time

import httpx
import numpy as np
from PIL import Image

from app.service import EXIT_WORKER_LOST


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _segment(url: str) -> httpx.Response:
    return httpx.post(url + "/segment", content=_png(), timeout=60,
                      headers={"Content-Type": "image/png", "X-Request-ID": "fault-test"})


def test_a_runtime_that_raises_fails_only_its_batch(server_factory, tiny_saved_model):
    server = server_factory({"ATROUS_MODEL": str(tiny_saved_model),
                             "ATROUS_MAX_BATCH_SIZE": "1", "ATROUS_TEST_FAULT": "raise@2"})
    first, failed, after = (_segment(server.url) for _ in range(3))
    assert first.status_code == 200 and after.status_code == 200
    assert first.content == after.content
    assert failed.status_code == 500, failed.text
    assert failed.json() == {"error": {"code": "inference_failed",
                                       "message": "the model failed on this request's "
                                                  "batch; retrying may succeed"},
                             "request_id": "fault-test"}
    assert "injected" not in failed.text  # the runtime's message stays in the log
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert server.stop() == 0
    assert "injected fault" in server.log and "fault-test" in server.log


def test_a_hung_runtime_fails_readiness_and_exits_for_a_restart(server_factory,
                                                               tiny_saved_model):
    server = server_factory({"ATROUS_MODEL": str(tiny_saved_model),
                             "ATROUS_MAX_BATCH_SIZE": "1", "ATROUS_TEST_FAULT": "hang@1",
                             "ATROUS_REQUEST_TIMEOUT_S": "2"})
    hung = _segment(server.url)
    assert hung.status_code == 504 and hung.json()["error"]["code"] == "timeout", hung.text
    deadline = time.monotonic() + 20
    readyz = httpx.get(server.url + "/readyz", timeout=2)
    while readyz.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        readyz = httpx.get(server.url + "/readyz", timeout=2)
    assert readyz.status_code == 503, readyz.text
    assert readyz.json()["error"]["message"] == ("the inference worker failed; the server is "
                                                 "restarting")
    refused = _segment(server.url)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    assert server.process.wait(20) == EXIT_WORKER_LOST, server.log
    assert "past the request timeout" in server.log
