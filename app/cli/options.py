"""Options and helpers shared by the commands: the model flags come from ``ModelConfig``."""

import argparse
import contextlib
import dataclasses
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from model.config import HEADS, OUTPUT_STRIDES, PRECISIONS, ModelConfig

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
# The fields a user picks on the command line (the arg_scope constants stay ModelConfig's).
MODEL_FLAGS: dict[str, dict[str, Any]] = {
    "backbone": {},
    "output_stride": {"type": int, "choices": OUTPUT_STRIDES},
    "num_classes": {"type": int},
    "head": {"choices": HEADS},
    "input_size": {"type": int},
    "precision": {"choices": PRECISIONS},
}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """One flag per user-facing ``ModelConfig`` field, with its default."""
    group = parser.add_argument_group("network (when building from a checkpoint)")
    for name, kwargs in MODEL_FLAGS.items():
        group.add_argument("--" + name.replace("_", "-"), default=_DEFAULTS[name],
                           help=f"default {_DEFAULTS[name]}", **kwargs)


# What may differ from a training run's record when serving it (not the network's shape).
SERVING_FLAGS = ("input_size", "precision")


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The flags' network, or the one a training RUN (``--checkpoint RUN``) recorded.

    A RUN needs no model flags; ``--input-size`` and ``--precision`` may still change
    how it is served, any other flag set away from its default is a contradiction.
    """
    from model.checkpoints import run_config

    checkpoint = getattr(args, "checkpoint", None)
    recorded = run_config(checkpoint) if checkpoint else None
    flags = {name: getattr(args, name) for name in MODEL_FLAGS
             if getattr(args, name, None) is not None}
    if recorded is None:
        return ModelConfig(**flags)
    changed = {k: v for k, v in flags.items() if v != _DEFAULTS[k]}
    conflicts = sorted(k for k, v in changed.items()
                       if k not in SERVING_FLAGS and v != getattr(recorded, k))
    if conflicts:
        raise ValueError(f"{checkpoint} is a training run that records its network; drop "
                         + ", ".join("--" + k.replace("_", "-") for k in conflicts))
    return dataclasses.replace(recorded, **{k: v for k, v in changed.items()
                                            if k in SERVING_FLAGS})


@contextlib.contextmanager
def untrained_warnings_to_stderr() -> Iterator[None]:
    """An untrained export is worth one plain line on stderr, not a Python warning."""
    from model.export import UntrainedModelWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedModelWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, UntrainedModelWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)


def batch_size(text: str) -> Any:
    return [int(x) for x in text.split(",")]


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--runtime, --threads and --inference-precision, for the commands that run a model in
    this process."""
    from model.inference.precision import INFERENCE_PRECISIONS
    from model.inference.runtimes import RUNTIME_CHOICES

    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                        help="engine for a local model (default auto: the fastest installed "
                             "for the model's format and this device; docs/runtimes.md)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the runtime (default: every core)")
    parser.add_argument("--inference-precision", choices=INFERENCE_PRECISIONS, default="auto",
                        help="how the runtime computes (default auto: bf16 where OpenVINO runs "
                             "on a CPU with AMX-BF16 or AVX512-BF16, fp32 elsewhere; fp32 pins "
                             "DeepLab's exact arithmetic; docs/runtimes.md)")
