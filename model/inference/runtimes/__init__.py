"""The engines that can run an exported model, behind one seam (``contract.Segmenter``).

``load_runtime`` is the only way in: the pipeline, the server and the CLI never know
which engine runs.  Each runtime module has ``load(path, *, warmup_batch_sizes, threads,
gpu_memory_growth, inference_precision) -> Segmenter`` (the last one:
``model.inference.precision``) and imports its engine lazily, inside it; a missing
engine package is a ``RuntimeUnavailableError`` that names the pip extra to install.

``auto`` takes the first runtime, in ``CPU_PREFERENCE`` / ``GPU_PREFERENCE`` order for the
model's format, whose package is installed.  The CPU order is the measured one
(benchmarks/RESULTS.md, "Runtimes"); on a GPU, TensorFlow serves a SavedModel (OpenVINO
and this build of ONNX Runtime run on the CPU only), and ONNX Runtime an ONNX export when
its CUDA provider is installed.
"""

import dataclasses
import importlib
import importlib.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from model.inference import formats, precision
from model.inference.contract import ModelMetadata, Segmenter

log = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_RUNTIME = AUTO


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One engine: where its loader lives, what it needs installed, what it can load."""

    name: str
    module: str
    package: str  # the import name whose absence makes the runtime unavailable
    extra: str  # the pip extra that installs it: pip install 'atrous[<extra>]'
    formats: tuple[str, ...]

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


RUNTIMES: dict[str, Runtime] = {
    "tensorflow": Runtime("tensorflow", "model.inference.runtimes.savedmodel", "tensorflow",
                          "tensorflow", (formats.SAVEDMODEL,)),
    "openvino": Runtime("openvino", "model.inference.runtimes.openvino", "openvino",
                        "openvino", (formats.OPENVINO, formats.SAVEDMODEL, formats.ONNX)),
    "onnxruntime": Runtime("onnxruntime", "model.inference.runtimes.onnxruntime", "onnxruntime",
                           "onnx", (formats.ONNX,)),
}
RUNTIME_CHOICES = (AUTO, *RUNTIMES)

#: Fastest first, per model format, on the CPU (benchmarks/RESULTS.md, "Runtimes": AMD EPYC
#: Zen 3, AVX2).  OpenVINO (a core dependency) serves a SavedModel, converted in memory at
#: load: ResNet-101 513 fp32 1.15x TensorFlow's speed bare, and its server 1.17x / 1.11x the
#: TensorFlow server's throughput at concurrency 1 / 4 (pooled over four runs).  On an ONNX
#: export ONNX Runtime (its own engine) and OpenVINO are within noise of each other.
CPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    formats.SAVEDMODEL: ("openvino", "tensorflow"),
    formats.OPENVINO: ("openvino",),
    formats.ONNX: ("onnxruntime", "openvino"),
}
GPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    formats.SAVEDMODEL: ("tensorflow", "openvino"),
    formats.OPENVINO: ("openvino",),
    formats.ONNX: ("onnxruntime", "openvino"),
}


class RuntimeUnavailableError(ValueError):
    """The chosen runtime cannot run here: its package is missing, or it cannot load the
    model's format.  The message says what to install or export."""


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process (cheap: no framework is imported)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _cuda_onnxruntime() -> bool:
    if not RUNTIMES["onnxruntime"].installed():
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def choose_runtime(format: str, *, gpu: bool | None = None) -> str:
    """The runtime ``auto`` takes for a model of ``format`` on this machine."""
    gpu = gpu_visible() if gpu is None else gpu
    order = (GPU_PREFERENCE if gpu else CPU_PREFERENCE)[format]
    for name in order:
        if gpu and name == "onnxruntime" and not _cuda_onnxruntime():
            continue
        if RUNTIMES[name].installed():
            return name
    raise RuntimeUnavailableError(
        f"no runtime installed can run a {format} export: install one of "
        + ", ".join(f"pip install 'atrous[{RUNTIMES[n].extra}]'" for n in order))


def require(name: str, format: str) -> Runtime:
    """The runtime ``name``, checked: known, installed, and able to load ``format``."""
    if name not in RUNTIMES:
        raise RuntimeUnavailableError(
            f"unknown runtime {name!r}; valid runtimes: {', '.join(RUNTIME_CHOICES)}")
    runtime = RUNTIMES[name]
    if format not in runtime.formats:
        exports = " or ".join(f"--format {f}" for f in runtime.formats)
        raise RuntimeUnavailableError(
            f"the {name} runtime cannot load a {format} export: export with "
            f"`atrous export {exports}`, or choose another runtime")
    if not runtime.installed():
        raise RuntimeUnavailableError(
            f"the {name} runtime needs the {runtime.package!r} package, which is not installed: "
            f"pip install 'atrous[{runtime.extra}]'")
    return runtime


def load_runtime(path: str | Path, runtime: str = DEFAULT_RUNTIME, *,
                 warmup_batch_sizes: Iterable[int] = (), threads: int | None = None,
                 gpu_memory_growth: bool = True,
                 inference_precision: str = precision.AUTO) -> Segmenter:
    """Loads and warms the model directory ``path`` with ``runtime`` (or the best one).

    Args:
        path: an export of any format (``model.inference.formats``).
        runtime: ``auto`` or a name from ``RUNTIMES``.
        warmup_batch_sizes: batch sizes run once at load.
        threads: intra-op CPU threads; None: the runtime's default (every core).
        gpu_memory_growth: TensorFlow allocates GPU memory as needed.
        inference_precision: ``auto``, ``fp32`` or ``bf16`` (``model.inference.precision``).

    Returns:
        a ``Segmenter``.

    Raises:
        RuntimeUnavailableError: the runtime is unknown, not installed or cannot load the
            format, or cannot compute in ``inference_precision`` on this CPU (a
            ``ValueError``: the CLI and the server report it without a traceback).
        ValueError: ``path`` is not an atrous export.
    """
    path = Path(path)
    format = formats.detect_format(path)
    ModelMetadata.read(path)  # fail early, and alike for every runtime, on a foreign directory
    if runtime == AUTO:
        runtime = choose_runtime(format)
        log.info("runtime auto: %s for a %s export on %s", runtime, format,
                 "a GPU machine" if gpu_visible() else "the CPU")
    module = importlib.import_module(require(runtime, format).module)
    segmenter = cast(Segmenter, module.load(path, warmup_batch_sizes=warmup_batch_sizes,
                                            threads=threads,
                                            gpu_memory_growth=gpu_memory_growth,
                                            inference_precision=inference_precision))
    log.info("loaded %s with %s %s on %s; inference precision %s", path, segmenter.runtime,
             segmenter.runtime_version, segmenter.device, segmenter.inference_precision.reason)
    return segmenter
