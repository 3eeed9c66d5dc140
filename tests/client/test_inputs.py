"""SDK: what ``segment`` sends for each kind of input, and what it refuses before sending."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.client.fakes import (
    FakeServer,
    expected_mask,
    jpeg_with_orientation,
    make_client,
    random_pixels,
)

# Inputs ---------------------------------------------------------------------------------------

ENCODED_INPUTS = ["str_path", "pathlib_path", "bytes", "bytearray", "bytesio", "open_file"]
DECODED_INPUTS = ["pil_rgb", "pil_rgba", "numpy_rgb", "numpy_gray"]


@pytest.mark.parametrize("input_kind", ENCODED_INPUTS)
def test_encoded_inputs_are_sent_byte_for_byte(client_kind: str, server: FakeServer,
                                               tmp_path: Path, input_kind: str) -> None:
    # A JPEG with an EXIF orientation: only an untouched upload lets the server rotate it.
    data = jpeg_with_orientation()
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
