"""Server settings: one pydantic-settings class, every field also an ``ATROUS_*`` variable.

Validated at start-up, so that an impossible configuration fails before the first
request: a missing model or checkpoint, or a queue smaller than one batch.
"""

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.config import HEADS, PRECISIONS, ModelConfig
from model.inference import formats, runtimes
from model.inference.contract import ModelMetadata
from model.inference.precision import INFERENCE_PRECISIONS, choose_precision

# The model fields' defaults are ModelConfig's: one source, no literal repeated here.
_MODEL: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
Head = Literal[HEADS]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Runtime = Literal[runtimes.RUNTIME_CHOICES]  # type: ignore[valid-type]
InferencePrecisionChoice = Literal[INFERENCE_PRECISIONS]  # type: ignore[valid-type]

#: Batch size defaults, measured (benchmarks/RESULTS.md, "Runtimes"): on the CPU TensorFlow
#: costs more per image at batch 4 than at batch 1 and no runtime gained enough to be worth
#: the latency, so no batching; a GPU needs a batch to fill it.
CPU_MAX_BATCH_SIZE = 1
GPU_MAX_BATCH_SIZE = 16


def default_max_batch_size() -> int:
    return GPU_MAX_BATCH_SIZE if runtimes.gpu_visible() else CPU_MAX_BATCH_SIZE


