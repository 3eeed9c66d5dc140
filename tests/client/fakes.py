"""The SDK tests' fake server and helpers, shared by tests/client/test_*.py.

Every behaviour of the clients runs twice, through ``AtrousClient`` and
``AsyncAtrousClient`` (the ``client_kind`` fixture in conftest.py, with ``make_client``),
so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import threading
from collections.abc import Callable
from typing import Any

import atrous_client
import httpx
import numpy as np
from atrous_client import (
    AsyncAtrousClient,
    AtrousClient,
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


def random_pixels(height: int = 12, width: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg_with_orientation() -> bytes:
    """A small JPEG stored 16×8 whose EXIF orientation says: display it 8×16."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    buffer = io.BytesIO()
    Image.fromarray(random_pixels(8, 16)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()
