"""The Open Inference Protocol (KServe v2 / Triton REST), and Triton's model repository
extension.

``GET /v2``, ``/v2/health/live|ready``, ``/v2/models/{m}[/versions/{v}]`` (metadata),
``…/ready`` and ``POST …/infer`` (``app.api.inference_protocol`` says what it takes and
gives).  Errors here are the protocol's ``{"error": "<message>"}``, with the same statuses
as the rest of the API.  ``POST /v2/repository/index`` and ``/v2/repository/models/{m}/
load|unload`` exist only with ``ATROUS_ADMIN_KEYS``, and need one of those keys.
"""

import functools
import time
from importlib import metadata as package_metadata
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app.api import inference_protocol as protocol
from app.api.deps import ManagerDep, SettingsDep, VersionDep, model_path, version_path
from app.api.errors import NotSupportedError
from app.api.routes.segment import inference_options, work_estimate
from app.api.upload import read_image_bytes
from app.batcher import BatchResult
from app.repository.manager import VersionState
from model.inference import probabilities as probability_outputs
from model.inference.contract import probabilities_of
from model.inference.options import Tiling
from model.inference.pipeline import (
    OutputFormat,
    decode,
    decode_group,
    restore,
    start_group,
)

router = APIRouter(tags=["open inference protocol"])
health_router = APIRouter(tags=["open inference protocol"])
repository_router = APIRouter(tags=["model repository"])


class ProtocolError(BaseModel):
    """An error, in the protocol's shape."""

    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataV2(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions available now")
    platform: str = Field(description="atrous_<format>: savedmodel, openvino or onnx")
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="LOADING, READY, UNLOADING or UNAVAILABLE (failed)")
    reason: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {400: "an invalid inference request", 401: "no API key, or a wrong one",
                    403: "not an admin key", 404: "no such model or version",
                    409: "the default model cannot be unloaded; or the server runs several "
                         "worker processes (ATROUS_WORKERS): edit the repository instead",
                    413: "body or image too large", 415: "not a supported image",
                    422: "bad path values", 501: "the runtime gives no probabilities",
                    503: "not ready, shutting down, or queue full", 504: "deadline passed"}
    return {s: {"model": ProtocolError, "description": descriptions[s]} for s in statuses}


_VERSION_ROUTES = (("/v2/models/{model_name}", model_path),
                   ("/v2/models/{model_name}/versions/{model_version}", version_path))
# The protocol's state names (Triton's repository index) for ours.
_INDEX_STATES = {VersionState.LOADING: "LOADING", VersionState.AVAILABLE: "READY",
                 VersionState.UNLOADING: "UNLOADING", VersionState.FAILED: "UNAVAILABLE"}


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata(settings: SettingsDep) -> ServerMetadata:
    """Server metadata: name, version and protocol extensions."""
    extensions = ["binary_tensor_data"]
    if settings.accepted_admin_keys:
        extensions.append("model_repository")
    return ServerMetadata(name="atrous", version=_version(), extensions=extensions)


@health_router.get("/v2/health/live", response_class=Response,
                   responses={200: {"description": "the process runs"}})
async def live() -> Response:
    """Liveness (as /healthz)."""
    return Response(status_code=200)


@health_router.get("/v2/health/ready", response_class=Response,
                   responses={200: {"description": "ready"}, **_errors(503)})
async def ready(manager: ManagerDep) -> Response:
    """Readiness (as /readyz)."""
    manager.require_ready()
    return Response(status_code=200)


async def model_metadata(held: VersionDep, manager: ManagerDep) -> ModelMetadataV2:
    """The model's versions, platform, input and outputs."""
    metadata = held.service.metadata
    available = sorted(v.version for v in manager.models.get(held.model, {}).values()
                       if v.state is VersionState.AVAILABLE)
    image = [TensorMetadata(name=protocol.IMAGE_INPUT, datatype="BYTES", shape=[1])]
    outputs = [TensorMetadata(name=name, datatype="UINT8", shape=[1, -1, -1])
               for name in protocol.OUTPUTS]
    return ModelMetadataV2(name=held.model, versions=[str(v) for v in available],
                           platform=f"atrous_{metadata.format}", inputs=image, outputs=outputs)


async def model_ready(held: VersionDep) -> Response:
    """200 when the model (or the version) is available to infer."""
    return Response(status_code=200)


