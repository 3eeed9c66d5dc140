"""Load, deadlines, disconnects, start-up and SIGTERM, each against a real server process."""

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from model.inference.contract import ModelMetadata
from tests.images import random_png as png
from tests.server.live import VERSION_LABELS, admitted_request, metric, response_of


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture(scope="module")
def slow_queue_server(server_factory, tiny_saved_model):
    """Batches wait 3 s for company, requests give up after 1 s."""
    return server_factory({"ATROUS_MODEL": str(tiny_saved_model),
                           "ATROUS_MAX_BATCH_SIZE": "8", "ATROUS_MAX_BATCH_DELAY_MS": "3000",
                           "ATROUS_REQUEST_TIMEOUT_S": "1"})


def test_a_deadline_passing_in_the_queue_is_504_and_skips_the_model(slow_queue_server):
    url = slow_queue_server.url
    calls_before = metric(url, f"atrous_batch_size_count{{{VERSION_LABELS}}}")
    start = time.monotonic()
    response = httpx.post(url + "/segment", content=png(), timeout=10)
    elapsed = time.monotonic() - start
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert 0.9 < elapsed < 2.5
    time.sleep(2.5)  # past the batch flush: the expired image must not have been run
    assert metric(url, f"atrous_batch_size_count{{{VERSION_LABELS}}}") == calls_before


def test_a_client_that_leaves_is_dropped_before_inference(slow_queue_server):
    url = slow_queue_server.url
    calls_before = metric(url, f"atrous_batch_size_count{{{VERSION_LABELS}}}")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/segment", content=png(), timeout=httpx.Timeout(5, read=0.3))
    time.sleep(3.5)  # past the flush
    gone = 'atrous_rejections_total{model="default",reason="client_gone",version="1"}'
    assert metric(url, gone) == 1
    assert metric(url, f"atrous_batch_size_count{{{VERSION_LABELS}}}") == calls_before


def test_nothing_is_lost_under_overload(server_factory, tiny_saved_model):
    """300 requests, 16 at a time, against a queue of 4: every request gets exactly one
    well-formed answer (200, or 503 + Retry-After, or 504), and memory stays bounded."""
    server = server_factory({"ATROUS_MODEL": str(tiny_saved_model),
                             "ATROUS_MAX_BATCH_SIZE": "1", "ATROUS_MAX_QUEUE": "4",
                             "ATROUS_MAX_BATCH_DELAY_MS": "0", "ATROUS_REQUEST_TIMEOUT_S": "2",
                             "ATROUS_RETRY_AFTER_S": "1"})
    total, concurrency = 300, 16
    bodies = [png(64 + k, 48, seed=k) for k in range(8)]
    pid = server.process.pid
    rss_before = rss_kib(pid, "VmRSS")

    async def main():
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(total):
                queue.put_nowait(i)
            results: dict[int, httpx.Response] = {}

            async def worker():
                while not queue.empty():
                    i = queue.get_nowait()
                    assert i not in results
                    results[i] = await client.post(
                        "/segment", content=bodies[i % len(bodies)],
                        headers={"X-Request-ID": f"load-{i}"})
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return results

    start = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - start
    assert sorted(results) == list(range(total))
    statuses: dict[int, int] = {}
    for i, response in results.items():
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.headers["x-request-id"] == f"load-{i}"
        assert response.status_code in (200, 503, 504), response.text
        if response.status_code == 200:
            mask = Image.open(io.BytesIO(response.content))
            assert mask.mode == "P" and mask.size == (64 + i % 8, 48)
        else:
            body = response.json()
            assert body["request_id"] == f"load-{i}"
            assert body["error"]["code"] in ("queue_full", "timeout")
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert response.headers["connection"] == "close"
    print(f"{total} requests in {elapsed:.1f} s: {statuses}")
    assert statuses.get(200, 0) > 0
    assert statuses.get(503, 0) > 0, f"the queue never filled: {statuses}"
    grown_mib = (rss_kib(pid, "VmRSS") - rss_before) / 1024
    assert grown_mib < 150, f"RSS grew by {grown_mib:.0f} MiB"
    assert metric(server.url, f"atrous_queue_depth{{{VERSION_LABELS}}}") == 0
    assert metric(server.url, "atrous_requests_in_flight") == 1  # the /metrics call itself
    assert server.process.poll() is None
    assert '"POST /segment HTTP/1.1" 200' in server.log  # the access log is on by default


