"""POST /segment: decode -> batch -> encode."""

import asyncio
import functools
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import leased
from app.api.errors import NotSupportedError, ValidationError
from app.api.schemas import ErrorEnvelope, Segmentation
from app.api.upload import IMAGE_FIELD, read_image_bytes
from app.batcher import Batcher, BatchResult
from app.service import Service
from app.settings import Settings
from model.inference.contract import ModelMetadata, probabilities_of
from model.inference.imaging import peek_size
from model.inference.options import InferenceOptions, Tiling, parse_classes
from model.inference.pipeline import (
    MEDIA_TYPES,
    OutputFormat,
    decode,
    decode_group,
    needs_group,
    render,
    render_resolved,
    start_group,
    working_bytes,
)
from model.inference.tiling import parse_scales

router = APIRouter(tags=["segmentation"])
T = TypeVar("T")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
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


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Segmentation,
          "description": "the mask: palette PNG (`format=png`), JSON (`format=json`), a "
                         "JPEG overlay (`format=overlay`), probability planes as a numpy .npz "
                         "(`format=probabilities`) or a greyscale confidence PNG "
                         "(`format=confidence`)",
          "content": {"image/png": _BINARY, "image/jpeg": _BINARY,
                      "application/x-npz": _BINARY}},
    400: _error("empty body, or a corrupt image"),
    413: _error("body over the upload limit, image over the pixel limit, or tiling/scales/"
                "flip needing more model input (or memory) than the server allows"),
    415: _error("not a supported image format"),
    422: _error("no `image` field in the multipart body, or bad query values"),
    500: _error("internal error, or the model failed on this request's batch"),
    501: _error("the model's runtime gives no class probabilities"),
    503: _error("model not ready, shutting down, queue full or memory budget in use (see "
                "Retry-After)"),
    504: _error("the request deadline passed"),
}


class ClientGone(Exception):
    """The client closed the connection while its image waited."""


@router.post("/segment", response_class=Response, responses=RESPONSES,
             openapi_extra={"requestBody": REQUEST_BODY})
async def segment(
    request: Request,
    output: Annotated[OutputFormat, Query(
        alias="format",
        description="png, json, overlay, probabilities or confidence")] = OutputFormat.png,
    tiling: Annotated[Tiling, Query(
        description="off (DeepLab's single pass), on (overlapping tiles at native "
                    "resolution) or auto (tiles when the longer side > 2 x input size)")
    ] = Tiling.off,
    scales: Annotated[str | None, Query(
        description="test-time scales whose probabilities are averaged, e.g. "
                    "0.5,0.75,1,1.25,1.5,1.75", examples=["0.75,1,1.25"])] = None,
    flip: Annotated[bool, Query(description="also run the mirrored image")] = False,
    classes: Annotated[str | None, Query(
        description="labels or ids to keep; other classes become background",
        examples=["person,dog"])] = None,
) -> Response:
    """Segment one image; returns a mask (PNG), a JSON summary, an overlay, probabilities or
    confidences."""
    settings: Settings = request.app.state.settings
    with leased(request) as held:  # not a dependency: see app.api.deps
        return await _segment(request, held.service, settings, output, tiling, scales, flip,
                              classes)


async def _segment(request: Request, service: Service, settings: Settings,
                   output: OutputFormat, tiling: Tiling, scales: str | None, flip: bool,
                   classes: str | None) -> Response:
    arrived = time.monotonic()
    batcher = service.require_ready()
    batcher.check_capacity()  # under overload, refuse before reading and decoding
    metadata = service.metadata
    options = inference_options(metadata, tiling, scales, flip, classes, settings.tile_max_side)
    grouped = needs_group(options, output)
    if grouped and probabilities_of(service.loaded.segmenter if service.loaded else None) is None:
        if output is not OutputFormat.json or not options.single_pass:
            raise NotSupportedError("this model's runtime gives no class probabilities, which "
                                    "tiling, scales, flip and this format need")
        grouped = False  # json without confidences
    data = await read_image_bytes(request, settings.max_upload_bytes)
    # The work's memory is reserved before decoding: over the budget it waits or is refused.
    estimate = work_estimate(data, metadata, options, output, settings)
    remaining = settings.request_timeout_s - (time.monotonic() - arrived)
    async with service.budget.reserve(estimate, timeout=remaining):
        # The batcher checked on arrival serves the request to its end: a drain that starts
        # meanwhile refuses new requests, not this one (it is in flight).
        if grouped:
            return await _segment_group(request, service, batcher, settings, data, output,
                                        options, arrived)
        return await _segment_single(request, service, batcher, settings, data, output,
                                     options, arrived)