async def infer(request: Request, held: VersionDep, settings: SettingsDep) -> Response:
    """One encoded image in (BYTES ``image``), the mask (and confidence) out."""
    arrived = time.monotonic()
    service = held.service
    batcher = service.require_ready()
    batcher.check_capacity()
    metadata = service.metadata
    # base64 in JSON is 4/3 of the image, plus the JSON around it
    body = await read_image_bytes(request, settings.max_upload_bytes * 4 // 3 + 65536)
    parsed = protocol.parse_request(body, request.headers.get(protocol.HEADER_LENGTH))
    del body
    given = parsed.options
    try:
        tiling = Tiling(_text(given.get("tiling")) or Tiling.off.value)
    except ValueError:
        raise protocol.InferenceRequestError(
            f"parameter tiling must be {', '.join(t.value for t in Tiling)}") from None
    options = inference_options(metadata, tiling, _text(given.get("scales")),
                                bool(given.get("flip", False)), _text(given.get("classes")),
                                settings.tile_max_side)
    want_confidence = protocol.CONFIDENCE_OUTPUT in parsed.outputs
    remaining = lambda: max(settings.request_timeout_s - (time.monotonic() - arrived), 0)  # noqa: E731
    # The work's memory is reserved before decoding, as /segment's (app.budget).
    output = OutputFormat.confidence if want_confidence else OutputFormat.png
    estimate = work_estimate(parsed.image, metadata, options, output, settings)
    async with service.budget.reserve(estimate, timeout=remaining()):
        tensors: dict[str, Any] = {}
        if want_confidence or not options.single_pass:
            assert service.loaded is not None
            if probabilities_of(service.loaded.segmenter) is None:
                raise NotSupportedError("this model's runtime gives no class probabilities, which "
                                        "tiling, scales, flip and the confidence output need")
            group = await service.run_blocking(functools.partial(
                decode_group, parsed.image, max_pixels=settings.max_image_pixels,
                input_size=metadata.input_size, options=options,
                max_model_pixels=settings.max_inference_pixels, max_tiles=settings.max_queue))
            # Each result blended in as it arrives, as /segment does: the memory reserved
            # above counts one tile row, not every tile's probabilities.
            resolver = start_group(group, options)

            async def fold(index: int, result: BatchResult) -> None:
                await service.run_blocking(resolver.add, index, result.output)

            await batcher.submit_group(group.canvases, group.sizes, timeout=remaining(),
                                       consume=fold)
            rendered = await service.run_blocking(resolver.result)
            tensors = {protocol.MASK_OUTPUT: rendered.mask,
                       protocol.CONFIDENCE_OUTPUT: rendered.confidence}
        else:
            prepared = await service.run_blocking(functools.partial(
                decode, parsed.image, max_pixels=settings.max_image_pixels,
                input_size=metadata.input_size, keep_image=False,
                fast_jpeg=settings.fast_jpeg_decode))
            result = await batcher.submit(prepared.canvas, prepared.valid, timeout=remaining())
            tensors = {protocol.MASK_OUTPUT: probability_outputs.filter_mask(
                restore(result.labels, prepared), options.classes)}
    chosen = {name: tensors[name][None] for name in parsed.outputs}
    content, header_length = protocol.encode_response(
        model=held.model, version=held.version, request_id=parsed.id, tensors=chosen,
        binary=parsed.binary)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={protocol.HEADER_LENGTH: str(header_length)})


_INFER_BODY = {"requestBody": {"required": True, "description": (
    "an inference request: JSON, or JSON followed by binary tensor data "
    f"(`{protocol.HEADER_LENGTH}`)"), "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_INFER_OK: dict[int | str, dict[str, Any]] = {200: {
    "description": "the outputs: JSON, or JSON followed by binary data",
    "content": {"application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

for _path, _documents in _VERSION_ROUTES:
    _kind = "version" if _documents is version_path else "model"
    router.add_api_route(_path, model_metadata, methods=["GET"], response_model=ModelMetadataV2,
                         dependencies=[Depends(_documents)], responses=_errors(404, 503),
                         name=f"v2_model_metadata_{_kind}")
    router.add_api_route(_path + "/ready", model_ready, methods=["GET"], response_class=Response,
                         dependencies=[Depends(_documents)],
                         responses={200: {"description": "ready"}, **_errors(404, 503)},
                         name=f"v2_model_ready_{_kind}")
    router.add_api_route(_path + "/infer", infer, methods=["POST"], response_class=Response,
                         dependencies=[Depends(_documents)], openapi_extra=_INFER_BODY,
                         responses={**_INFER_OK, **_errors(400, 404, 413, 415, 501, 503, 504)},
                         name=f"v2_infer_{_kind}")


# --- Triton's model repository extension (admin keys) ----------------------------------
@repository_router.post("/v2/repository/index", response_model=list[RepositoryEntry],
                        responses=_errors(401, 403))
async def repository_index(manager: ManagerDep) -> list[RepositoryEntry]:
    """Every model version the server knows and its state."""
    return [RepositoryEntry(name=v.model, version=str(v.version), state=_INDEX_STATES[v.state],
                            reason=v.reason or "")
            for v in sorted(manager.versions(), key=lambda v: (v.model, v.version))]


@repository_router.post("/v2/repository/models/{model_name}/load", response_class=Response,
                        responses={200: {"description": "loaded (or already loaded)"},
                                   **_errors(400, 401, 403, 404, 409)})
async def load_model(model_name: str, manager: ManagerDep) -> Response:
    """Reads the model from the repository and loads the versions its policy wants (a failed
    one is retried); the old version serves until the new one is warm."""
    await manager.load_model(model_name)
    return Response(status_code=200)


@repository_router.post("/v2/repository/models/{model_name}/unload", response_class=Response,
                        responses={200: {"description": "unloaded"},
                                   **_errors(401, 403, 404, 409)})
async def unload_model(model_name: str, manager: ManagerDep) -> Response:
    """Unloads every version once its in-flight requests finish (not the default model)."""
    await manager.unload_model(model_name)
    return Response(status_code=200)


def _text(value: str | bool | None) -> str | None:
    return value if isinstance(value, str) else None


@functools.cache
def _version() -> str:
    # The package's own version (the server may not import `model` itself: tests/test_layout).
    try:
        return package_metadata.version("atrous")
    except package_metadata.PackageNotFoundError:
        return "0"

