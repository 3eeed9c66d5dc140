"""The OpenVINO runtime: an OpenVINO IR, an ONNX export or a SavedModel, on the CPU.

A SavedModel is converted in memory at load (``openvino.convert_model`` reads the
SavedModel itself, in about 3 s for ResNet-101; TensorFlow is not imported), so this is
what ``auto`` serves the default export with on a CPU; ``atrous export --format openvino``
saves that conversion (and ``--int8`` an NNCF-quantized one).

The class probabilities are the softmax of the logits that the labels' argmax reads,
found in the converted graph (an exported network ends in ``argmax -> uint8``, which
OpenVINO holds as ``TopK -> Squeeze -> Convert``).  They are compiled as a second model
over the same graph, on first use or at warm-up: one model with both outputs would pay for
the softmax on every labels call (5-9 % of a ResNet-101 513 call, measured).

Every runner compiles with one ``ov.Core`` per process (``shared_core``), kept to the end:
see its docstring for the crash that several Cores led to (docs/runtimes.md, "One process").
"""

import functools
import gc
import logging
import sys
import threading
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
    ModelMetadata,
    ProbabilitiesUnavailableError,
)
from model.inference.runtimes.base import check_batch, warm_up

log = logging.getLogger(__name__)

#: OpenVINO's hint per inference precision (``model.inference.precision`` chooses it):
#: always set, because OpenVINO's own default on a CPU with bf16 units is bf16.  INT8
#: layers run in int8 whatever the hint; it governs the layers left in float.
_PRECISION_HINTS = {precision.FP32: "f32", precision.BF16: "bf16"}

#: The nodes an exported argmax may pass through on its way to the labels output.
_ARGMAX_TAIL = ("Result", "Convert", "Squeeze", "Reshape")


def no_telemetry() -> None:
    """Keeps OpenVINO's converter and NNCF from reporting usage to Google Analytics.

    Both send events (``openvino_telemetry``) unless the user opted out on the machine (a
    consent file under ``~/intel``); a server, a training job or a cluster's workers must
    not phone home, and each send held a worker's exit for up to 3 s.  Both fall back to a
    no-op when the package cannot be imported: a ``None`` in ``sys.modules`` makes its
    import fail.  Call before the first conversion or quantization in the process.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


no_telemetry()  # this module converts SavedModels at load


def probabilities_model(model: Any) -> Any | None:
    """An ``openvino.Model`` of ``model``'s inputs -> float32 [N, S, S, C] softmax
    probabilities over the logits its labels are the argmax of (classes moved last if the
    argmax ran over another axis); None if the labels do not end in an argmax."""
    from openvino import Model, opset13

    node = model.output(OUTPUT_LABELS).get_node()
    while node.get_type_name() in _ARGMAX_TAIL:  # input 0 is the data (1 the axes)
        node = node.input_value(0).get_node()
    attributes = node.get_attributes()
    if node.get_type_name() != "TopK" or attributes.get("mode") != "max":
        return None
    logits = node.input_value(0)
    rank = logits.get_partial_shape().rank
    axis = attributes.get("axis")
    if not rank.is_static or not isinstance(axis, int):
        return None
    rank, axis = rank.get_length(), axis % rank.get_length()
    softmax = opset13.softmax(opset13.convert(logits, "f32"), axis)
    if axis != rank - 1:  # an ONNX export's NCHW logits: classes last, as the contract says
        order = [a for a in range(rank) if a != axis] + [axis]
        softmax = opset13.transpose(softmax, opset13.constant(np.array(order, np.int64)))
    result = opset13.result(softmax)
    result.output(0).get_tensor().set_names({OUTPUT_PROBABILITIES})
    return Model([result], model.get_parameters(), OUTPUT_PROBABILITIES)


def _convert_keeping_logging(ov: Any, path: Path) -> Any:
    """``openvino.convert_model``, leaving the root logger as it found it: the converter
    sets it to ERROR and restores it only when the conversion succeeds, so one corrupt
    SavedModel would silence a long-running server's INFO and WARNING logs for good."""
    root = logging.getLogger()
    level, filters, handlers = root.level, list(root.filters), list(root.handlers)
    try:
        return ov.convert_model(str(path))
    finally:
        root.setLevel(level)
        root.filters[:] = filters
        root.handlers[:] = handlers