async def _segment_single(request: Request, service: Service, batcher: Batcher,
                          settings: Settings, data: bytes, output: OutputFormat,
                          options: InferenceOptions, arrived: float) -> Response:
    """DeepLab's single pass: one letterboxed canvas through the batcher, labels back."""
    metadata = service.metadata
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
    body = await service.run_blocking(render, result.labels, prepared, output, metadata,
                                      options.classes)
    encoded = time.monotonic()

    stages = {"decode": decoded - started, "queue": result.queue_s,
              "inference": result.inference_s, "encode": encoded - inferred}
    return _response(service, body, output, stages, {})


def work_estimate(data: bytes, metadata: ModelMetadata, options: InferenceOptions,
                  output: OutputFormat, settings: Settings) -> int:
    """The memory a request's work will need (``app.budget``), from the image's header,
    before decoding: an unreadable or over-limit image costs nothing, as decoding refuses it
    first (400, 413 image_too_large)."""
    size = peek_size(data) or (1, 1)
    if size[0] * size[1] > settings.max_image_pixels:
        size = (1, 1)
    return working_bytes(size, metadata.input_size, metadata.num_classes, options, output,
                         batch_size=settings.max_batch_size,
                         max_model_pixels=settings.max_inference_pixels,
                         max_tiles=settings.max_queue)


def inference_options(metadata: ModelMetadata, tiling: Tiling, scales: str | None, flip: bool,
             classes: str | None, tile_max_side: int) -> InferenceOptions:
    """The query's options, each bad value a 422 naming it."""
    try:
        wanted = parse_classes(classes, metadata.labels) if classes is not None else None
    except ValueError as e:
        raise ValidationError(f"query.classes: {e}") from None
    try:
        parsed = parse_scales(scales) if scales is not None else (1.0,)
    except ValueError as e:
        raise ValidationError(f"query.scales: {e}") from None
    return InferenceOptions(tiling=tiling, scales=parsed, flip=flip, classes=wanted,
                            tile_max_side=tile_max_side)


async def _segment_group(request: Request, service: Service, batcher: Batcher,
                         settings: Settings, data: bytes, output: OutputFormat,
                         options: InferenceOptions, arrived: float) -> Response:
    """The probabilities path: every tile / scale / flip of the image through the batcher
    as one group (all queued or none), each result blended in as it arrives (memory in
    proportion to the output, not to the tiles), then rendered."""
    metadata = service.metadata
    started = time.monotonic()
    group = await service.run_blocking(functools.partial(
        decode_group, data, max_pixels=settings.max_image_pixels,
        input_size=metadata.input_size, options=options,
        max_model_pixels=settings.max_inference_pixels, max_tiles=settings.max_queue))
    del data
    decoded = time.monotonic()
    remaining = settings.request_timeout_s - (decoded - arrived)
    resolver = start_group(group, options, with_planes=output is OutputFormat.probabilities)

    async def fold(index: int, result: BatchResult) -> None:
        await service.run_blocking(resolver.add, index, result.output)

    try:
        results = await _unless_client_leaves(request, batcher.submit_group(
            group.canvases, group.sizes, timeout=max(remaining, 0), consume=fold))
    except ClientGone:
        service.metrics.rejections.labels(reason="client_gone").inc()
        return Response(status_code=499)
    inferred = time.monotonic()
    rendered = await service.run_blocking(resolver.result)
    body = await service.run_blocking(render_resolved, rendered, group, output, metadata)
    encoded = time.monotonic()
    queued = max(r.queue_s for r in results)
    stages = {"decode": decoded - started, "queue": queued,
              "inference": inferred - decoded - queued, "encode": encoded - inferred}
    return _response(service, body, output, stages,
                     {"tiles": len(results), "scales": len(options.scales)})


def _response(service: Service, body: bytes, output: OutputFormat,
              stages: dict[str, float], counts: dict[str, int]) -> Response:
    """The body with ``Server-Timing``: stage durations (ms), then counts (tiles, scales)."""
    for stage, seconds in stages.items():
        service.metrics.stage_latency.labels(stage=stage).observe(seconds)
    timing = ", ".join([f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in stages.items()]
                       + [f"{name};dur={count}" for name, count in counts.items()])
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

