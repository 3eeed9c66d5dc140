"""SDK: ``segment_many``: order, per-item errors, concurrency and progress."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from atrous_client import (
    BadRequestError,
    Segmentation,
)
from PIL import Image

from tests.client.fakes import (
    FakeServer,
    make_client,
    random_pixels,
)

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
