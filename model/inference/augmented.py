"""One image beyond the single pass: plan its model inputs, run them, merge, render.

The pipeline (``model.inference.pipeline``) uses these when ``InferenceOptions`` ask for
tiling or test-time augmentation, or when the output needs class probabilities (``json``
confidences, ``probabilities``, ``confidence``).  The default single-pass ``png`` and
``overlay`` never come here: they stay DeepLab's exact labels path.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from model.inference import imaging, tiling
from model.inference import probabilities as outputs
from model.inference.options import InferenceOptions

__all__ = [
    "Rendered",
    "StreamingResolve",
    "WorkTooLargeError",
    "needs_probabilities",
    "plan_for",
    "resolve",
    "working_bytes",
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


class StreamingResolve:
    """``resolve(merge_image(...))`` fed one model result at a time, in bounded memory.

    Each result is folded into a ``tiling.StreamingMerge`` as it arrives and every band
    of merged rows it hands on is turned into mask, confidence (and quantized planes)
    rows at once, so no [rows, cols, C] float map of the whole image is ever held by a
    single pass (see ``working_bytes``).  Every step is per pixel: the result equals
    ``resolve`` of the fully merged map.

    Args:
        plan: the image's plan.
        classes: the class filter (None: all).
        with_planes: also keep the quantized planes (``format=probabilities``).
    """

    def __init__(self, plan: tiling.ImagePlan, classes: tuple[int, ...] | None, *,
                 with_planes: bool = False) -> None:
        self.plan = plan
        self._classes = classes
        self._with_planes = with_planes
        rows, cols = plan.base
        self._mask = np.zeros((rows, cols), np.uint8)
        self._confidence = np.zeros((rows, cols), np.uint8)
        self._planes = np.zeros((0, 0, 0), np.uint8)
        self._ids: tuple[int, ...] = ()
        self._merge = tiling.StreamingMerge(plan, self._rows)

    def add(self, index: int, probabilities: np.ndarray) -> None:
        """Folds in input ``index``'s float [S, S, C] probabilities (``cut_image`` order)."""
        self._merge.add(index, probabilities)

    def _rows(self, top: int, probabilities: np.ndarray) -> None:
        stop = top + len(probabilities)
        mask = outputs.labels_of(probabilities, self._classes)
        planes, self._ids = outputs.class_planes(probabilities, self._classes)
        self._mask[top:stop] = mask
        self._confidence[top:stop] = outputs.quantize(outputs.confidence(planes, self._ids,
                                                                         mask))
        if self._with_planes:
            if self._planes.size == 0:
                self._planes = np.zeros(self.plan.base + (len(self._ids),), np.uint8)
            self._planes[top:stop] = outputs.quantize(planes)

    def result(self) -> Rendered:
        """The mask, confidence (and planes) at the image's size."""
        if not self._merge.done:
            raise ValueError("not every model input's result was added")
        size = self.plan.size
        planes = (outputs.resize_nearest(self._planes, size) if self._with_planes
                  else self._planes)
        return Rendered(outputs.resize_nearest(self._mask, size),
                        outputs.resize_nearest(self._confidence, size), planes, self._ids)


def working_bytes(plan: tiling.ImagePlan, num_classes: int, *, with_planes: bool = False,
                  batch_size: int = 1) -> int:
    """An upper estimate of the memory one image's probabilities path holds at once.

    The terms (float32 = 4 bytes, C = ``num_classes``, base = ``plan.base``):

    * the upload, the decoded image and its array for cutting (3 bytes a pixel each), and
      every model input (uint8 S x S x 3 each);
    * the merge (``tiling.StreamingMerge``): one tile row of accumulator for a single
      pass at the base resolution, else the largest pass plus the running sum;
    * results waiting to be folded in: a batch of float32 S x S x C;
    * the outputs: mask and confidence (2 bytes a base pixel, and again at the image's
      size), planes (C + 1 bytes a pixel) with ``format=probabilities``.
    """
    width, height = plan.size
    rows, cols = plan.base
    size = plan.input_size
    accumulate = 4 * (num_classes + 1)
    inputs = 9 * width * height + plan.tile_count * (3 * size * size + 8)
    first = plan.passes[0].grid
    if len(plan.passes) == 1 and (first.height, first.width) == tuple(plan.base):
        merge = min(size, rows) * cols * accumulate * 2  # the band, and its divided copy
    else:
        largest = max(p.grid.height * p.grid.width for p in plan.passes)
        merge = (largest + 2 * rows * cols) * accumulate
    waiting = 2 * batch_size * size * size * num_classes * 4
    planes = (num_classes + 1) * (rows * cols + width * height) if with_planes else 0
    rendered = 2 * (rows * cols + width * height) + planes
    return inputs + merge + waiting + rendered
