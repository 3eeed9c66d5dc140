"""SDK: the results ``segment`` and ``model_info`` return, decoded from each format."""

from __future__ import annotations

import dataclasses
import io
import json

import atrous_client
import httpx
import numpy as np
import pytest
from atrous_client import (
    AtrousError,
    Segmentation,
)
from PIL import Image

from tests.client.fakes import (
    LABELS,
    MODEL_JSON,
    FakeServer,
    jpeg_with_orientation,
    make_client,
    mask_png,
    png_bytes,
    random_pixels,
)

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
    data = jpeg_with_orientation()  # stored 16×8, displayed 8×16
    result = Segmentation(mask=np.zeros((16, 8), np.uint8), labels=(), classes=())
    assert result.overlay(data).size == (8, 16)




def test_server_timing_parsing() -> None:
    from atrous_client._base import parse_server_timing

    assert parse_server_timing(None) == {}
    assert parse_server_timing('a;dur=1, b;desc="x";dur=2.5, c, d;dur=x, ;dur=3') == {
        "a": 1.0, "b": 2.5}


def test_results_are_json_friendly() -> None:
    # dataclasses, so users can dump them without a custom encoder

    result = Segmentation(mask=np.zeros((2, 2), np.uint8), labels=("background",),
                          classes=atrous_client._types.classes_from_mask(
                              np.zeros((2, 2), np.uint8), ("background",)))
    dumped = json.dumps([dataclasses.asdict(c) for c in result.classes])
    assert json.loads(dumped) == [{"id": 0, "label": "background", "pixels": 4,
                                   "fraction": 1.0, "bbox": [0, 0, 2, 2], "confidence": None}]