def test_sigterm_drains_in_flight_requests_and_exits_0(server_factory, tiny_saved_model):
    server = server_factory({"ATROUS_MODEL": str(tiny_saved_model),
                             "ATROUS_MAX_BATCH_SIZE": "8", "ATROUS_MAX_BATCH_DELAY_MS": "1500",
                             "ATROUS_SHUTDOWN_GRACE_S": "10", "ATROUS_ACCESS_LOG": "false"})
    thread, outcome = admitted_request(server.url, png(), timeout=15)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        late = httpx.get(server.url + "/readyz", timeout=2).status_code
    except httpx.TransportError:
        late = "refused"
    response = response_of(thread, outcome, timeout=20)
    try:
        returncode = server.process.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 20 s after the request ended:\n{server.log}")
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (64, 48)
    assert late in (503, "refused")
    assert returncode == 0, server.log
    assert "draining" in server.log
    assert '"POST /segment HTTP/1.1"' not in server.log  # ATROUS_ACCESS_LOG=false


def test_uvicorn_factory_without_a_model_exports_the_default_and_says_so(
        server_factory, tmp_path):
    cache = tmp_path / "cache"
    server = server_factory(
        {"ATROUS_BACKBONE": "cifar_resnet_20", "ATROUS_INPUT_SIZE": "65",
         "ATROUS_CACHE_DIR": str(cache), "ATROUS_MAX_BATCH_SIZE": "2"},
        command=[sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
                 "--host", "127.0.0.1", "--port", "{port}"], wait=False)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            response = httpx.get(server.url + "/readyz", timeout=2)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        seen.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.json()["error"]["code"] == "not_ready"
        assert "retry-after" in response.headers
        time.sleep(0.05)
    assert seen and seen[-1] == 200, server.log
    assert 503 in seen, "readyz answered 200 before the model could have loaded"
    info = httpx.get(server.url + "/v1/model").json()
    assert (info["backbone"], info["trained"], info["weights"]) == ("cifar_resnet_20", False,
                                                                      "random")
    assert "RANDOMLY INITIALISED" in server.log
    assert "warming up batch sizes 1..2" in server.log
    exported_warnings = [line.split("export: ", 1)[1] for line in server.log.splitlines()
                         if "app.loader: export: " in line]
    assert any("random weights" in line for line in exported_warnings), server.log
    assert len(exported_warnings) == len(set(exported_warnings)), "a warning logged twice"
    exported = [p for p in cache.iterdir() if (p / "saved_model.pb").exists()]
    assert len(exported) == 1
    assert json.loads((exported[0] / "assets.extra" / "atrous.json").read_text())[
        "backbone"] == "cifar_resnet_20"
    response = httpx.post(server.url + "/segment", content=png(), timeout=30)
    assert response.status_code == 200


@pytest.mark.parametrize("env,message", [
    ({"ATROUS_CHECKPOINT": "/nonexistent/model.ckpt"}, "ATROUS_CHECKPOINT"),
    ({"ATROUS_MODEL": "/nonexistent"}, "not an atrous model directory"),
    ({"ATROUS_MAX_QUEUE": "2", "ATROUS_MAX_BATCH_SIZE": "8"}, "max_queue"),
])
def test_bad_settings_fail_at_start(server_factory, env, message):
    server = server_factory(env, wait=False)
    returncode = server.process.wait(60)
    assert returncode != 0
    assert message in server.log


def test_a_model_that_fails_to_load_stops_the_server_with_status_1(server_factory, tmp_path,
                                                                   tiny_saved_model):
    broken = tmp_path / "broken"  # valid metadata (so settings pass), a garbage graph
    (broken / "assets.extra").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    ModelMetadata.read(tiny_saved_model).write(broken)
    server = server_factory({"ATROUS_MODEL": str(broken)}, wait=False)
    assert server.process.wait(60) == 1, server.log
    assert "model loading failed" in server.log


def test_the_request_path_never_imports_tf_slim(tiny_saved_model):
    """Serving a SavedModel: load, decode, batch, encode -- and tf_slim is never imported;
    nor, on the default CPU runtime (OpenVINO), is TensorFlow."""
    script = f"""
import asyncio, io, sys
from PIL import Image
from app.main import create_app
from app.settings import Settings
import httpx

async def main():
    app = create_app(Settings(model={str(tiny_saved_model)!r}), handle_signals=False)
    async with app.router.lifespan_context(app):
        while app.state.models.phase.value != "ready":
            await asyncio.sleep(0.05)
        buffer = io.BytesIO()
        Image.new("RGB", (50, 40), (1, 2, 3)).save(buffer, format="JPEG")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for fmt in ("png", "json", "overlay"):
                response = await client.post("/segment", params={{"format": fmt}},
                                             content=buffer.getvalue())
                assert response.status_code == 200, response.text
        print("runtime:", next(app.state.models.versions()).service.loaded.segmenter.runtime)

asyncio.run(main())
print("tf_slim imported:", "tf_slim" in sys.modules)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""
    import subprocess

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tf_slim imported: False" in result.stdout
    assert "runtime: openvino" in result.stdout
    assert "tensorflow imported: False" in result.stdout
