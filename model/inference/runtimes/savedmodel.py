"""The TensorFlow runtime: an atrous SavedModel loaded with plain ``tf.saved_model.load``.

Loading, device set-up and warm-up happen once in ``__init__``; calling the runner maps a
letterboxed uint8 batch to uint8 labels.  Only TensorFlow is imported here, never tf-slim,
so the request path of the server stays free of it.
"""

import gc
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from model.inference import formats, precision
from model.inference.contract import (
    INPUT_IMAGES,
    INPUT_SIZES,
    OUTPUT_LABELS,
    OUTPUT_PROBABILITIES,
    PROBABILITIES_SIGNATURE,
    SIGNATURE_NAME,
    ModelMetadata,
    ProbabilitiesUnavailableError,
)
from model.inference.runtimes.base import check_batch, warm_up

log = logging.getLogger(__name__)

RUNTIME = "tensorflow"


def configure_devices(memory_growth: bool, threads: int | None = None) -> str:
    """Sets GPU memory growth and CPU threads (before anything runs) and names the device."""
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError as e:  # TensorFlow already initialised in this process
            log.warning("could not set %d threads: %s", threads, e)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
        except RuntimeError as e:  # already initialised in this process: keep going
            log.warning("could not set memory growth on %s: %s", gpu.name, e)
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", "GPU")
    return f"GPU:0 ({name})" + (f" + {len(gpus) - 1} more" if len(gpus) > 1 else "")


class SavedModelRunner:
    """Loads an atrous SavedModel; a ``Segmenter``.

    Args:
        path: the SavedModel directory.
        warmup_batch_sizes: batch sizes run once at load, so that no request pays for
            graph tracing or kernel autotuning.
        gpu_memory_growth: allocate GPU memory as needed rather than all at once.
        threads: intra-op CPU threads; None: TensorFlow's default (every core).
        inference_precision: ``auto`` or ``fp32`` (TensorFlow computes in the export's own
            precision: ``model.inference.precision``).
    """

    runtime = RUNTIME

    def __init__(self, path: str | Path, warmup_batch_sizes: Iterable[int] = (), *,
                 gpu_memory_growth: bool = True, threads: int | None = None,
                 inference_precision: str = precision.AUTO) -> None:
        import tensorflow as tf

        self.path = Path(path)
        self.metadata = ModelMetadata.read(self.path)
        self.inference_precision = precision.choose_precision(
            inference_precision, RUNTIME, self.metadata.precision)
        formats.require_format(self.path, formats.SAVEDMODEL, self.runtime,
                               "use --runtime openvino or onnxruntime")
        self.device = configure_devices(gpu_memory_growth, threads)
        self.runtime_version: str = tf.__version__
        self.oom_errors: tuple[type[BaseException], ...] = (tf.errors.ResourceExhaustedError,
                                                            MemoryError)
        self._tf = tf
        self._loaded = tf.saved_model.load(str(self.path))
        self._signature = self._loaded.signatures[SIGNATURE_NAME]
        self._probabilities = self._loaded.signatures.get(PROBABILITIES_SIGNATURE)
        self.has_probabilities = self._probabilities is not None
        size = self.metadata.input_size
        warmup_batch_sizes = tuple(warmup_batch_sizes)
        warm_up(self, size, warmup_batch_sizes)
        if self.has_probabilities and warmup_batch_sizes:  # its first call traces too
            warm_up(self.probabilities, size, (1,))

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> uint8 [N, S, S] class ids."""
        labels: np.ndarray = self._run(self._signature, images, sizes)[OUTPUT_LABELS].numpy()
        return labels

    def probabilities(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> float32 [N, S, S, C] class probabilities.

        Raises:
            ProbabilitiesUnavailableError: the SavedModel predates the signature.
        """
        if self._probabilities is None:
            raise ProbabilitiesUnavailableError(
                f"{self.path} has no {PROBABILITIES_SIGNATURE!r} signature (exported by an "
                "older atrous): export it again")
        outputs = self._run(self._probabilities, images, sizes)
        probabilities: np.ndarray = outputs[OUTPUT_PROBABILITIES].numpy()
        return probabilities

    def _run(self, signature: Any, images: np.ndarray, sizes: np.ndarray) -> Any:
        sizes = check_batch(images, sizes, self.metadata.input_size)
        return signature(**{
            INPUT_IMAGES: self._tf.constant(images),
            INPUT_SIZES: self._tf.constant(sizes),
        })

    def close(self) -> None:
        """Drops the loaded SavedModel (TensorFlow keeps a GPU's memory in its own pool
        until the process ends: docs/models.md)."""
        self._loaded = self._signature = self._probabilities = None
        gc.collect()


def load(path: Path, *, warmup_batch_sizes: Iterable[int], threads: int | None,
         gpu_memory_growth: bool, inference_precision: str) -> SavedModelRunner:
    return SavedModelRunner(path, warmup_batch_sizes, gpu_memory_growth=gpu_memory_growth,
                            threads=threads, inference_precision=inference_precision)
