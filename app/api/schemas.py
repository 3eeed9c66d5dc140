"""Response bodies, as pydantic models: they document the API in OpenAPI (/docs)."""

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. corrupt_image")
    message: str = Field(description="human-readable explanation")


class ErrorEnvelope(BaseModel):
    """Every error response."""

    error: ErrorDetail
    request_id: str | None


class Status(BaseModel):
    status: str


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE, column-major")


class ClassSummary(BaseModel):
    id: int
    label: str
    pixels: int
    fraction: float
    bbox: list[int] = Field(description="[x_min, y_min, width, height]")
    rle: RLE
    confidence: float | None = Field(
        None, description="mean probability (0..1) of this class over its pixels; null if the "
                          "model's runtime gives no probabilities")


class ModelSummary(BaseModel):
    backbone: str
    output_stride: int
    input_size: int
    trained: bool


class Segmentation(BaseModel):
    """The ``format=json`` body of POST /segment."""

    width: int
    height: int
    model: ModelSummary
    classes: list[ClassSummary] = Field(description="classes present, ordered by id")
    mask_png: str = Field(description="base64 of the 8-bit palette PNG mask")


class ClassInfo(BaseModel):
    id: int
    label: str
    color: list[int] = Field(description="[r, g, b] in the mask palette")


class Batching(BaseModel):
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue: int
    request_timeout_s: float


class ModelInfo(BaseModel):
    """GET /v1/model."""

    backbone: str
    output_stride: int
    input_size: int
    num_classes: int
    head: str
    classes: list[ClassInfo]
    weights: str
    trained: bool
    precision: str = Field(description="fp32, fp16, bf16, or int8 (a quantized export)")
    format: str = Field(description="savedmodel, openvino or onnx")
    device: str
    runtime: str = Field(description="the engine running the model: tensorflow, openvino "
                         "or onnxruntime")
    runtime_version: str
    inference_precision: str = Field(
        description="the arithmetic the runtime computes in: fp32 or bf16 (or the export's "
        "own fp16/int8 on runtimes that cannot switch it); ATROUS_INFERENCE_PRECISION")
    inference_precision_reason: str = Field(
        description="why: the setting and the CPU behind it, e.g. 'auto: bf16, as the CPU "
        "has AMX-BF16 ...'")
    batching: Batching
