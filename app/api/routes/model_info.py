"""GET /v1/model: what is being served, and how."""

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.api.schemas import Batching, ClassInfo, ErrorEnvelope, ModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ModelInfo,
            responses={503: {"model": ErrorEnvelope, "description": "model not loaded yet"}})
async def model_info(service: ServiceDep) -> ModelInfo:
    """The served model: backbone, classes and colours, weights, runtime, device, batching."""
    metadata = service.metadata
    assert service.loaded is not None
    settings = service.settings
    segmenter = service.loaded.segmenter
    return ModelInfo(
        backbone=metadata.backbone, output_stride=metadata.output_stride,
        input_size=metadata.input_size, num_classes=metadata.num_classes, head=metadata.head,
        classes=[ClassInfo(id=i, label=label, color=list(color)) for i, (label, color)
                 in enumerate(zip(metadata.labels, metadata.colors, strict=True))],
        weights=metadata.weights, trained=metadata.trained, precision=metadata.precision,
        format=metadata.format, device=segmenter.device, runtime=segmenter.runtime,
        runtime_version=segmenter.runtime_version,
        inference_precision=segmenter.inference_precision.name,
        inference_precision_reason=segmenter.inference_precision.reason,
        batching=Batching(max_batch_size=settings.max_batch_size,
                          max_batch_delay_ms=settings.max_batch_delay_ms,
                          max_queue=settings.max_queue,
                          request_timeout_s=settings.request_timeout_s),
    )
