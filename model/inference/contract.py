"""The serving contract: signature names, the metadata beside a model, the runtime seam.

A SavedModel written by ``model.export`` has one signature, ``serving_default``::

    images: uint8 [N, S, S, 3]  RGB, letterboxed: image at the top left, S = input_size
    sizes:  int32 [N, 2]        valid (height, width) of each image inside the S x S canvas
    ->
    labels: uint8 [N, S, S]     class ids (argmax in the graph; only labels leave the device)

and a second signature, ``probabilities``, on the same inputs::

    ->
    probabilities: float32 [N, S, S, C]  softmax of the logits upsampled to S x S
                                         (their argmax is ``labels``)

for tiling, test-time augmentation and per-class confidences; exports written before it
existed lack it (the runtime then says to re-export).

And ``assets.extra/atrous.json`` with the ``ModelMetadata`` below.  The OpenVINO and ONNX
exports (``model.inference.formats``) keep the ``serving_default`` signature (not, yet, the
probabilities one), and the metadata file at the same place in their directory.  A runtime
(``model.inference.runtimes``) loads such a model and is a ``Segmenter``: the one seam
between the inference pipeline and whatever engine runs the network.  Nothing here
imports TensorFlow.
"""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.inference.precision import InferencePrecision

SIGNATURE_NAME = "serving_default"
INPUT_IMAGES = "images"
INPUT_SIZES = "sizes"
OUTPUT_LABELS = "labels"
PROBABILITIES_SIGNATURE = "probabilities"
OUTPUT_PROBABILITIES = "probabilities"
METADATA_PATH = Path("assets.extra") / "atrous.json"
METADATA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What the server and clients need to know about an exported model."""

    backbone: str
    output_stride: int
    num_classes: int
    head: str
    input_size: int
    precision: str
    trained: bool
    weights: str
    labels: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    tensorflow_version: str
    version: int = METADATA_VERSION
    #: ``savedmodel``, ``openvino`` or ``onnx`` (``model.inference.formats``); metadata
    #: written before the field existed is a SavedModel's.  ``precision`` is ``int8`` for a
    #: post-training-quantized export.
    format: str = "savedmodel"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["labels"] = tuple(values["labels"])
        values["colors"] = tuple(tuple(c) for c in values["colors"])
        return cls(**values)

    @classmethod
    def read(cls, saved_model_dir: str | Path) -> "ModelMetadata":
        """Reads the metadata of an exported model directory, whatever its format."""
        path = Path(saved_model_dir) / METADATA_PATH
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(
                f"{saved_model_dir} is not an atrous model directory: {METADATA_PATH} is missing"
            ) from None
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid atrous metadata: {e}") from None

    def write(self, saved_model_dir: str | Path) -> None:
        from model.atomic import atomic_write_text

        atomic_write_text(Path(saved_model_dir) / METADATA_PATH, self.to_json())


class Segmenter(Protocol):
    """A loaded, warmed model: letterboxed uint8 images [N, S, S, 3] and int32 valid sizes
    [N, 2] -> uint8 labels [N, S, S].

    Attributes:
        metadata: what was exported (backbone, input size, labels, ...).
        runtime: the engine that runs it (``"tensorflow"``, ``"openvino"``, ``"onnxruntime"``).
        runtime_version: that engine's version.
        device: where it runs, e.g. ``"CPU"`` or ``"GPU:0 (NVIDIA H100)"``.
        inference_precision: the arithmetic it computes in, and why
            (``model.inference.precision``).
        oom_errors: exceptions meaning "this batch is too big": the batcher splits it.
    """

    metadata: ModelMetadata
    runtime: str
    runtime_version: str
    device: str
    inference_precision: InferencePrecision
    oom_errors: tuple[type[BaseException], ...]

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray: ...

    # Optional, for tiling, test-time augmentation and probability outputs (see
    # ``probabilities_of``): uint8 [N, S, S, 3], int32 [N, 2] -> float32 [N, S, S, C].
    # A runtime that cannot give them omits the method or sets ``has_probabilities = False``;
    # the server then answers 501 ``not_supported`` to requests that need them.
    #
    # def probabilities(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray: ...


class ProbabilitiesUnavailableError(RuntimeError):
    """The runtime (or an old export) cannot give class probabilities."""


def probabilities_of(segmenter: object) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """A segmenter's optional ``probabilities(images, sizes)`` method, or None.

    Runtimes may implement it (uint8 [N, S, S, 3], int32 [N, 2] -> float32 [N, S, S, C]
    softmax probabilities, the labels' argmax); those that do not, or whose model lacks it,
    omit the method or set ``has_probabilities = False``.  Tiling, test-time augmentation,
    ``format=json`` confidences and the probability formats need it.
    """
    method = getattr(segmenter, "probabilities", None)
    if not callable(method) or not getattr(segmenter, "has_probabilities", True):
        return None
    return method
