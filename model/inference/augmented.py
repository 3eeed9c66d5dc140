"""One image beyond the single pass: plan its model inputs, run them, merge, render.

The pipeline (``model.inference.pipeline``) uses these when ``InferenceOptions`` ask for
tiling or test-time augmentation, or when the output needs class probabilities (``json``
confidences, ``probabilities``, ``confidence``).  The default single-pass ``png`` and
``overlay`` never come here: they stay DeepLab's exact labels path.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image

from model.inference import imaging, tiling
from model.inference import probabilities as outputs
from model.inference.options import InferenceOptions

__all__ = [
    "Rendered",
    "WorkTooLargeError",
    "needs_probabilities",
    "plan_for",
    "resolve",
    "run_plan",
]

ProbabilitiesFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class WorkTooLargeError(imaging.ImageError):
    """The requested tiling / scales / flip would need more model inputs than allowed."""


def needs_probabilities(options: InferenceOptions, output: str) -> bool:
    """Whether this request goes through the probabilities path."""
    return not options.single_pass or output in ("json", "probabilities", "confidence")


def plan_for(size: tuple[int, int], input_size: int, options: InferenceOptions, *,
             max_model_pixels: int | None = None,
             max_tiles: int | None = None) -> tiling.ImagePlan:
    """The plan of one (width, height) image, checked against the work budget.

    Raises:
        WorkTooLargeError: more than ``max_model_pixels`` (tiles x S^2) or ``max_tiles``.
    """
    width, height = size
    plan = tiling.plan_image(width, height, input_size,
                             tiled=options.tiles(width, height, input_size),
                             scales=options.scales, flip=options.flip,
                             tile_max_side=options.tile_max_side)
    limit = None
    if max_model_pixels is not None and plan.model_pixels > max_model_pixels:
        limit = f"the limit is {max_model_pixels / 1e6:.1f} MP ({max_model_pixels} pixels)"
    elif max_tiles is not None and plan.tile_count > max_tiles:
        limit = f"the limit is {max_tiles} inputs per image (the queue size)"
    if limit is not None:
        raise WorkTooLargeError(
            f"a {width}x{height} image with tiling={options.tiling.value}, scales="
            f"{','.join(f'{s:g}' for s in options.scales)}, flip={str(options.flip).lower()} "
            f"needs {plan.tile_count} model inputs of {input_size}x{input_size} "
            f"({plan.model_pixels / 1e6:.1f} MP); {limit}: use fewer scales, no flip, "
            "tiling=off, or a smaller image")
    return plan


def run_plan(probabilities: ProbabilitiesFn, image: Image.Image, plan: tiling.ImagePlan, *,
             batch_size: int = 8) -> np.ndarray:
    """Runs every model input of ``plan`` (``batch_size`` at a time) and merges them.

    Returns:
        float32 [rows, cols, C] probabilities at ``plan.base``.
    """
    canvases, sizes = tiling.cut_image(image, plan)
    results = [probabilities(canvases[i:i + batch_size], sizes[i:i + batch_size])
               for i in range(0, len(canvases), batch_size)]
    return tiling.merge_image(plan, np.concatenate(results))


@dataclasses.dataclass(frozen=True)
class Rendered:
    """The mask at the image's size, and the per-class mean confidences."""

    mask: np.ndarray  # uint8 [H, W]
    confidence: np.ndarray  # uint8 [H, W], 255 = certain
    planes: np.ndarray  # uint8 [H, W, K]
    class_ids: tuple[int, ...]

    @property
    def class_confidences(self) -> dict[int, float]:
        return outputs.class_confidences(self.mask, self.confidence)


def resolve(probabilities: np.ndarray, size: tuple[int, int],
            classes: tuple[int, ...] | None, *, with_planes: bool = False) -> Rendered:
    """Merged probabilities at the plan's base -> mask, confidence (and planes) at ``size``.

    The argmax is taken at the base resolution and resized with nearest neighbour, as the
    single pass does with its labels.
    """
    mask = outputs.labels_of(probabilities, classes)
    planes, ids = outputs.class_planes(probabilities, classes)
    confidence = outputs.quantize(outputs.confidence(planes, ids, mask))
    quantized = outputs.quantize(planes) if with_planes else np.zeros((0, 0, 0), np.uint8)
    return Rendered(outputs.resize_nearest(mask, size), outputs.resize_nearest(confidence, size),
                    outputs.resize_nearest(quantized, size) if with_planes else quantized, ids)
