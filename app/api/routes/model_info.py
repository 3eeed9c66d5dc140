"""GET /v1/model (the default model) and GET /v1/models/{name}[/versions/{v}]: what is
served, and how."""

from pathlib import PurePath

from fastapi import APIRouter

from app.api.deps import VersionDep
from app.api.schemas import Batching, ClassInfo, ErrorEnvelope, ModelInfo

router = APIRouter(tags=["model"])

RESPONSES: dict[int | str, dict] = {
    404: {"model": ErrorEnvelope, "description": "no such model or version"},
    503: {"model": ErrorEnvelope, "description": "model not loaded yet"},
}


@router.get("/v1/model", response_model=ModelInfo, responses=RESPONSES)
async def model_info(held: VersionDep) -> ModelInfo:
    """The served model: backbone, classes and colours, weights, runtime, device, batching."""
    service = held.service
    metadata = service.metadata
    assert service.loaded is not None
    settings = service.settings
    segmenter = service.loaded.segmenter
    return ModelInfo(
        name=held.model, version=held.version, fingerprint=held.fingerprint,
        backbone=metadata.backbone, output_stride=metadata.output_stride,
        input_size=metadata.input_size, num_classes=metadata.num_classes, head=metadata.head,
        classes=[ClassInfo(id=i, label=label, color=list(color)) for i, (label, color)
                 in enumerate(zip(metadata.labels, metadata.colors, strict=True))],
        weights=public_weights(metadata.weights), trained=metadata.trained,
        precision=metadata.precision,
        format=metadata.format, device=segmenter.device, runtime=segmenter.runtime,
        runtime_version=segmenter.runtime_version,
        inference_precision=segmenter.inference_precision.name,
        inference_precision_reason=segmenter.inference_precision.reason,
        batching=Batching(max_batch_size=settings.max_batch_size,
                          max_batch_delay_ms=settings.max_batch_delay_ms,
                          max_queue=settings.max_queue,
                          request_timeout_s=settings.request_timeout_s),
    )


def public_weights(weights: str) -> str:
    """The weights' name without the server's directories (a checkpoint's file name)."""
    return PurePath(weights).name if ("/" in weights or "\\" in weights) else weights
