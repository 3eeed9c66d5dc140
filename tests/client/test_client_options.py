"""SDK: the options beyond the single pass (query parameters) and the probabilities result."""

import asyncio
import io

import httpx
import numpy as np
import pytest
from atrous_client import AsyncAtrousClient, AtrousClient
from PIL import Image

from model.inference import probabilities as outputs

LABELS = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
          "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
          "sheep", "sofa", "train", "tvmonitor"]
MODEL_JSON = {"backbone": "cifar_resnet_20", "output_stride": 16, "input_size": 129,
              "num_classes": 21, "classes": [{"id": i, "label": name, "color": [i, i, i]}
                                             for i, name in enumerate(LABELS)]}


def fake_server(seen: list[httpx.Request]):
    """/segment?format=probabilities: person (15) on the left half, 80 % sure; rest bg."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        seen.append(request)
        mask = np.zeros((4, 6), np.uint8)
        mask[:, :3] = 15
        planes = np.zeros((4, 6, 2), np.float32)
        planes[..., 1] = np.where(mask == 15, 0.8, 0.1)
        planes[..., 0] = 1 - planes[..., 1]
        if request.url.params["format"] == "png":
            buffer = io.BytesIO()
            Image.fromarray(mask).save(buffer, format="PNG")
            return httpx.Response(200, content=buffer.getvalue(),
                                  headers={"Content-Type": "image/png"})
        body = outputs.probabilities_npz(outputs.quantize(planes), (0, 15), LABELS, mask)
        return httpx.Response(200, content=body, headers={
            "Content-Type": outputs.NPZ_MEDIA_TYPE, "Server-Timing": "tiles;dur=6, scales;dur=2"})

    return handler


def image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_options_travel_as_query_parameters_and_probabilities_come_back_as_numpy():
    seen: list[httpx.Request] = []
    with AtrousClient("http://atrous.test", transport=httpx.MockTransport(fake_server(seen))) as c:
        result = c.segment(image(), format="probabilities", tiling="on", scales=(0.5, 1.0),
                           flip=True, classes=["person", 0])
    params = dict(seen[0].url.params)
    assert params == {"format": "probabilities", "tiling": "on", "scales": "0.5,1",
                      "flip": "true", "classes": "person,0"}
    assert seen[0].headers["accept"] == "application/x-npz"
    assert result.class_ids == (0, 15)
    assert result.probabilities.shape == (4, 6, 2) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities.sum(-1), 1.0, atol=2 / 255)
    np.testing.assert_allclose(result.probability("person")[:, :3], 0.8, atol=1 / 255)
    np.testing.assert_allclose(result.confidence, np.where(result.mask == 15, 0.8, 0.9),
                               atol=1 / 255)
    assert {c.label: c.confidence for c in result.classes} == pytest.approx(
        {"background": 0.9, "person": 0.8}, abs=1 / 255)
    assert result.timings == {"tiles": 6.0, "scales": 2.0}
    with pytest.raises(KeyError, match="not requested"):
        result.probability("dog")


def test_defaults_send_only_the_format_and_bad_options_fail_before_sending():
    seen: list[httpx.Request] = []
    client = AtrousClient("http://atrous.test", transport=httpx.MockTransport(fake_server(seen)))
    with client:
        client.segment(image(), format="probabilities")
        assert dict(seen[0].url.params) == {"format": "probabilities"}
        for bad in ({"tiling": "sometimes"}, {"scales": "0.5,1"}, {"scales": ()},
                    {"classes": "person"}):
            with pytest.raises(ValueError):
                client.segment(image(), **bad)
        with pytest.raises(TypeError):
            client.segment_many([image()], tilling="on")
        assert len(seen) == 1
        png = client.segment(image(), format="png", tiling="auto")
    assert dict(seen[-1].url.params) == {"format": "png", "tiling": "auto"}
    with pytest.raises(ValueError, match='format="probabilities"'):
        png.probabilities  # noqa: B018 - the accessor raises


def test_the_async_client_sends_the_same_options():
    seen: list[httpx.Request] = []

    async def main():
        transport = httpx.MockTransport(fake_server(seen))
        async with AsyncAtrousClient("http://atrous.test", transport=transport) as client:
            return await client.segment_many([image(), image()], format="probabilities",
                                             tiling="on", classes=[15])

    results = asyncio.run(main())
    assert [r.class_ids for r in results] == [(0, 15), (0, 15)]
    assert {dict(r.url.params)["classes"] for r in seen} == {"15"}
