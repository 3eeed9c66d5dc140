"""The app in-process, for the states a real model cannot be made to show on demand:
still loading, failed to load, draining, and a model that raises (a 500)."""

import asyncio
import io
import threading
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app.loader import LoadedModel
from app.main import create_app
from app.service import Phase
from app.settings import Settings
from model.inference.contract import ModelMetadata
from model.inference.labels import class_labels, voc_colormap
from model.inference.precision import InferencePrecision

SIZE = 33
METADATA = ModelMetadata(
    backbone="fake", output_stride=16, num_classes=21, head="logits", input_size=SIZE,
    precision="fp32", trained=False, weights="random", labels=tuple(class_labels(21)),
    colors=tuple(tuple(int(c) for c in rgb) for rgb in voc_colormap(21)),
    tensorflow_version="none")


class ConstantSegmenter:
    metadata = METADATA
    runtime, runtime_version, device = "fake", "0", "CPU"
    inference_precision = InferencePrecision("fp32", "fp32: a fake that computes nothing")
    oom_errors: tuple[type[BaseException], ...] = (MemoryError,)

    def __init__(self, label: int = 15, error: Exception | None = None) -> None:
        self.label, self.error = label, error

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if self.error is not None:
            raise self.error
        return np.full(images.shape[:3], self.label, np.uint8)


def settings(**overrides) -> Settings:
    return Settings(backbone="cifar_resnet_20", input_size=65, retry_after_s=2,
                    max_batch_delay_ms=1, **overrides)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


async def with_app(app, body):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await body(client, app)


async def wait_for(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_not_ready_while_loading_then_ready():
    release = threading.Event()

    def slow_loader(_: Settings) -> LoadedModel:
        release.wait(10)
        return LoadedModel(ConstantSegmenter(), Path("/fake"))

    async def body(client, app):
        loading = [await client.get("/readyz"), await client.post("/segment", content=png_bytes()),
                   await client.get("/v1/model")]
        health = await client.get("/healthz")
        release.set()
        await wait_for(lambda: app.state.models.phase is Phase.READY)
        ready = [await client.get("/readyz"), await client.post("/segment", content=png_bytes())]
        return loading, health, ready

    loading, health, ready = asyncio.run(
        with_app(create_app(settings(), loader=slow_loader, handle_signals=False), body))
    for response in loading:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "not_ready"
        assert response.headers["retry-after"] == "2"
    assert health.status_code == 200
    assert ready[0].status_code == 200
    assert ready[1].status_code == 200
    mask = Image.open(io.BytesIO(ready[1].content))
    assert mask.size == (20, 10) and set(np.unique(np.asarray(mask))) == {15}


def test_draining_turns_readyz_and_segment_to_503():
    def loader(_: Settings) -> LoadedModel:
        return LoadedModel(ConstantSegmenter(), Path("/fake"))

    async def body(client, app):
        await wait_for(lambda: app.state.models.phase is Phase.READY)
        before = await client.get("/readyz")
        app.state.models.mark_draining()  # what the SIGTERM hook does
        return before, await client.get("/readyz"), await client.post("/segment",
                                                                      content=png_bytes())

    before, readyz, segment = asyncio.run(
        with_app(create_app(settings(), loader=loader, handle_signals=False), body))
    assert before.status_code == 200
    for response in (readyz, segment):
        assert response.status_code == 503
        assert response.json()["error"] == {"code": "not_ready",
                                            "message": "the server is shutting down"}
        assert response.headers["retry-after"] == "2"


def test_a_failed_load_keeps_the_server_not_ready():
    def broken(_: Settings) -> LoadedModel:
        raise ValueError("saved_model.pb is garbage")

    async def body(client, app):
        await wait_for(lambda: app.state.models.phase is Phase.FAILED)
        return await client.get("/readyz")

    app = create_app(settings(), loader=broken, handle_signals=False)
    response = asyncio.run(with_app(app, body))
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the model failed to load"
    assert isinstance(app.state.models.failure, ValueError)


def test_a_model_error_is_a_typed_500_that_says_nothing_internal(caplog):
    def loader(_: Settings) -> LoadedModel:
        secret = RuntimeError("/srv/secret/path exploded")
        return LoadedModel(ConstantSegmenter(error=secret), Path("/fake"))

    async def body(client, app):
        await wait_for(lambda: app.state.models.phase is Phase.READY)
        return await client.post("/segment", content=png_bytes(),
                                 headers={"X-Request-ID": "req-500"})

    response = asyncio.run(with_app(create_app(settings(), loader=loader,
                                               handle_signals=False), body))
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "inference_failed",
                                         "message": "the model failed on this request's batch; "
                                                    "retrying may succeed"},
                               "request_id": "req-500"}
    assert response.headers["x-request-id"] == "req-500"
    assert "secret" not in response.text
    assert any("req-500" in record.getMessage() and record.exc_info
               for record in caplog.records)


def test_settings_fail_at_start_not_at_the_first_request(tmp_path):
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ATROUS_MODEL: .* is not an atrous model directory"):
        Settings(model=tmp_path)
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / "assets.extra" / "atrous.json").write_text("{}")
    with pytest.raises(ValidationError, match="is not valid atrous metadata"):
        Settings(model=tmp_path)
    with pytest.raises(ValidationError, match="precision"):
        Settings(precision="int8")
    with pytest.raises(ValidationError, match="output_stride must be 8, 16 or 32"):
        Settings(output_stride=12)
    with pytest.raises(ValidationError, match="max_queue"):
        Settings(max_queue=2, max_batch_size=8)
    with pytest.raises(ValidationError, match="backbone"):
        Settings(backbone="resnet_v9")


def test_decode_threads_follow_the_process_s_cpu_threads_between_2_and_8():
    assert [Settings(threads=n).decode_threads for n in (1, 2, 5, 16)] == [2, 2, 5, 8]
    assert Settings(threads=16, decode_concurrency=3).decode_threads == 3


def test_settings_come_from_atrous_environment_variables(monkeypatch):
    env = {"ATROUS_OUTPUT_STRIDE": "8", "ATROUS_INPUT_SIZE": "129", "ATROUS_HEAD": "aspp",
           "ATROUS_BACKBONE": "resnet_v1_50", "ATROUS_MAX_BATCH_SIZE": "2",
           "ATROUS_MAX_BATCH_DELAY_MS": "2.5", "ATROUS_GPU_MEMORY_GROWTH": "false",
           "ATROUS_RETRY_AFTER_S": "4", "ATROUS_DECODE_CONCURRENCY": "3"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loaded = Settings()
    assert (loaded.output_stride, loaded.input_size, loaded.head, loaded.backbone) == (
        8, 129, "aspp", "resnet_v1_50")
    assert (loaded.max_batch_size, loaded.max_batch_delay_ms, loaded.gpu_memory_growth,
            loaded.retry_after_s, loaded.decode_concurrency) == (2, 2.5, False, 4, 3)
    assert loaded.to_model_config().output_stride == 8