class Settings(BaseSettings):
    """Everything the server can be told; see ``deploy/.env.example`` for the defaults."""

    # hide_input_in_errors: a validation error must never print an API key (or any input).
    model_config = SettingsConfigDict(env_prefix="ATROUS_", extra="ignore",
                                      hide_input_in_errors=True)

    # What to serve: a SavedModel, or a checkpoint exported (and cached) at start, or neither
    # (the default random-initialised network, announced loudly).
    model: Path | None = Field(
        None, description="model directory written by `atrous export` (SavedModel, OpenVINO "
        "or ONNX)")
    checkpoint: Path | None = Field(
        None, description="checkpoint or training run to export at start (a run builds the "
        "network it recorded)")
    # Several models and versions (docs/models.md): DIR/<name>/<integer version>/.
    model_repository: Path | None = Field(
        None, description="model repository: DIR/<name>/<version>/, each version an export or "
        "a checkpoint (instead of ATROUS_MODEL / ATROUS_CHECKPOINT)")
    default_model: str | None = Field(
        None, description="the model /segment and /v1/model serve (the name of the one model "
        "of ATROUS_MODEL / ATROUS_CHECKPOINT; default `default`)")
    version_policy: str = Field(
        "latest:1", description="versions served per model: latest:N, or specific:3,4 (pin, "
        "roll back)")
    repository_poll_s: float = Field(
        0.0, ge=0, description="seconds between repository scans for new versions (0: off)")
    admin_keys: SecretStr | None = Field(
        None, description="comma-separated admin keys for POST /v2/repository/models/{name}/"
        "load|unload (unset: that API is off)")
    # ModelConfig validates these (ATROUS_OUTPUT_STRIDE stays an int, not a Literal of ints:
    # environment values are strings, and pydantic does not coerce "8" to Literal[8]).
    backbone: str = _MODEL["backbone"]
    output_stride: int = Field(_MODEL["output_stride"], description="8, 16 or 32")
    num_classes: int = Field(_MODEL["num_classes"], ge=1, le=256)
    head: Head = _MODEL["head"]
    input_size: int = _MODEL["input_size"]
    precision: Precision = _MODEL["precision"]
    cache_dir: Path = Path("~/.cache/atrous/savedmodels")

    # What runs it (docs/runtimes.md): auto takes the fastest installed for the model's
    # format and this device.
    runtime: Runtime = Field(
        runtimes.AUTO, description="inference engine: auto, tensorflow, openvino or onnxruntime")
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for the runtime (unset: every core)")
    # How it computes (model.inference.precision), apart from `precision`, the network's build.
    inference_precision: InferencePrecisionChoice = Field(
        "auto", description="auto (bf16 on a CPU with AMX-BF16 or AVX512-BF16, where "
        "OpenVINO runs; fp32 elsewhere), fp32 (exact) or bf16")

    # Batching and load.
    max_batch_size: int = Field(
        default_factory=default_max_batch_size, ge=1, le=256,
        description=f"most images per model call (default {CPU_MAX_BATCH_SIZE} on CPU, "
        f"{GPU_MAX_BATCH_SIZE} with a GPU: measured in benchmarks/RESULTS.md)")
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503s")
    decode_concurrency: int | None = Field(
        None, ge=1, le=64, description="images decoded/encoded at once per process (bounds "
        "their memory; unset: the process's CPU threads, 2 to 8)")
    gpu_memory_growth: bool = Field(True, description="allocate GPU memory as needed")
    access_log: bool = Field(
        True, description="uvicorn's line per request (off behind a proxy that logs them)")
    fast_jpeg_decode: bool = Field(
        False, description="decode big JPEGs at 1/2-1/8 DCT scale for png/json output: ~3x less "
        "CPU, but the model input is no longer DeepLab's exact antialiased resize")

    # Input limits.
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_inference_pixels: int = Field(
        64 * 513 * 513, ge=1, description="most model input (tiles x input_size^2, over all "
        "scales and flips) one image may need with tiling/scales/flip; beyond it: 413")
    tile_max_side: int = Field(
        2049, ge=33, description="tiling downscales an image whose shorter side is longer")
    memory_budget_mb: int | None = Field(
        None, ge=1, description="estimated MB of request work admitted at once; beyond it a "
        "request waits, then gets 503 memory_busy (unset: half the container's memory limit, "
        "or of the RAM)")

    # Fault injection, for the reliability tests only (tests/reliability): "raise@N" makes
    # the N-th model call raise, "hang@N" makes it never return. Never set it in production.
    test_fault: str | None = Field(
        None, pattern=r"^(raise|hang)@[1-9][0-9]*$",
        description="tests only: raise@N or hang@N (the N-th model call fails or hangs)")

    # Access control. No keys (the default): every route is open.
    api_keys: SecretStr | None = Field(
        None, description="comma-separated API keys; when set (or api_keys_file), /segment and "
        "/v1/model need `Authorization: Bearer <key>`")
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line (blank lines and # comments skipped)")
    metrics_public: bool = Field(
        True, description="serve /metrics without a key even when API keys are set")

    # Where to listen (used by `atrous serve`).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Several processes on that one port (app.workers, docs/server.md "Several workers").
    workers: int = Field(
        1, ge=1, le=64, description="server processes on the one port (atrous serve / python -m "
        "app), each with its own runtime and batcher, its share of the CPU threads and of the "
        "memory budget, and its own queue of ATROUS_MAX_QUEUE")
    test_worker_start_gate: str | None = Field(
        None, pattern=r"^[0-9]+:.+$",
        description="tests only: SLOT:FILE (worker SLOT, from 0, loads its model only once "
        "FILE exists)")

    _api_keys: tuple[bytes, ...] = PrivateAttr(())

    _admin_keys: tuple[bytes, ...] = PrivateAttr(())

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `ATROUS_API_KEYS=` (as in deploy/.env.example or an empty k8s Secret) means no keys.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.model is not None and self.checkpoint is not None:
            raise ValueError("set ATROUS_MODEL or ATROUS_CHECKPOINT, not both")
        if self.model_repository is not None:
            if self.model is not None or self.checkpoint is not None:
                raise ValueError("set ATROUS_MODEL_REPOSITORY or ATROUS_MODEL / "
                                 "ATROUS_CHECKPOINT, not both")
            if not self.model_repository.expanduser().is_dir():
                raise ValueError(f"ATROUS_MODEL_REPOSITORY: {self.model_repository} is not a "
                                 "directory")
        from app.repository.layout import check_model_name, parse_version_policy

        try:
            parse_version_policy(self.version_policy)
        except ValueError as e:
            raise ValueError(f"ATROUS_VERSION_POLICY: {e}") from None
        if self.default_model is not None:
            try:
                check_model_name(self.default_model)
            except ValueError as e:
                raise ValueError(f"ATROUS_DEFAULT_MODEL: {e}") from None
        format = formats.SAVEDMODEL  # what a checkpoint (or the default) is exported to
        if self.model is not None:
            try:
                ModelMetadata.read(self.model)
                format = formats.detect_format(self.model)
            except ValueError as e:
                raise ValueError(f"ATROUS_MODEL: {e}") from None
        if self.runtime != runtimes.AUTO:  # a missing package or a wrong format: fail now
            runtimes.require(self.runtime, format)
        runtime = (self.runtime if self.runtime != runtimes.AUTO
                   else runtimes.choose_runtime(format))
        export_precision = (ModelMetadata.read(self.model).precision if self.model is not None
                            else self.precision)
        try:  # bf16 on a CPU or runtime without it: fail now, not at load
            choose_precision(self.inference_precision, runtime, export_precision)
        except ValueError as e:
            raise ValueError(f"ATROUS_INFERENCE_PRECISION: {e}") from None
        if self.checkpoint is not None:
            from model.checkpoints import CheckpointError, resolve_checkpoint

            try:
                resolve_checkpoint(self.checkpoint)
            except CheckpointError as e:
                raise ValueError(f"ATROUS_CHECKPOINT: {e}") from None
        if self.test_worker_start_gate is not None and int(
                self.test_worker_start_gate.partition(":")[0]) >= self.workers:
            raise ValueError("ATROUS_TEST_WORKER_START_GATE names a worker slot beyond "
                             f"ATROUS_WORKERS ({self.workers}; slots count from 0)")
        if self.max_queue < self.max_batch_size:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least "
                             f"max_batch_size ({self.max_batch_size})")
        if self.model is None:
            self.to_model_config()  # unknown backbone, bad output stride or input size: fail now
        self._api_keys = self._read_api_keys()
        if self.admin_keys is not None:
            self._admin_keys = tuple(dict.fromkeys(
                key.encode("ascii") for key in _api_keys_in(
                    "ATROUS_ADMIN_KEYS", self.admin_keys.get_secret_value().split(","))))
            if not self._admin_keys:
                raise ValueError("ATROUS_ADMIN_KEYS holds no key (comma-separated keys expected)")
        if not self.metrics_public and not self._api_keys:
            raise ValueError("ATROUS_METRICS_PUBLIC=false needs API keys "
                             "(ATROUS_API_KEYS or ATROUS_API_KEYS_FILE)")
        return self

    def _read_api_keys(self) -> tuple[bytes, ...]:
        keys: list[str] = []
        if self.api_keys is not None:
            keys += _api_keys_in("ATROUS_API_KEYS", self.api_keys.get_secret_value().split(","))
            if not keys:
                raise ValueError("ATROUS_API_KEYS holds no key (comma-separated keys expected)")
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.expanduser().read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"ATROUS_API_KEYS_FILE: cannot read {self.api_keys_file}: "
                                 f"{e}") from None
            from_file = _api_keys_in(f"ATROUS_API_KEYS_FILE ({self.api_keys_file})",
                                     [line for line in lines
                                      if not line.lstrip().startswith("#")])
            if not from_file:
                raise ValueError(f"ATROUS_API_KEYS_FILE ({self.api_keys_file}) holds no key")
            keys += from_file
        return tuple(dict.fromkeys(key.encode("ascii") for key in keys))

    @property
    def decode_threads(self) -> int:
        """Threads that decode and encode: explicit, or the process's CPU threads (each
        worker's share) between 2 and 8: four, the old fixed default, starved a 16-core
        host's model (benchmarks/RESULTS.md, "The host path")."""
        if self.decode_concurrency is not None:
            return self.decode_concurrency
        return min(8, max(2, self.threads or os.cpu_count() or 1))

    @property
    def memory_budget_bytes(self) -> int:
        """The memory budget in bytes (``app.budget``: explicit, or the default share)."""
        from app.budget import MB, default_budget_bytes

        if self.memory_budget_mb is not None:
            return self.memory_budget_mb * MB
        return default_budget_bytes()

    @property
    def accepted_api_keys(self) -> tuple[bytes, ...]:
        """The API keys a request may present (from both settings); empty: no access control."""
        return self._api_keys

    @property
    def accepted_admin_keys(self) -> tuple[bytes, ...]:
        """The keys that may load and unload models; empty: the repository API is off."""
        return self._admin_keys

    def to_model_config(self) -> ModelConfig:
        """The network to build when no model directory is given."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in _MODEL
                                  if name in type(self).model_fields}
        return ModelConfig(**fields)


def _api_keys_in(source: str, candidates: list[str]) -> list[str]:
    """The non-blank keys among ``candidates``; each must fit an HTTP header token."""
    keys = [key.strip() for key in candidates if key.strip()]
    for number, key in enumerate(keys, 1):
        if not all("!" <= char <= "~" for char in key):
            # Never echo the key itself: the message ends up in logs.
            raise ValueError(f"{source}: key {number} has a space, a control or a non-ASCII "
                             "character (keys are printable ASCII without spaces)")
    return keys


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment (tests override the dependency)."""
    return Settings()
