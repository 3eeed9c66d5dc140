"""The SDK against a real server: a uvicorn process on loopback serving a tiny SavedModel.

The model (cifar_resnet_20, 129×129 input, random weights) is exported once per module in
a subprocess, so this test process never imports TensorFlow.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from atrous_client import (
    AsyncAtrousClient,
    AtrousClient,
    BadRequestError,
    Segmentation,
    UnsupportedMediaTypeError,
)
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("app") is None or importlib.util.find_spec("app.main") is None,
    reason="app.main (the server's create_app) does not exist yet; these tests start it",
)

EXPORT = """
import sys, warnings
warnings.simplefilter("ignore")
from model.config import ModelConfig
from model.export import export_saved_model
export_saved_model(ModelConfig(backbone="cifar_resnet_20", input_size=129), sys.argv[1])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("atrous-e2e") / "model"
    subprocess.run([sys.executable, "-c", EXPORT, str(path)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    return path


@contextlib.contextmanager
def _running_server(model_dir: Path, **settings: str) -> Iterator[str]:
    """A uvicorn process serving ``model_dir`` on a free loopback port, until ready."""
    port = _free_port()
    log_path = model_dir.parent / f"server-{port}.log"
    env = {**os.environ, "ATROUS_MODEL": str(model_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
           **{f"ATROUS_{key.upper()}": value for key, value in settings.items()}}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with AtrousClient(url) as client:
            deadline = time.monotonic() + 90
            while not _ready(client):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not become ready:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server_url(model_dir: Path) -> Iterator[str]:
    # Batches of one: a mask cannot depend on which other images shared its batch.
    with _running_server(model_dir, max_batch_size="1", max_queue="64") as url:
        yield url


def _ready(client: AtrousClient) -> bool:
    try:
        return client.ready()
    except Exception:
        return False


@pytest.fixture
def client(server_url: str) -> Iterator[AtrousClient]:
    with AtrousClient(server_url, timeout=30) as c:
        yield c


def _picture(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus noise, so a random network gives more than one class."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 3) % 256], axis=-1)
    noise = rng.integers(0, 60, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _server_png(url: str, body: bytes) -> Image.Image:
    """The server's own answer, fetched without the SDK."""
    response = httpx.post(f"{url}/segment", content=body, timeout=30,
                          headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/png")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_every_input_type_gives_the_servers_mask(client: AtrousClient, server_url: str,
                                                 tmp_path: Path) -> None:
    pixels = _picture()
    data = _png(pixels)
    path = tmp_path / "picture.png"
    path.write_bytes(data)
    reference = _server_png(server_url, data)
    expected = np.asarray(reference)
    assert expected.shape == (64, 96)

    with open(path, "rb") as opened:
        inputs = {"str path": str(path), "Path": path, "bytes": data, "file": opened,
                  "PIL": Image.fromarray(pixels), "numpy": pixels}
        for name, image in inputs.items():
            result = client.segment(image)
            assert isinstance(result, Segmentation), name
            np.testing.assert_array_equal(result.mask, expected, err_msg=name)
            assert result.request_id, name
            assert "inference" in result.timings, (name, result.timings)

    # What the SDK writes is what the server wrote: same pixels, same palette.
    saved = io.BytesIO()
    result.save(saved)
    with Image.open(io.BytesIO(saved.getvalue())) as ours:
        assert ours.mode == reference.mode == "P"
        np.testing.assert_array_equal(np.asarray(ours), expected)
        assert ours.getpalette() == reference.getpalette()


def test_grayscale_array(client: AtrousClient, server_url: str) -> None:
    gray = _picture()[..., 1]
    expected = np.asarray(_server_png(server_url, _png(gray)))
    np.testing.assert_array_equal(client.segment(gray).mask, expected)


def test_json_and_png_agree(client: AtrousClient) -> None:
    pixels = _picture(seed=1)
    as_png = client.segment(pixels, format="png")
    as_json = client.segment(pixels, format="json")
    np.testing.assert_array_equal(as_png.mask, as_json.mask)
    assert [(c.id, c.label, c.pixels, c.bbox) for c in as_png.classes] == \
        [(c.id, c.label, c.pixels, c.bbox) for c in as_json.classes]
    for ours, theirs in zip(as_png.classes, as_json.classes, strict=True):
        assert ours.fraction == pytest.approx(theirs.fraction, abs=1e-6)
    assert sum(c.pixels for c in as_png.classes) == pixels.shape[0] * pixels.shape[1]


def test_exif_orientation_is_applied_by_the_server(client: AtrousClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 96×64, displayed 64×96
    buffer = io.BytesIO()
    Image.fromarray(_picture()).save(buffer, format="JPEG", exif=exif)
    result = client.segment(buffer.getvalue())
    assert result.mask.shape == (96, 64)
    assert result.overlay(buffer.getvalue()).size == (64, 96)


def test_segment_many_with_a_failing_item_in_the_middle(client: AtrousClient) -> None:
    pictures = [_picture(seed=i) for i in range(5)]
    inputs: list[object] = [*pictures[:2], b"\x89PNG\r\n\x1a\n truncated", *pictures[2:]]
    results = client.segment_many(inputs, concurrency=3)  # type: ignore[arg-type]
    assert len(results) == 6
    error = results[2]
    assert isinstance(error, BadRequestError), error
    assert (error.status_code, error.code) == (400, "corrupt_image")
    assert error.request_id
    singles = [client.segment(p).mask for p in pictures]
    for result, single in zip(results[:2] + results[3:], singles, strict=True):
        assert isinstance(result, Segmentation)
        np.testing.assert_array_equal(result.mask, single)


def test_async_client_against_the_server(server_url: str) -> None:
    pictures = [_picture(seed=i) for i in range(4)]

    async def run() -> tuple[list[object], list[np.ndarray], bool]:
        async with AsyncAtrousClient(server_url, timeout=30) as aclient:
            ready = await aclient.ready()
            many = await aclient.segment_many([pictures[0], b"", *pictures[1:]],
                                              concurrency=2)
            singles = [(await aclient.segment(p)).mask for p in pictures]
            return list(many), singles, ready

    many, singles, ready = asyncio.run(run())
    assert ready is True
    assert isinstance(many[1], BadRequestError) and many[1].code == "empty_body"
    for result, single in zip(many[:1] + many[2:], singles, strict=True):
        assert isinstance(result, Segmentation)
        np.testing.assert_array_equal(result.mask, single)


def test_server_errors_map_to_exceptions(client: AtrousClient) -> None:
    with pytest.raises(BadRequestError) as empty:
        client.segment(b"")
    assert empty.value.code == "empty_body"
    with pytest.raises(UnsupportedMediaTypeError) as text:
        client.segment(b"just some text, not an image at all")
    assert text.value.code == "unsupported_media_type"
    assert text.value.request_id and text.value.message


def test_model_info_health_ready(client: AtrousClient) -> None:
    info = client.model_info()
    assert (info.backbone, info.input_size, info.num_classes) == ("cifar_resnet_20", 129, 21)
    assert info.labels[15] == "person"
    assert info.trained is False
    assert info.runtime == "openvino" and info.runtime_version  # the CPU default
    assert info.inference_precision in ("fp32", "bf16")
    assert info.inference_precision_reason.startswith(f"auto: {info.inference_precision}")
    assert client.health() is True
    assert client.ready() is True
    client.wait_until_ready(timeout=5)


def test_queue_full_is_retried_until_every_image_is_through(
        model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A queue of one: most of twelve simultaneous uploads are refused with 503 queue_full and
    # Retry-After, and the client's retries must carry every one of them through.
    pictures = [_picture(seed=i) for i in range(12)]
    with _running_server(model_dir, max_batch_size="1", max_queue="1",
                         max_batch_delay_ms="50") as url:
        with AtrousClient(url, max_retries=20, timeout=30) as busy:
            with caplog.at_level(logging.INFO, logger="atrous_client"):
                results = busy.segment_many(pictures, concurrency=12)
    assert [type(r).__name__ for r in results] == ["Segmentation"] * 12
    retried = [r for r in caplog.records if "answered 503; retrying" in r.getMessage()]
    assert retried, "no 503 was provoked: the test proved nothing"
