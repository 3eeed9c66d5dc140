"""The arithmetic a runtime computes in, chosen per machine when a model is loaded.

An export records the precision its network was *built* in (``ModelMetadata.precision``:
fp32, fp16, bf16 or int8); the *inference* precision is how the runtime evaluates that
graph on this machine.  OpenVINO can run an fp32 graph in bf16 on CPUs with bf16 units, at
a fraction of the cost, and ``auto`` takes that where this project has measured the labels
to stay within budget (docs/runtimes.md, "Inference precision"):

* ``auto`` (the default): bf16 on a CPU with AMX-BF16 or AVX512-BF16, fp32 elsewhere (and
  for an INT8 export's float layers, measured faster so);
* ``fp32``: DeepLab's exact arithmetic, whatever the CPU;
* ``bf16``: bf16, refused on a CPU without bf16 units (OpenVINO would quietly run fp32).

TensorFlow and ONNX Runtime have no such switch: they compute in the export's own
precision, which ``auto`` and ``fp32`` accept and ``bf16`` refuses (export with
``--precision bf16`` instead, or serve with OpenVINO).
"""

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path

AUTO = "auto"
FP32 = "fp32"
BF16 = "bf16"
INFERENCE_PRECISIONS = (AUTO, FP32, BF16)
DEFAULT_INFERENCE_PRECISION = AUTO

#: /proc/cpuinfo flags of the bf16 units OpenVINO's CPU plugin runs bf16 on, with the
#: names people know them by.  AMX-BF16 (Intel Sapphire Rapids and later) is the fast one;
#: AVX512-BF16 (Cooper Lake, AMD Zen 4 and later) only has dot-product instructions.
BF16_UNITS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}

#: The runtimes that can switch an export's arithmetic to bf16 at load.
SWITCHING_RUNTIMES = ("openvino",)

#: What ``auto`` is held to (tests/inference/test_precision.py, benchmarks/RESULTS.md):
#: bf16 labels equal to fp32's on this share of pixels at least.
LABEL_AGREEMENT_BUDGET = 0.995


@dataclasses.dataclass(frozen=True)
class InferencePrecision:
    """The precision a loaded model computes in, and why (shown at start, in ``/v1/model``).

    Attributes:
        name: ``fp32``, ``bf16``, ``fp16`` or ``int8`` (the last two: the export's own).
        reason: one sentence for a person: the setting, and the CPU or runtime behind it.
    """

    name: str
    reason: str


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_units(flags: Iterable[str] | None = None) -> list[str]:
    """The bf16 units among ``flags`` (this CPU's by default), by their common names."""
    present = set(cpu_flags() if flags is None else flags)
    return [name for flag, name in BF16_UNITS.items() if flag in present]


def choose_precision(requested: str, runtime: str, export_precision: str = FP32, *,
           flags: Iterable[str] | None = None) -> InferencePrecision:
    """The inference precision for ``runtime`` on this CPU (or one with ``flags``).

    Args:
        requested: ``auto``, ``fp32`` or ``bf16``.
        runtime: the runtime that will load the model (``tensorflow``, ``openvino``, ...).
        export_precision: the precision the export was built in (its metadata's).
        flags: CPU flags to decide on; None reads this machine's.

    Raises:
        ValueError: an unknown setting, or ``bf16`` where it cannot run (the message says
            what to do instead).
    """
    if requested not in INFERENCE_PRECISIONS:
        raise ValueError(f"unknown inference precision {requested!r}; valid: "
                         + ", ".join(INFERENCE_PRECISIONS))
    if runtime not in SWITCHING_RUNTIMES:
        if requested == BF16 and export_precision != BF16:
            raise ValueError(
                f"the {runtime} runtime computes in the export's own precision "
                f"({export_precision}) and cannot switch it to bf16: serve with "
                "--runtime openvino, or export with --precision bf16")
        return InferencePrecision(export_precision, f"{requested}: the {runtime} runtime "
                                  f"computes in the export's own precision")
    if export_precision == "int8":  # the hint governs the layers NNCF left in float
        if requested == AUTO:
            # In bf16 they were slower, not faster (0.149 vs 0.134 s for ResNet-101 513 on
            # AVX512-BF16, benchmarks/RESULTS.md), with the same labels: fp32.
            return InferencePrecision(FP32, "auto: fp32 for the layers left in float (faster "
                                      "than bf16 beside int8 ones); its int8 layers stay int8")
        choice = _choose_switchable(requested, bf16_units(flags))
        return dataclasses.replace(choice, reason=choice.reason + "; its int8 layers stay int8")
    return _choose_switchable(requested, bf16_units(flags))


def _choose_switchable(requested: str, units: list[str]) -> InferencePrecision:
    if requested == FP32:
        return InferencePrecision(FP32, "fp32: pinned (DeepLab's exact arithmetic)")
    if requested == BF16:
        if not units:
            raise ValueError("inference precision bf16 needs a CPU with AMX-BF16 or "
                             "AVX512-BF16, and this one has neither: use auto or fp32")
        return InferencePrecision(BF16, f"bf16: pinned (the CPU has {', '.join(units)})")
    if units:
        return InferencePrecision(BF16, f"auto: bf16, as the CPU has {', '.join(units)} "
                                  f"(bf16 labels agree with fp32's on >= "
                                  f"{LABEL_AGREEMENT_BUDGET:.1%} of pixels)")
    return InferencePrecision(FP32, "auto: fp32, as the CPU has no AMX-BF16 or AVX512-BF16")
