"""The ONNX Runtime runtime: a ``model.onnx`` export, on the CPU (or CUDA with onnxruntime-gpu)."""

import gc
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model.inference import formats, precision
from model.inference.contract import INPUT_IMAGES, INPUT_SIZES, OUTPUT_LABELS, ModelMetadata
from model.inference.runtimes.base import check_batch, warm_up

log = logging.getLogger(__name__)


class OnnxRuntimeRunner:
    """Loads an ONNX export into an ``onnxruntime.InferenceSession``.

    Args:
        path: a model directory holding ``model.onnx``.
        warmup_batch_sizes: batch sizes run once at load.
        threads: intra-op threads; None lets ONNX Runtime use every core.
        use_gpu: put the session on CUDA (needs the onnxruntime-gpu package).
        inference_precision: ``auto`` or ``fp32`` (ONNX Runtime computes in the export's own
            precision: ``model.inference.precision``).
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, *, warmup_batch_sizes: Iterable[int] = (),
                 threads: int | None = None, use_gpu: bool = False,
                 inference_precision: str = precision.AUTO) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = ModelMetadata.read(self.path)
        self.inference_precision = precision.choose_precision(
            inference_precision, self.runtime, self.metadata.precision)
        formats.require_format(self.path, formats.ONNX, self.runtime,
                               "write one with `atrous export --format onnx`")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads would busy-wait after each call, on the cores that decode and encode
        # the other requests meanwhile (benchmarks/ort_spinning.py: 8 ms of CPU per 20 ms
        # gap with spinning, none without, and no slower a call).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(formats.model_file(self.path, formats.ONNX)),
                                             options, providers=providers)
        self.runtime_version = ort.__version__
        on_gpu = self._session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = "GPU:0 (CUDA)" if on_gpu else "CPU"
        # ONNX Runtime raises its generic RuntimeException for a failed allocation too;
        # only a Python MemoryError is certain to mean "too big a batch".
        self.oom_errors: tuple[type[BaseException], ...] = (MemoryError,)
        warm_up(self, self.metadata.input_size, warmup_batch_sizes)

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> uint8 [N, S, S] class ids."""
        sizes = check_batch(images, sizes, self.metadata.input_size)
        (labels,) = self._session.run([OUTPUT_LABELS], {INPUT_IMAGES: images, INPUT_SIZES: sizes})
        return np.asarray(labels, np.uint8)

    def close(self) -> None:
        """Releases the session and its memory arena."""
        self._session = None
        gc.collect()


def load(path: Path, *, warmup_batch_sizes: Iterable[int], threads: int | None,
         gpu_memory_growth: bool, inference_precision: str) -> OnnxRuntimeRunner:
    from model.inference.runtimes import gpu_visible

    del gpu_memory_growth  # ONNX Runtime's CUDA arena grows on demand
    return OnnxRuntimeRunner(path, warmup_batch_sizes=warmup_batch_sizes, threads=threads,
                             use_gpu=gpu_visible(), inference_precision=inference_precision)
