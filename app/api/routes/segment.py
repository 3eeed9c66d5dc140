"""POST /segment: decode -> batch -> encode."""

import asyncio
import functools
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.schemas import ErrorEnvelope, Segmentation
from app.api.upload import IMAGE_FIELD, read_image_bytes
from model.inference.pipeline import MEDIA_TYPES, OutputFormat, decode, render

router = APIRouter(tags=["segmentation"])
T = TypeVar("T")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "the image: a multipart `image` file field, or the raw bytes "
                   "(PNG, JPEG, WebP, GIF, BMP, TIFF; sniffed from the bytes)",
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": [IMAGE_FIELD],
            "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}},
        "application/octet-stream": _BINARY,
        "image/*": _BINARY,
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Segmentation,
          "description": "the mask: palette PNG (`format=png`), JSON (`format=json`) or a "
                         "JPEG overlay (`format=overlay`)",
          "content": {"image/png": _BINARY, "image/jpeg": _BINARY}},
    400: _error("empty body, or a corrupt image"),
    413: _error("body over the upload limit, or image over the pixel limit"),
    415: _error("not a supported image format"),
    422: _error("no `image` field in the multipart body, or bad query values"),
    500: _error("internal error"),
    503: _error("model not ready, shutting down, or queue full (see Retry-After)"),
    504: _error("the request deadline passed"),
}


class ClientGone(Exception):
    """The client closed the connection while its image waited."""


@router.post("/segment", response_class=Response, responses=_RESPONSES,
             openapi_extra={"requestBody": _REQUEST_BODY})
async def segment(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    output: Annotated[OutputFormat, Query(alias="format",
                                          description="png, json or overlay")] = OutputFormat.png,
) -> Response:
    """Segment one image; returns a palette PNG mask, a JSON summary or a JPEG overlay."""
    arrived = time.monotonic()
    batcher = service.require_ready()
    batcher.check_capacity()  # under overload, refuse before reading and decoding
    metadata = service.metadata
    data = await read_image_bytes(request, settings.max_upload_bytes)

    started = time.monotonic()
    prepared = await service.run_blocking(functools.partial(
        decode, data, max_pixels=settings.max_image_pixels, input_size=metadata.input_size,
        keep_image=output is OutputFormat.overlay, fast_jpeg=settings.fast_jpeg_decode))
    del data
    decoded = time.monotonic()

    remaining = settings.request_timeout_s - (decoded - arrived)
    try:
        result = await _unless_client_leaves(
            request, batcher.submit(prepared.canvas, prepared.valid, timeout=max(remaining, 0)))
    except ClientGone:
        service.metrics.rejections.labels(reason="client_gone").inc()
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    inferred = time.monotonic()
    body = await service.run_blocking(render, result.labels, prepared, output, metadata)
    encoded = time.monotonic()

    stages = {"decode": decoded - started, "queue": result.queue_s,
              "inference": result.inference_s, "encode": encoded - inferred}
    for stage, seconds in stages.items():
        service.metrics.stage_latency.labels(stage=stage).observe(seconds)
    timing = ", ".join(f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in stages.items())
    return Response(body, media_type=MEDIA_TYPES[output], headers={"Server-Timing": timing})


async def _unless_client_leaves(request: Request, awaitable: Awaitable[T]) -> T:
    """Awaits ``awaitable``; if the client disconnects first, cancels it (so the batcher
    drops the image before inference) and raises ``ClientGone``."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        watcher.cancel()
    if work.done():
        return work.result()
    work.cancel()
    raise ClientGone()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

