"""Server settings: one pydantic-settings class, every field also an ``ATROUS_*`` variable.

Validated at start-up, so that an impossible configuration fails before the first
request: a missing model or checkpoint, or a queue smaller than one batch.
"""

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.config import HEADS, PRECISIONS, ModelConfig
from model.inference.contract import ModelMetadata

# The model fields' defaults are ModelConfig's: one source, no literal repeated here.
_MODEL: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
Head = Literal[HEADS]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]


class Settings(BaseSettings):
    """Everything the server can be told; see ``deploy/.env.example`` for the defaults."""

    model_config = SettingsConfigDict(env_prefix="ATROUS_", extra="ignore")

    # What to serve: a SavedModel, or a checkpoint exported (and cached) at start, or neither
    # (the default random-initialised network, announced loudly).
    model: Path | None = Field(None, description="SavedModel directory written by `atrous export`")
    checkpoint: Path | None = Field(None, description="checkpoint to export at start")
    # ModelConfig validates these (ATROUS_OUTPUT_STRIDE stays an int, not a Literal of ints:
    # environment values are strings, and pydantic does not coerce "8" to Literal[8]).
    backbone: str = _MODEL["backbone"]
    output_stride: int = Field(_MODEL["output_stride"], description="8, 16 or 32")
    num_classes: int = Field(_MODEL["num_classes"], ge=1, le=256)
    head: Head = _MODEL["head"]
    input_size: int = _MODEL["input_size"]
    precision: Precision = _MODEL["precision"]
    cache_dir: Path = Path("~/.cache/atrous/savedmodels")

    # Batching and load.
    max_batch_size: int = Field(8, ge=1, le=256)
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503s")
    decode_concurrency: int = Field(
        4, ge=1, le=64, description="images decoded/encoded at once (bounds their memory)")
    gpu_memory_growth: bool = Field(True, description="allocate GPU memory as needed")
    fast_jpeg_decode: bool = Field(
        False, description="decode big JPEGs at 1/2-1/8 DCT scale for png/json output: ~3x less "
        "CPU, but the model input is no longer DeepLab's exact antialiased resize")

    # Input limits.
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)

    # Where to listen (used by `atrous serve`).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.model is not None and self.checkpoint is not None:
            raise ValueError("set ATROUS_MODEL or ATROUS_CHECKPOINT, not both")
        if self.model is not None:
            try:
                ModelMetadata.read(self.model)
            except ValueError as e:
                raise ValueError(f"ATROUS_MODEL: {e}") from None
        if self.checkpoint is not None:
            from model.checkpoints import CheckpointError, resolve_checkpoint

            try:
                resolve_checkpoint(self.checkpoint)
            except CheckpointError as e:
                raise ValueError(f"ATROUS_CHECKPOINT: {e}") from None
        if self.max_queue < self.max_batch_size:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least "
                             f"max_batch_size ({self.max_batch_size})")
        if self.model is None:
            self.to_model_config()  # unknown backbone, bad output stride or input size: fail now
        return self

    def to_model_config(self) -> ModelConfig:
        """The network to build when no model directory is given."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in _MODEL
                                  if name in type(self).model_fields}
        return ModelConfig(**fields)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment (tests override the dependency)."""
    return Settings()
