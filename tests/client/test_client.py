"""Unit tests of the atrous SDK against ``httpx.MockTransport``.

Every behaviour of the clients runs twice, through ``AtrousClient`` and
``AsyncAtrousClient`` (the ``client_kind`` fixture), so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import io
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atrous_client
import httpx
import numpy as np
import pytest
from atrous_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncAtrousClient,
    AtrousClient,
    AtrousError,
    BadRequestError,
    GatewayTimeoutError,
    InternalServerError,
    PayloadTooLargeError,
    Segmentation,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from PIL import Image

LABELS = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
          "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
          "sheep", "sofa", "train", "tvmonitor"]
MODEL_JSON = {
    "backbone": "cifar_resnet_20", "output_stride": 16, "input_size": 129, "num_classes": 21,
    "head": "logits", "classes": [{"id": i, "label": name, "color": [i, i, i]}
                                  for i, name in enumerate(LABELS)],
    "weights": "random", "trained": False, "precision": "fp32", "device": "CPU:0",
    "runtime": "tensorflow", "runtime_version": "2.21.0",
    "batching": {"max_batch_size": 8, "max_batch_delay_ms": 5.0, "max_queue": 64,
                 "request_timeout_s": 30.0},
}


# Fakes ----------------------------------------------------------------------------------------

def expected_mask(pixels: np.ndarray) -> np.ndarray:
    """What the fake server 'predicts': class id = red channel mod 21."""
    return (pixels[..., 0] % 21).astype(np.uint8)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    image = Image.fromarray(mask)
    image.putpalette(atrous_client.VOC_PALETTE)
    return png_bytes(image)


def error_response(status: int, code: str, message: str = "nope",
                   headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers={"X-Request-ID": "rid-err", **(headers or {})},
                          json={"error": {"code": code, "message": message},
                                "request_id": "rid-err"})


class FakeServer:
    """A handler for MockTransport that follows docs/http-api.md, recording every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()
        self.json_classes: list[dict[str, Any]] | None = None  # override the JSON classes

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        if request.url.path == "/segment":
            return self.segment(request)
        return error_response(404, "not_found")

    def segment(self, request: httpx.Request) -> httpx.Response:
        try:
            with Image.open(io.BytesIO(request.content)) as image:
                pixels = np.asarray(image.convert("RGB"))
        except Exception:
            return error_response(400, "corrupt_image", "cannot decode the image")
        mask = expected_mask(pixels)
        headers = {"X-Request-ID": request.headers.get("X-Request-ID", "generated"),
                   "Server-Timing": "decode;dur=1.5, queue;dur=0.25, inference;dur=42, "
                                    "encode;dur=3"}
        if request.url.params.get("format", "png") == "png":
            return httpx.Response(200, content=mask_png(mask),
                                  headers={**headers, "Content-Type": "image/png"})
        classes = self.json_classes
        if classes is None:
            classes = []
            for class_id in sorted(set(mask.ravel().tolist())):
                ys, xs = np.nonzero(mask == class_id)
                classes.append({
                    "id": class_id, "label": LABELS[class_id], "pixels": int(len(xs)),
                    "fraction": len(xs) / mask.size,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                             int(ys.max() - ys.min() + 1)],
                    "rle": {"size": list(mask.shape), "counts": "ignored"}})
        import base64
        body = {"width": mask.shape[1], "height": mask.shape[0], "model": {},
                "classes": classes, "mask_png": base64.b64encode(mask_png(mask)).decode()}
        return httpx.Response(200, json=body, headers=headers)


def make_client(kind: str, handler: Callable[..., Any], **kwargs: Any) -> Any:
    transport = httpx.MockTransport(handler)
    if kind == "sync":
        return AtrousClient("http://atrous.test", transport=transport, **kwargs)
    return SyncView(AsyncAtrousClient("http://atrous.test", transport=transport, **kwargs))