@functools.cache
def shared_core() -> Any:
    """The process's one ``openvino.Core``, never released (it is thread-safe).

    OpenVINO's CPU plugin gives the main thread its own alternate signal stack when a Core
    first compiles, and puts back the one it found when that Core is destroyed.  Two Cores
    destroyed in the order they were made (a runner per Core, the first one dropped first)
    left the main thread on a freed stack, and the next signal handled there was a segfault:
    Python runs its handlers on the alternate stack, so the SIGTERM that stops training
    gracefully (or drains the server) crashed the process.  With one Core that outlives the
    others, any short-lived Core (NNCF's calibration engines make their own) nests inside it
    and puts back a stack that is still alive.
    """
    import openvino as ov

    return ov.Core()


class OpenVINORunner:
    """Loads and compiles a model for OpenVINO's CPU plugin.

    Args:
        path: a model directory (``model.xml``, ``model.onnx`` or a SavedModel).
        warmup_batch_sizes: batch sizes run once at load (probabilities: batch 1).
        threads: inference threads; None lets OpenVINO use every core.
        inference_precision: ``auto`` (bf16 on a CPU with bf16 units), ``fp32`` or ``bf16``
            (``model.inference.precision``); for the labels and the probabilities alike.
    """

    runtime = "openvino"

    def __init__(self, path: str | Path, *, warmup_batch_sizes: Iterable[int] = (),
                 threads: int | None = None,
                 inference_precision: str = precision.AUTO) -> None:
        import openvino as ov

        self.path = Path(path)
        self.metadata = ModelMetadata.read(self.path)
        self.inference_precision = precision.choose_precision(
            inference_precision, self.runtime, self.metadata.precision)
        self.format = formats.detect_format(self.path)
        core = shared_core()
        if self.format == formats.SAVEDMODEL:
            model = _convert_keeping_logging(ov, self.path)
        else:
            model = core.read_model(str(formats.model_file(self.path, self.format)))
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, on every core
            "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[self.inference_precision.name],
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
            # OpenVINO pins its threads to the first cores of the process's CPU set: two
            # server workers with a thread each both ran on core 0 (half the throughput of
            # one worker on a 2-core machine, benchmarks/RESULTS.md, "Several workers").
            config["ENABLE_CPU_PINNING"] = False
        self._request = core.compile_model(model, "CPU", config).create_infer_request()
        # Compiled on first use (or at warm-up): the bulk job and the command line mostly
        # never ask for probabilities, and a compile costs seconds and a copy of the weights.
        self._probabilities_graph = probabilities_model(model)
        self.has_probabilities = self._probabilities_graph is not None
        self._probabilities: Any = None
        self._config = config
        self._compiling = threading.Lock()
        self.runtime_version = ov.get_version().split("-")[0]
        self.device = f"CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')})"
        # OpenVINO reports a failed allocation as a RuntimeError like any other failure;
        # only a Python MemoryError is certain to mean "too big a batch".
        self.oom_errors: tuple[type[BaseException], ...] = (MemoryError,)
        warmup_batch_sizes = tuple(warmup_batch_sizes)
        warm_up(self, self.metadata.input_size, warmup_batch_sizes)
        if self.has_probabilities and warmup_batch_sizes:
            warm_up(self.probabilities, self.metadata.input_size, (1,))

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> uint8 [N, S, S] class ids."""
        return np.asarray(self._infer(self._request, images, sizes), np.uint8)

    def probabilities(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> float32 [N, S, S, C] class probabilities.

        Raises:
            ProbabilitiesUnavailableError: the graph's labels are not an argmax of logits.
        """
        if not self.has_probabilities:
            raise ProbabilitiesUnavailableError(
                f"{self.path}: its labels are not an argmax over logits, so OpenVINO cannot "
                "give class probabilities for it")
        return np.asarray(self._infer(self._probabilities_request(), images, sizes), np.float32)

    def _probabilities_request(self) -> Any:
        with self._compiling:
            if self._probabilities is None:
                compiled = shared_core().compile_model(self._probabilities_graph, "CPU",
                                                       self._config)
                self._probabilities = compiled.create_infer_request()
                self._probabilities_graph = None
            return self._probabilities

    def _infer(self, request: Any, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        sizes = check_batch(images, sizes, self.metadata.input_size)
        request.infer({INPUT_IMAGES: images, INPUT_SIZES: sizes})
        # The request reuses its output buffer on the next call: hand back a copy.
        return np.array(request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        """Releases the compiled models (their memory returns once nothing else holds them)."""
        self._request = None
        self._probabilities = self._probabilities_graph = None
        gc.collect()


def load(path: Path, *, warmup_batch_sizes: Iterable[int], threads: int | None,
         gpu_memory_growth: bool, inference_precision: str) -> OpenVINORunner:
    del gpu_memory_growth  # CPU only
    return OpenVINORunner(path, warmup_batch_sizes=warmup_batch_sizes, threads=threads,
                          inference_precision=inference_precision)
