"""The OpenVINO runtime: an OpenVINO IR, an ONNX export or a SavedModel, on the CPU.

A SavedModel is converted in memory at load (``openvino.convert_model`` reads the
SavedModel itself; TensorFlow is not imported), so ``ATROUS_RUNTIME=openvino`` serves the
default export too; ``atrous export --format openvino`` saves that conversion (and
``--int8`` an NNCF-quantized one) so that start-up skips it.
"""

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model.inference import formats
from model.inference.contract import INPUT_IMAGES, INPUT_SIZES, OUTPUT_LABELS, ModelMetadata
from model.inference.runtimes.base import check_batch, warm_up

log = logging.getLogger(__name__)

#: Inference precision per exported precision: fp32 is pinned to f32, because OpenVINO
#: would otherwise compute in bf16 on CPUs with AMX and change labels; a ``bf16`` export
#: asks for bf16 explicitly.  INT8 layers run in int8 whatever the hint.
_PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f32"}


class OpenVINORunner:
    """Loads and compiles a model for OpenVINO's CPU plugin.

    Args:
        path: a model directory (``model.xml``, ``model.onnx`` or a SavedModel).
        warmup_batch_sizes: batch sizes run once at load.
        threads: inference threads; None lets OpenVINO use every core.
    """

    runtime = "openvino"

    def __init__(self, path: str | Path, *, warmup_batch_sizes: Iterable[int] = (),
                 threads: int | None = None) -> None:
        import openvino as ov

        self.path = Path(path)
        self.metadata = ModelMetadata.read(self.path)
        self.format = formats.detect_format(self.path)
        core = ov.Core()
        if self.format == formats.SAVEDMODEL:
            model = ov.convert_model(str(self.path))
        else:
            model = core.read_model(str(formats.model_file(self.path, self.format)))
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, on every core
            "INFERENCE_PRECISION_HINT": _PRECISION_HINTS.get(self.metadata.precision, "f32"),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(OUTPUT_LABELS)
        self.runtime_version = ov.get_version().split("-")[0]
        self.device = f"CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')})"
        # OpenVINO reports a failed allocation as a RuntimeError like any other failure;
        # only a Python MemoryError is certain to mean "too big a batch".
        self.oom_errors: tuple[type[BaseException], ...] = (MemoryError,)
        warm_up(self, self.metadata.input_size, warmup_batch_sizes)

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> uint8 [N, S, S] class ids."""
        sizes = check_batch(images, sizes, self.metadata.input_size)
        result = self._request.infer({INPUT_IMAGES: images, INPUT_SIZES: sizes})
        # The request reuses its output buffer on the next call: hand back a copy.
        return np.array(result[self._output], np.uint8, copy=True)


def load(path: Path, *, warmup_batch_sizes: Iterable[int], threads: int | None,
         gpu_memory_growth: bool) -> OpenVINORunner:
    del gpu_memory_growth  # CPU only
    return OpenVINORunner(path, warmup_batch_sizes=warmup_batch_sizes, threads=threads)