class SyncView:
    """Calls an async client's coroutine methods to completion, so one test body serves both."""

    def __init__(self, client: AsyncAtrousClient) -> None:
        self.client = client

    def __enter__(self) -> SyncView:
        assert asyncio.run(self.client.__aenter__()) is self.client
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run(self.client.__aexit__(None, None, None))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(attribute(*args, **kwargs))
        return call


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records retry sleeps instead of sleeping."""
    recorded: list[float] = []

    async def async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(AtrousClient, "_sleep", staticmethod(recorded.append))
    monkeypatch.setattr(AsyncAtrousClient, "_sleep", staticmethod(async_sleep))
    return recorded


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def random_pixels(height: int = 12, width: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# Inputs ---------------------------------------------------------------------------------------

def _jpeg_with_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    buffer = io.BytesIO()
    Image.fromarray(random_pixels(8, 16)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


ENCODED_INPUTS = ["str_path", "pathlib_path", "bytes", "bytearray", "bytesio", "open_file"]
DECODED_INPUTS = ["pil_rgb", "pil_rgba", "numpy_rgb", "numpy_gray"]


@pytest.mark.parametrize("input_kind", ENCODED_INPUTS)
def test_encoded_inputs_are_sent_byte_for_byte(client_kind: str, server: FakeServer,
                                               tmp_path: Path, input_kind: str) -> None:
    # A JPEG with an EXIF orientation: only an untouched upload lets the server rotate it.
    data = _jpeg_with_orientation()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with open(path, "rb") as opened:
        image = {"str_path": str(path), "pathlib_path": path, "bytes": data,
                 "bytearray": bytearray(data), "bytesio": io.BytesIO(data),
                 "open_file": opened}[input_kind]
        with make_client(client_kind, server) as client:
            result = client.segment(image)
    upload = server.requests[-1]
    assert upload.method == "POST" and upload.url.path == "/segment"
    assert upload.content == data
    assert upload.headers["Content-Type"] == "application/octet-stream"
    assert upload.url.params["format"] == "png"
    with Image.open(io.BytesIO(data)) as decoded:
        np.testing.assert_array_equal(result.mask, expected_mask(np.asarray(decoded)))


@pytest.mark.parametrize("input_kind", DECODED_INPUTS)
def test_decoded_inputs_are_sent_as_lossless_png(client_kind: str, server: FakeServer,
                                                 input_kind: str) -> None:
    pixels = random_pixels()
    image = {"pil_rgb": Image.fromarray(pixels),
             "pil_rgba": Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 255,
                                                                     np.uint8)])),
             "numpy_rgb": pixels, "numpy_gray": pixels[..., 0]}[input_kind]
    with make_client(client_kind, server) as client:
        result = client.segment(image)
    upload = server.requests[-1]
    assert upload.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(upload.content)) as sent:
        assert sent.format == "PNG"
        sent_pixels = np.asarray(sent.convert("RGB"))
    expected = np.repeat(pixels[..., :1], 3, axis=2) if input_kind == "numpy_gray" else pixels
    np.testing.assert_array_equal(sent_pixels, expected)
    np.testing.assert_array_equal(result.mask, expected_mask(expected))


@pytest.mark.parametrize("image, error, match", [
    (np.zeros((4, 4, 3), np.float32), ValueError, "uint8"),
    (np.zeros((4, 4, 4), np.uint8), ValueError, "H×W×3"),
    (np.zeros((4,), np.uint8), ValueError, "H×W×3"),
    (12345, TypeError, "int"),
    (io.StringIO("not bytes"), TypeError, "binary mode"),
    ("/nonexistent/atrous/cat.jpg", FileNotFoundError, "cat.jpg"),
])
def test_bad_inputs_fail_before_any_request(client_kind: str, server: FakeServer, image: Any,
                                            error: type[Exception], match: str) -> None:
    with make_client(client_kind, server) as client, pytest.raises(error, match=match):
        client.segment(image)
    assert server.requests == []


def test_unknown_format_fails_before_any_request(client_kind: str, server: FakeServer) -> None:
    with make_client(client_kind, server) as client:
        with pytest.raises(ValueError, match="png, json"):
            client.segment(random_pixels(), format="overlay")
        with pytest.raises(ValueError, match="png, json"):
            client.segment_many([random_pixels()], format="jpeg")
    assert server.requests == []


# Results --------------------------------------------------------------------------------------

def test_segmentation_result(client_kind: str, server: FakeServer) -> None:
    pixels = np.zeros((6, 10, 3), np.uint8)
    pixels[1:4, 2:7, 0] = 15   # person: 3 rows × 5 columns at x=2, y=1
    pixels[5, 9, 0] = 8 + 21   # cat: one pixel in the corner (29 % 21)
    with make_client(client_kind, server) as client:
        result = client.segment(pixels)
    assert isinstance(result, Segmentation)
    assert result.mask.dtype == np.uint8 and result.mask.shape == (6, 10)
    assert (result.width, result.height) == (10, 6)
    assert result.labels == tuple(LABELS)
    assert [(c.id, c.label, c.pixels, c.bbox) for c in result.classes] == [
        (0, "background", 60 - 15 - 1, (0, 0, 10, 6)),
        (8, "cat", 1, (9, 5, 1, 1)),
        (15, "person", 15, (2, 1, 5, 3)),
    ]
    assert [c.fraction for c in result.classes] == pytest.approx([44 / 60, 1 / 60, 15 / 60])
    assert result.request_id == server.requests[-1].headers["X-Request-ID"]
    assert result.timings == {"decode": 1.5, "queue": 0.25, "inference": 42.0, "encode": 3.0}
    with pytest.raises(ValueError, match="read-only"):
        result.mask[0, 0] = 1
    assert "person 25.0%" in repr(result)


def test_model_info_is_fetched_once_for_labels(client_kind: str, server: FakeServer) -> None:
    with make_client(client_kind, server) as client:
        for _ in range(3):
            client.segment(random_pixels())
        client.segment_many([random_pixels()] * 4, concurrency=4)
    assert server.count("/v1/model") == 1
    assert server.count("/segment") == 7


def test_json_format_takes_classes_from_server_and_same_mask(client_kind: str,
                                                             server: FakeServer) -> None:
    pixels = random_pixels(9, 14, seed=3)
    with make_client(client_kind, server) as client:
        as_png = client.segment(pixels, format="png")
        as_json = client.segment(pixels, format="json")
        server.json_classes = [{"id": 7, "label": "car", "pixels": 5, "fraction": 0.5,
                                "bbox": [1, 2, 3, 4]}]
        overridden = client.segment(pixels, format="json")
    assert server.requests[-1].url.params["format"] == "json"
    np.testing.assert_array_equal(as_json.mask, as_png.mask)
    assert as_json.classes == as_png.classes
    assert as_json.labels == as_png.labels
    # The JSON's statistics are used as sent, not recomputed from the mask.
    assert [(c.id, c.label, c.pixels, c.fraction, c.bbox) for c in overridden.classes] == [
        (7, "car", 5, 0.5, (1, 2, 3, 4))]


@pytest.mark.parametrize("content, match", [
    (b"not a png", "not a readable PNG"),
    (png_bytes(Image.new("RGB", (3, 3))), "palette PNG"),
])
def test_undecodable_mask_raises_atrous_error(client_kind: str, content: bytes,
                                              match: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        return httpx.Response(200, content=content, headers={"Content-Type": "image/png"})
    with make_client(client_kind, handler) as client, pytest.raises(AtrousError, match=match):
        client.segment(random_pixels())


def test_json_with_mismatched_size_raises(client_kind: str) -> None:
    import base64
    body = {"width": 5, "height": 5, "classes": [],
            "mask_png": base64.b64encode(mask_png(np.zeros((2, 3), np.uint8))).decode()}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=MODEL_JSON if request.url.path == "/v1/model" else body)
    with make_client(client_kind, handler) as client, pytest.raises(AtrousError, match="3×2"):
        client.segment(random_pixels(), format="json")


def test_model_info(client_kind: str, server: FakeServer) -> None:
    with make_client(client_kind, server) as client:
        info = client.model_info()
    assert (info.backbone, info.output_stride, info.input_size, info.num_classes) == (
        "cifar_resnet_20", 16, 129, 21)
    assert info.labels == tuple(LABELS)
    assert info.classes[15].label == "person" and info.classes[15].color == (15, 15, 15)
    assert info.trained is False and info.batching["max_batch_size"] == 8
    assert (info.runtime, info.runtime_version) == ("tensorflow", "2.21.0")
    assert info.raw == MODEL_JSON


def test_to_image_is_the_server_palette_png() -> None:
    from model.inference.labels import palette  # the server's palette, to check ours against

    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    result = Segmentation(mask=mask, labels=tuple(LABELS), classes=())
    image = result.to_image()
    assert image.mode == "P"
    assert image.getpalette() == palette()
    np.testing.assert_array_equal(np.asarray(image), mask)
    buffer = io.BytesIO()
    result.save(buffer)
    with Image.open(io.BytesIO(buffer.getvalue())) as saved:
        assert (saved.format, saved.mode) == ("PNG", "P")
        np.testing.assert_array_equal(np.asarray(saved), mask)


def test_overlay_blends_class_colours() -> None:
    mask = np.array([[0, 15], [1, 0]], np.uint8)
    result = Segmentation(mask=mask, labels=tuple(LABELS), classes=())
    base = np.full((2, 2, 3), 100, np.uint8)
    blended = np.asarray(result.overlay(base, alpha=0.5))
    # VOC colours: background (0, 0, 0), aeroplane (128, 0, 0), person (192, 128, 128).
    np.testing.assert_array_equal(blended[0, 0], [50, 50, 50])
    np.testing.assert_array_equal(blended[1, 0], [114, 50, 50])
    np.testing.assert_array_equal(blended[0, 1], [146, 114, 114])
    np.testing.assert_array_equal(np.asarray(result.overlay(Image.fromarray(base), alpha=0)),
                                  base)
    with pytest.raises(ValueError, match="2×2"):
        result.overlay(np.zeros((3, 2, 3), np.uint8))


def test_overlay_orients_encoded_inputs_like_the_server() -> None:
    data = _jpeg_with_orientation()  # stored 16×8, displayed 8×16
    result = Segmentation(mask=np.zeros((16, 8), np.uint8), labels=(), classes=())
    assert result.overlay(data).size == (8, 16)


# Errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, code, error_class", [
    (400, "corrupt_image", BadRequestError),
    (400, "empty_body", BadRequestError),
    (404, "not_found", APIStatusError),
    (413, "payload_too_large", PayloadTooLargeError),
    (413, "image_too_large", PayloadTooLargeError),
    (415, "unsupported_media_type", UnsupportedMediaTypeError),
    (422, "validation_error", UnprocessableEntityError),
    (500, "internal_error", InternalServerError),
    (502, "bad_gateway", InternalServerError),
    (503, "queue_full", ServiceUnavailableError),
    (504, "timeout", GatewayTimeoutError),
])
def test_status_errors_carry_the_envelope(client_kind: str, sleeps: list[float], status: int,
                                          code: str, error_class: type[APIStatusError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        return error_response(status, code, f"the {code} message")

    with make_client(client_kind, handler, max_retries=0) as client:
        with pytest.raises(error_class) as caught:
            client.segment(b"image bytes")
    error = caught.value
    assert type(error) is error_class
    assert isinstance(error, APIStatusError) and isinstance(error, AtrousError)
    assert (error.status_code, error.code, error.request_id) == (status, code, "rid-err")
    assert error.message == f"the {code} message"
    assert error.response.status_code == status
    assert str(error) == f"{status} {code}: the {code} message (request id rid-err)"


def test_status_error_without_envelope(client_kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway from the proxy",
                              headers={"X-Request-ID": "proxy-1"})
    with make_client(client_kind, handler, max_retries=0) as client:
        with pytest.raises(InternalServerError) as caught:
            client.model_info()
    assert caught.value.code is None
    assert caught.value.message == "Bad Gateway from the proxy"
    assert caught.value.request_id == "proxy-1"


def test_exception_tree() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, AtrousError)
    for cls in (BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError,
                UnprocessableEntityError, ServiceUnavailableError, GatewayTimeoutError,
                InternalServerError):
        assert cls.__bases__ == (APIStatusError,)
    assert APIStatusError.__bases__ == (AtrousError,)
    doc = atrous_client._exceptions.__doc__ or ""
    for name in atrous_client._exceptions.__all__:
        assert name in doc, f"{name} is missing from the tree in the module docstring"


# Retries --------------------------------------------------------------------------------------

class Flaky:
    """Answers ``failures`` (responses or exceptions) first, then a proper server."""

    def __init__(self, *failures: httpx.Response | Exception) -> None:
        self.failures = list(failures)
        self.server = FakeServer()
        self.attempts: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        self.attempts.append(request)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return self.server(request)


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


# (status, Retry-After, lowest and highest acceptable sleep); None: no retry at all.
RETRY_AFTER_TABLE = [
    (503, "2", (2.0, 2.2)),
    (503, " 1.5 ", (1.5, 1.65)),
    (429, "0", (0.0, 0.0)),
    (504, "3", (3.0, 3.3)),
    (503, "<date +30 s>", (28.0, 33.1)),
    (503, "<date -30 s>", (0.0, 0.0)),
    (503, None, (0.25, 0.5)),          # no header: first backoff step, jittered
    (503, "soon", (0.25, 0.5)),        # unreadable: backoff
    (503, "-5", (0.0, 0.0)),
    (503, "3600", None),               # longer than we are willing to block: fail now
]


@pytest.mark.parametrize("status, retry_after, bounds", RETRY_AFTER_TABLE)
def test_retry_after_table(client_kind: str, sleeps: list[float], status: int,
                           retry_after: str | None,
                           bounds: tuple[float, float] | None) -> None:
    if retry_after == "<date +30 s>":
        retry_after = _http_date(30)
    elif retry_after == "<date -30 s>":
        retry_after = _http_date(-30)
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    flaky = Flaky(error_response(status, "busy", headers=headers))
    with make_client(client_kind, flaky, max_retries=2) as client:
        if bounds is None:
            with pytest.raises(APIStatusError) as caught:
                client.segment(random_pixels())
            assert caught.value.status_code == status
            assert len(flaky.attempts) == 1 and sleeps == []
            return
        result = client.segment(random_pixels())
    assert isinstance(result, Segmentation)
    assert len(flaky.attempts) == 2
    assert len(sleeps) == 1 and bounds[0] <= sleeps[0] <= bounds[1], sleeps


@pytest.mark.parametrize("status, code", [
    (400, "corrupt_image"), (404, "not_found"), (405, "method_not_allowed"),
    (413, "payload_too_large"), (415, "unsupported_media_type"), (422, "missing_image"),
    (500, "internal_error"),
])
def test_no_retry_on_other_errors(client_kind: str, sleeps: list[float], status: int,
                                  code: str) -> None:
    # Even with a Retry-After header: a bad image stays bad however often it is sent.
    flaky = Flaky(*[error_response(status, code, headers={"Retry-After": "1"})] * 5)
    with make_client(client_kind, flaky, max_retries=5) as client:
        with pytest.raises(APIStatusError) as caught:
            client.segment(random_pixels())
    assert caught.value.code == code
    assert len(flaky.attempts) == 1
    assert sleeps == []


def test_backoff_grows_with_jitter_then_gives_up(client_kind: str, sleeps: list[float]) -> None:
    flaky = Flaky(*[error_response(503, "queue_full")] * 10)
    with make_client(client_kind, flaky, max_retries=4) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            client.segment(random_pixels())
    assert caught.value.code == "queue_full"
    assert len(flaky.attempts) == 5
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        full = 0.5 * 2 ** attempt
        assert full / 2 <= delay <= full, (attempt, sleeps)


def test_jitter_spreads_delays(sleeps: list[float]) -> None:
    for _ in range(20):
        flaky = Flaky(error_response(503, "queue_full"))
        with make_client("sync", flaky, max_retries=1) as client:
            client.segment(random_pixels())
    assert len(set(sleeps)) > 10


@pytest.mark.parametrize("failure, error_class", [
    (httpx.ConnectError("connection refused"), APIConnectionError),
    (httpx.ReadError("connection reset"), APIConnectionError),
    (httpx.RemoteProtocolError("server hung up"), APIConnectionError),
    (httpx.ReadTimeout("read timed out"), APITimeoutError),
    (httpx.ConnectTimeout("connect timed out"), APITimeoutError),
])
def test_connection_errors_are_retried_then_raised(client_kind: str, sleeps: list[float],
                                                   failure: Exception,
                                                   error_class: type[Exception]) -> None:
    flaky = Flaky(failure)
    with make_client(client_kind, flaky, max_retries=2) as client:
        assert isinstance(client.segment(random_pixels()), Segmentation)  # one failure: ok
    assert len(flaky.attempts) == 2 and len(sleeps) == 1

    flaky = Flaky(*[failure] * 3)
    with make_client(client_kind, flaky, max_retries=2) as client:
        with pytest.raises(error_class) as caught:
            client.segment(random_pixels())
    assert type(caught.value) is error_class
    assert caught.value.status_code is None and caught.value.code is None
    assert "/segment" in caught.value.message
    assert len(flaky.attempts) == 3


def test_unsupported_protocol_is_not_retried(client_kind: str, sleeps: list[float]) -> None:
    flaky = Flaky(*[httpx.UnsupportedProtocol("no")] * 3)
    with make_client(client_kind, flaky, max_retries=2) as client:
        with pytest.raises(APIConnectionError):
            client.segment(random_pixels())
    assert len(flaky.attempts) == 1 and sleeps == []


def test_retries_keep_one_request_id(client_kind: str, sleeps: list[float]) -> None:
    flaky = Flaky(error_response(503, "not_ready"), httpx.ConnectError("refused"))
    with make_client(client_kind, flaky) as client:
        client.segment(random_pixels())
        client.segment(random_pixels())
    ids = [r.headers["X-Request-ID"] for r in flaky.attempts]
    assert len(ids) == 4
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# Configuration --------------------------------------------------------------------------------

def _host_seen(kind: str, monkeypatch: pytest.MonkeyPatch, env: str | None,
               base_url: str | None) -> str:
    if env is None:
        monkeypatch.delenv("ATROUS_URL", raising=False)
    else:
        monkeypatch.setenv("ATROUS_URL", env)
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"status": "ok"})

    transport = httpx.MockTransport(handler)
    client: Any = (AtrousClient(base_url, transport=transport) if kind == "sync"
                   else SyncView(AsyncAtrousClient(base_url, transport=transport)))
    with client:
        assert client.health() is True
    return str(seen[0])


def test_base_url_argument_beats_environment_beats_default(
        client_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _host_seen(client_kind, monkeypatch, "http://env.test:9000", None) == \
        "http://env.test:9000/healthz"
    assert _host_seen(client_kind, monkeypatch, "http://env.test:9000",
                      "http://arg.test/prefix") == "http://arg.test/prefix/healthz"
    assert _host_seen(client_kind, monkeypatch, None, None) == "http://127.0.0.1:8000/healthz"


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "ftp://example.com"}, "http"),
    ({"base_url": "not a url"}, "http"),
    ({"max_retries": -1}, "max_retries"),
])
def test_bad_configuration(client_kind: str, kwargs: dict[str, Any], match: str) -> None:
    cls = AtrousClient if client_kind == "sync" else AsyncAtrousClient
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_headers_and_timeout_reach_requests(client_kind: str, server: FakeServer) -> None:
    with make_client(client_kind, server, timeout=7.5,
                     headers={"Authorization": "Bearer t"}) as client:
        client.model_info()
    request = server.requests[-1]
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["User-Agent"] == f"atrous-client/{atrous_client.__version__}"
    assert request.extensions["timeout"]["read"] == 7.5


def test_context_managers_close_the_pool(server: FakeServer) -> None:
    with AtrousClient(transport=httpx.MockTransport(server)) as client:
        assert not client.is_closed
    assert client.is_closed
    assert repr(client) == "AtrousClient(base_url='http://127.0.0.1:8000')"

    async def use() -> AsyncAtrousClient:
        async with AsyncAtrousClient(transport=httpx.MockTransport(server)) as aclient:
            assert not aclient.is_closed
        return aclient
    assert asyncio.run(use()).is_closed


# Health and readiness -------------------------------------------------------------------------

def test_health_and_ready(client_kind: str) -> None:
    state = {"ready": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if state["ready"]:
            return httpx.Response(200, json={"status": "ready"})
        return error_response(503, "not_ready", headers={"Retry-After": "1"})

    with make_client(client_kind, handler) as client:
        assert client.health() is True
        assert client.ready() is False
        state["ready"] = True
        assert client.ready() is True


def test_probes_raise_when_nothing_answers(client_kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    with make_client(client_kind, handler) as client:
        with pytest.raises(APIConnectionError):
            client.health()
        with pytest.raises(APIConnectionError):
            client.ready()


def test_wait_until_ready_rides_over_refusals_and_503(client_kind: str,
                                                      sleeps: list[float]) -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"), error_response(503, "not_ready"),
        httpx.Response(200, json={"status": "ready"})]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with make_client(client_kind, handler) as client:
        client.wait_until_ready(timeout=30)
    assert seen == ["/readyz"] * 3
    assert len(sleeps) == 2 and all(0 < s <= 0.5 for s in sleeps)


def test_wait_until_ready_times_out(client_kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error_response(503, "not_ready")
    with make_client(client_kind, handler) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match="not ready within 0.3 s"):
            client.wait_until_ready(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2


# segment_many ---------------------------------------------------------------------------------

def _slow_server(kind: str, server: FakeServer,
                 delay_of: Callable[[httpx.Request], float]) -> tuple[Any, dict[str, int]]:
    """Wraps ``server`` with a per-request delay, counting requests in flight."""
    flight = {"now": 0, "max": 0}
    lock = threading.Lock()

    def enter() -> None:
        with lock:
            flight["now"] += 1
            flight["max"] = max(flight["max"], flight["now"])

    def leave() -> None:
        with lock:
            flight["now"] -= 1

    if kind == "sync":
        def handler(request: httpx.Request) -> httpx.Response:
            enter()
            try:
                time.sleep(delay_of(request))
                return server(request)
            finally:
                leave()
        return handler, flight

    async def async_handler(request: httpx.Request) -> httpx.Response:
        enter()
        try:
            await asyncio.sleep(delay_of(request))
            return server(request)
        finally:
            leave()
    return async_handler, flight


def _delay_by_red(request: httpx.Request) -> float:
    """Later images (larger red values) answer sooner, so completion order is reversed."""
    if request.url.path != "/segment":
        return 0.0
    try:
        with Image.open(io.BytesIO(request.content)) as image:
            red = int(np.asarray(image.convert("RGB"))[0, 0, 0])
    except Exception:
        return 0.0
    return max(0.0, 0.08 - 0.01 * red)


def test_segment_many_keeps_order_and_every_error(client_kind: str, server: FakeServer,
                                                  tmp_path: Path) -> None:
    images: list[Any] = [np.full((4, 5, 3), i, np.uint8) for i in range(8)]
    images[3] = b"this is not an image"          # the server answers 400 corrupt_image
    images[5] = tmp_path / "missing.png"         # fails on this side, before sending
    handler, _ = _slow_server(client_kind, server, _delay_by_red)
    with make_client(client_kind, handler) as client:
        results = client.segment_many(iter(images), concurrency=3)
    assert len(results) == 8
    assert isinstance(results[3], BadRequestError) and results[3].code == "corrupt_image"
    assert isinstance(results[5], FileNotFoundError)
    for i, result in enumerate(results):
        if i in (3, 5):
            continue
        assert isinstance(result, Segmentation), result
        np.testing.assert_array_equal(result.mask, np.full((4, 5), i % 21, np.uint8))
    assert server.count("/segment") == 7


@pytest.mark.parametrize("concurrency", [1, 3])
def test_segment_many_respects_concurrency(client_kind: str, server: FakeServer,
                                           concurrency: int) -> None:
    handler, flight = _slow_server(client_kind, server, lambda request: 0.03)
    with make_client(client_kind, handler) as client:
        client.model_info()  # keep the label fetch out of the count
        results = client.segment_many([random_pixels(seed=i) for i in range(9)],
                                      concurrency=concurrency)
    assert all(isinstance(r, Segmentation) for r in results)
    assert flight["max"] == concurrency


def test_segment_many_empty_and_bad_concurrency(client_kind: str, server: FakeServer) -> None:
    with make_client(client_kind, server) as client:
        assert client.segment_many([]) == []
        with pytest.raises(ValueError, match="concurrency"):
            client.segment_many([random_pixels()], concurrency=0)
    assert server.requests == []


def test_segment_many_builtin_progress_bar(client_kind: str, server: FakeServer,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    with make_client(client_kind, server) as client:
        client.segment_many([random_pixels()] * 3, progress=True)
        client.segment_many([random_pixels()] * 2)  # no progress unless asked
    err = capsys.readouterr().err
    assert "segment 0/3" in err and "segment 3/3 [####################] 100%" in err
    assert "/2" not in err
    assert err.endswith("\n")


def test_segment_many_uses_tqdm_when_installed(client_kind: str, server: FakeServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    with make_client(client_kind, server) as client:
        client.segment_many([random_pixels()] * 3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "image" in err  # tqdm's "3/3 [...] image/s"
    assert "####################" not in err


def test_server_timing_parsing() -> None:
    from atrous_client._base import parse_server_timing

    assert parse_server_timing(None) == {}
    assert parse_server_timing('a;dur=1, b;desc="x";dur=2.5, c, d;dur=x, ;dur=3') == {
        "a": 1.0, "b": 2.5}


def test_results_are_json_friendly() -> None:
    # dataclasses, so users can dump them without a custom encoder
    import dataclasses

    result = Segmentation(mask=np.zeros((2, 2), np.uint8), labels=("background",),
                          classes=atrous_client._types.classes_from_mask(
                              np.zeros((2, 2), np.uint8), ("background",)))
    dumped = json.dumps([dataclasses.asdict(c) for c in result.classes])
    assert json.loads(dumped) == [{"id": 0, "label": "background", "pixels": 4,
                                   "fraction": 1.0, "bbox": [0, 0, 2, 2], "confidence": None}]
