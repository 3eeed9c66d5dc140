"""The probabilities path in-process, with fake runtimes: one without probabilities (501 or
JSON without confidences) and a blocked one, to see a full queue refuse a tiled image (503)
before any of its tiles runs."""

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
from tests.server.test_app import METADATA, ConstantSegmenter, settings, wait_for

SIZE = METADATA.input_size  # 33


class ProbabilitySegmenter(ConstantSegmenter):
    """Person (15) everywhere with probability 0.9; the model thread can be held."""

    def __init__(self) -> None:
        super().__init__(label=15)
        self.release = threading.Event()
        self.release.set()
        self.seen: list[int] = []  # first pixel of every input the model ran

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        self.release.wait(10)
        self.seen += images[:, 0, 0, 0].tolist()
        return super().__call__(images, sizes)

    def probabilities(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        self.release.wait(10)
        self.seen += images[:, 0, 0, 0].tolist()
        out = np.full(images.shape[:3] + (21,), 0.1 / 20, np.float32)
        out[..., 15] = 0.9
        return out


def png_of(width: int, height: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


async def with_app(segmenter, body, **overrides):
    app = create_app(settings(**overrides), loader=lambda _: LoadedModel(segmenter, Path("/f")),
                     handle_signals=False)
    async with app.router.lifespan_context(app):
        await wait_for(lambda: app.state.models.phase is Phase.READY)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await body(client)


def test_a_runtime_without_probabilities_answers_501_and_json_without_confidences():
    async def body(client):
        return {params: await client.post("/segment", params=dict(params),
                                          content=png_of(20, 10, 255))
                for params in ((("tiling", "on"),), (("format", "probabilities"),),
                               (("flip", "true"),), (("format", "json"),))}

    responses = asyncio.run(with_app(ConstantSegmenter(), body))
    for params, response in responses.items():
        if params == (("format", "json"),):
            assert response.status_code == 200, response.text
            assert [c["confidence"] for c in response.json()["classes"]] == [None]
        else:
            assert response.status_code == 501, (params, response.text)
            assert response.json()["error"]["code"] == "not_supported"


def test_json_confidences_and_a_full_queue_refuses_a_tiled_image_before_any_tile_runs():
    segmenter = ProbabilitySegmenter()

    async def body(client):
        summary = await client.post("/segment", params={"format": "json"},
                                    content=png_of(20, 10, 255))
        segmenter.release.clear()  # the model is busy: images pile up in the queue
        singles = [asyncio.create_task(client.post("/segment", content=png_of(20, 10, v)))
                   for v in (1, 2, 3)]
        await asyncio.sleep(0.3)  # one on the model, two queued: room for two of four
        # 60 x 33 at S = 33 is three tiles: more than the room left, fewer than the queue
        tiled = await client.post("/segment", params={"tiling": "on"},
                                  content=png_of(60, 33, 200))
        too_big = await client.post("/segment", params={"tiling": "on", "flip": "true"},
                                    content=png_of(60, 33, 200))
        segmenter.release.set()
        await asyncio.gather(*singles)
        return summary, tiled, too_big

    summary, tiled, too_big = asyncio.run(with_app(segmenter, body, max_batch_size=1,
                                                   max_queue=4))
    assert summary.status_code == 200, summary.text
    assert abs(summary.json()["classes"][0]["confidence"] - 0.9) <= 1 / 255  # uint8 steps
    assert tiled.status_code == 503, tiled.text
    assert tiled.json()["error"]["code"] == "queue_full" and "retry-after" in tiled.headers
    assert "3 model inputs" in tiled.json()["error"]["message"]
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_much_work"
    assert 200 not in segmenter.seen  # no tile of the refused images ever reached the model
