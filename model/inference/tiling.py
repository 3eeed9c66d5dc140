"""Beyond one letterboxed pass: tiles for large images, multi-scale and flip (numpy only).

A model with a fixed ``S x S`` input sees a 4000 x 3000 image shrunk to ``S`` on its
longer side, and structures a few output-stride cells wide vanish.  Tiling runs the
model on overlapping ``S x S`` crops of the image at (close to) native resolution and
blends their per-pixel class probabilities into one full-resolution map:

* ``plan_tiles`` places tiles so that neighbours overlap by at least a third of a tile,
  spread evenly, the last one flush with the image edge (no tile hangs out of the image
  unless the image is smaller than a tile, in which case the letterbox pads it, exactly
  as the single pass does);
* ``blend_window`` weighs each tile's pixels by a separable raised-sine window, so a
  pixel near a tile's edge (where the network saw less context) counts less than one in
  its middle, and neighbouring tiles fade into each other without a seam;
* ``Blender`` accumulates window-weighted probabilities and divides by the summed
  weights;
* ``StreamingMerge`` does the same as results arrive, so that a request holds memory in
  proportion to its output, not to its number of tiles: a single pass keeps one tile row
  of accumulator and hands finished rows on in bands; several passes keep one pass's
  accumulator and the running average at the base resolution.

Test-time augmentation follows DeepLab's ``eval.py`` (``predict_labels_multi_scale``):
the image is run at several scales, and mirrored, each pass's probabilities are resized
to a common resolution (the flipped ones flipped back), and the probabilities (softmax,
not logits) are averaged before the argmax.

The core is plain numpy on ``[H, W, C]`` float32 probability maps; the inference
pipeline cuts images into tiles, runs the model and calls these functions.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from model.inference import pixels, resample

__all__ = [
    "DEEPLAB_EVAL_SCALES",
    "DEFAULT_TILE_MAX_SIDE",
    "MIN_OVERLAP",
    "SCALE_RANGE",
    "Blender",
    "ImagePlan",
    "Pass",
    "StreamingMerge",
    "TileGrid",
    "average_probabilities",
    "blend",
    "blend_window",
    "cut_image",
    "cut_tiles",
    "merge_image",
    "plan_image",
    "parse_scales",
    "plan_tiles",
    "resize_probabilities",
    "scaled_shape",
    "tile_starts",
    "working_shape",
]

# DeepLab's eval scales for its multi-scale results (``--eval_scales``).
DEEPLAB_EVAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# Scales accepted from users: below a quarter nothing is left to see, above 2 the work
# (quadratic in the scale) grows without a published benefit.
SCALE_RANGE = (0.25, 2.0)
MAX_SCALES = 8
# Neighbouring tiles share at least this fraction of a tile.
MIN_OVERLAP = 1 / 3
# Tiling works at native resolution, unless the shorter side is longer than this: then the
# image is downscaled to it first (2049 = 4 x 512 + 1, DeepLab-friendly).
DEFAULT_TILE_MAX_SIDE = 2049
# Smallest window weight: keeps every covered pixel's total weight positive.
_WINDOW_FLOOR = 1e-3


def parse_scales(text: str | Iterable[float]) -> tuple[float, ...]:
    """``"0.5,0.75,1"`` (or numbers) -> validated scales, in the order given.

    Raises:
        ValueError: with a message naming the bad value (empty, not a number, out of
            ``SCALE_RANGE``, repeated, or more than ``MAX_SCALES``).
    """
    parts: list[str | float] = ([p.strip() for p in text.split(",")] if isinstance(text, str)
                                else list(text))
    if not parts or parts == [""]:
        raise ValueError("scales must list at least one number, e.g. 0.5,1.0,1.5")
    if len(parts) > MAX_SCALES:
        raise ValueError(f"at most {MAX_SCALES} scales, got {len(parts)}")
    scales: list[float] = []
    low, high = SCALE_RANGE
    for part in parts:
        try:
            scale = float(part)
        except (TypeError, ValueError):
            raise ValueError(f"scale {part!r} is not a number") from None
        if not math.isfinite(scale) or not low <= scale <= high:
            raise ValueError(f"scale {part!r} is outside [{low:g}, {high:g}]")
        if scale in scales:
            raise ValueError(f"scale {part!r} is repeated")
        scales.append(scale)
    return tuple(scales)


def working_shape(height: int, width: int, tile_max_side: int) -> tuple[int, int]:
    """(height, width) tiling works at: native, or downscaled so the shorter side is at
    most ``tile_max_side`` (aspect kept)."""
    if tile_max_side < 1:
        raise ValueError(f"tile_max_side must be positive, got {tile_max_side}")
    shorter = min(height, width)
    if shorter <= tile_max_side:
        return height, width
    return (max(1, height * tile_max_side // shorter), max(1, width * tile_max_side // shorter))


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of one multi-scale pass: the base shape times ``scale``, rounded."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def tile_starts(length: int, tile: int, min_overlap: float = MIN_OVERLAP) -> list[int]:
    """Offsets of the tiles covering ``length`` pixels, evenly spread, overlap kept.

    The first tile starts at 0, the last ends at ``length``; consecutive tiles overlap by
    at least ``ceil(min_overlap * tile)`` pixels.  A length up to one tile is one tile.
    """
    if tile < 1 or length < 1:
        raise ValueError(f"tile and length must be positive, got {tile}, {length}")
    if not 0 <= min_overlap < 1:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap}")
    if length <= tile:
        return [0]
    max_step = tile - math.ceil(min_overlap * tile)
    count = math.ceil((length - tile) / max_step) + 1
    span = length - tile
    # Integer spacing (floor of i * span / (count - 1)): steps differ by at most one pixel,
    # never exceed max_step, and the last tile is flush with the edge.
    return [i * span // (count - 1) for i in range(count)]


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The tiles over one ``height x width`` image, row-major.

    Attributes:
        height, width: the image the tiles cover.
        tile: the tile side S (the model's input size).
        boxes: (top, left, rows, cols) of each tile; rows/cols are below S only where the
            image itself is smaller than a tile.
    """

    height: int
    width: int
    tile: int
    boxes: tuple[tuple[int, int, int, int], ...]

    def __len__(self) -> int:
        return len(self.boxes)


def plan_tiles(height: int, width: int, tile: int,
               min_overlap: float = MIN_OVERLAP) -> TileGrid:
    """The tile grid covering an image (see ``tile_starts`` for the placement rule)."""
    rows = tile_starts(height, tile, min_overlap)
    cols = tile_starts(width, tile, min_overlap)
    boxes = tuple((top, left, min(tile, height - top), min(tile, width - left))
                  for top in rows for left in cols)
    return TileGrid(height, width, tile, boxes)


def cut_tiles(image: np.ndarray, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Crops ``grid``'s tiles out of an image as letterboxed model inputs.

    Args:
        image: uint8 [H, W, 3], H and W equal to the grid's.
        grid: from ``plan_tiles``.

    Returns:
        canvases: uint8 [N, S, S, 3], each tile at the top left, zeros beyond it (the
            graph fills the mean pixel there).
        sizes: int32 [N, 2] valid (rows, cols) of each tile.
    """
    if image.shape[:2] != (grid.height, grid.width):
        raise ValueError(f"image is {image.shape[:2]}, the grid {(grid.height, grid.width)}")
    size = grid.tile
    canvases = np.zeros((len(grid), size, size, image.shape[2]), np.uint8)
    for canvas, (top, left, rows, cols) in zip(canvases, grid.boxes, strict=True):
        canvas[:rows, :cols] = image[top:top + rows, left:left + cols]
    sizes = np.array([(rows, cols) for _, _, rows, cols in grid.boxes], np.int32).reshape(-1, 2)
    return canvases, sizes


def blend_window(size: int) -> np.ndarray:
    """float32 [size, size] tile weights: a separable raised sine, highest in the middle.

    ``sin(pi (i + 0.5) / size) ** 2`` per axis, floored at a small positive value so that
    pixels covered by a single tile (image borders) keep a positive total weight.
    """
    ramp = np.sin(np.pi * (np.arange(size, dtype=np.float64) + 0.5) / size) ** 2
    ramp = np.maximum(ramp, _WINDOW_FLOOR)
    return np.outer(ramp, ramp).astype(np.float32)


class Blender:
    """Accumulates window-weighted tile probabilities into one [H, W, C] map.

    Args:
        grid: the tiles that will be added.
        num_classes: channels of each tile's probabilities.
    """

    def __init__(self, grid: TileGrid, num_classes: int) -> None:
        self.grid = grid
        self._sum = np.zeros((grid.height, grid.width, num_classes), np.float32)
        self._weight = np.zeros((grid.height, grid.width), np.float32)
        self._window = blend_window(grid.tile)
        self._added = 0

    def add(self, index: int, probabilities: np.ndarray) -> None:
        """Adds tile ``index``'s float [S, S, C] probabilities (only its valid part is read)."""
        top, left, rows, cols = self.grid.boxes[index]
        weights = self._window[:rows, :cols]
        self._sum[top:top + rows, left:left + cols] += (probabilities[:rows, :cols]
                                                        * weights[..., None])
        self._weight[top:top + rows, left:left + cols] += weights
        self._added += 1

    def result(self) -> np.ndarray:
        """float32 [H, W, C]: the weighted mean of the tiles covering each pixel."""
        if self._added < len(self.grid):
            raise ValueError(f"only {self._added} of {len(self.grid)} tiles were added")
        self._sum /= self._weight[..., None]
        return self._sum


def blend(grid: TileGrid, probabilities: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Blends every tile's [S, S, C] probabilities (in grid order) into [H, W, C]."""
    if len(probabilities) != len(grid):
        raise ValueError(f"{len(probabilities)} tile results for {len(grid)} tiles")
    blender = Blender(grid, probabilities[0].shape[-1])
    for index, tile in enumerate(probabilities):
        blender.add(index, tile)
    return blender.result()


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centred bilinear taps (as Pillow and ``align_corners=False``)."""
    position = (np.arange(target, dtype=np.float64) + 0.5) * source / target - 0.5
    position = np.clip(position, 0, source - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, source - 1)
    return low, high, (position - low).astype(np.float32)


def resize_probabilities(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of float [H, W, C] maps to ``shape`` (rows, cols); stays a distribution
    (a convex combination of distributions is one)."""
    height, width = probabilities.shape[:2]
    if (height, width) == tuple(shape):
        return probabilities
    low, high, frac = _linear_taps(height, shape[0])
    rows = (probabilities[low] * (1 - frac)[:, None, None]
            + probabilities[high] * frac[:, None, None])
    low, high, frac = _linear_taps(width, shape[1])
    return (rows[:, low] * (1 - frac)[None, :, None]
            + rows[:, high] * frac[None, :, None]).astype(np.float32)


def average_probabilities(passes: Iterable[tuple[np.ndarray, bool]],
                          shape: tuple[int, int]) -> np.ndarray:
    """DeepLab's multi-scale + flip merge: the mean of every pass's probabilities.

    Args:
        passes: (probabilities float [h, w, C], flipped) per pass; a flipped pass was run
            on the left-right mirrored image and is mirrored back here.
        shape: (rows, cols) of the common resolution every pass is resized to.

    Returns:
        float32 [rows, cols, C].
    """
    total: np.ndarray | None = None
    count = 0
    for probabilities, flipped in passes:
        resized = resize_probabilities(probabilities, shape)
        if flipped:
            resized = resized[:, ::-1]
        total = resized.astype(np.float32, copy=True) if total is None else total + resized
        count += 1
    if total is None:
        raise ValueError("no passes to average")
    total /= count
    return total


# -- One image's plan: every (scale, flip) pass and its tiles, then their merge. --------


@dataclasses.dataclass(frozen=True)
class Pass:
    """One resize (and maybe mirror) of the image, and the tiles it is cut into."""

    scale: float
    flipped: bool
    grid: TileGrid


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """Every model input one image needs, and the resolution their results merge at.

    Attributes:
        size: (width, height) of the image.
        base: (rows, cols) of the merged probabilities: the letterboxed size (longer side
            S) without tiling, the working size (native, or shorter side at most
            ``tile_max_side``) with it.
        tiled: whether the base is the working size.
        passes: (scale, flip) passes, in the order their tiles are cut.
        input_size: the model's S.
    """

    size: tuple[int, int]
    base: tuple[int, int]
    tiled: bool
    passes: tuple[Pass, ...]
    input_size: int

    @property
    def tile_count(self) -> int:
        """Model inputs (S x S canvases) this image needs."""
        return sum(len(p.grid) for p in self.passes)

    @property
    def model_pixels(self) -> int:
        """The work: tiles x S x S."""
        return self.tile_count * self.input_size ** 2


def plan_image(width: int, height: int, input_size: int, *, tiled: bool,
               scales: Sequence[float] = (1.0,), flip: bool = False,
               tile_max_side: int = DEFAULT_TILE_MAX_SIDE) -> ImagePlan:
    """Plans the passes of one ``width x height`` image (see ``ImagePlan``).

    A pass whose scaled image fits the input is one letterboxed canvas, exactly as the
    single pass; a bigger one (scales above 1, or tiling) is cut into overlapping tiles.
    """
    if tiled:
        base = working_shape(height, width, tile_max_side)
    else:
        longer = max(width, height)  # as preprocessing.resized_shape: longer side -> S
        base = (max(1, height * input_size // longer), max(1, width * input_size // longer))
    passes: list[Pass] = []
    for scale in scales:
        rows, cols = base if scale == 1.0 else scaled_shape(*base, scale)
        grid = plan_tiles(rows, cols, input_size)
        passes.extend(Pass(scale, flipped, grid) for flipped in ((False, True) if flip
                                                                 else (False,)))
    return ImagePlan((width, height), base, tiled, tuple(passes), input_size)


def cut_image(image: Image.Image, plan: ImagePlan) -> tuple[np.ndarray, np.ndarray]:
    """Every model input of ``plan`` from an RGB image, pass after pass, tile after tile.

    Returns:
        canvases uint8 [N, S, S, 3] and valid sizes int32 [N, 2], N = ``plan.tile_count``.
    """
    if image.size != plan.size:
        raise ValueError(f"the plan is for a {plan.size} image, got {image.size}")
    canvases, sizes = [], []
    resized: dict[tuple[int, int], np.ndarray] = {}
    for step in plan.passes:
        shape = (step.grid.height, step.grid.width)
        if shape not in resized:
            same = shape == (image.height, image.width)
            # Lanczos, as the letterbox: at scale 1 without tiling this is its exact input.
            resized[shape] = (pixels.view(image) if same
                              else resample.lanczos(image, (shape[1], shape[0])))
        source = resized[shape][:, ::-1] if step.flipped else resized[shape]
        tiles, valid = cut_tiles(source, step.grid)
        canvases.append(tiles)
        sizes.append(valid)
    return np.concatenate(canvases), np.concatenate(sizes)


def merge_image(plan: ImagePlan, probabilities: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Blends each pass's tiles and averages the passes (DeepLab's multi-scale + flip).

    Args:
        plan: from ``plan_image``.
        probabilities: float [N, S, S, C], one per tile, in ``cut_image``'s order.

    Returns:
        float32 [rows, cols, C] at ``plan.base``.
    """
    if len(probabilities) != plan.tile_count:
        raise ValueError(f"{len(probabilities)} results for {plan.tile_count} tiles")

    def blended() -> Iterable[tuple[np.ndarray, bool]]:
        start = 0
        for step in plan.passes:
            stop = start + len(step.grid)
            yield blend(step.grid, probabilities[start:stop]), step.flipped
            start = stop

    return average_probabilities(blended(), plan.base)


# -- The same merge, streamed: results are folded in as they arrive. ---------------------

#: Rows handed on at once when a finished map is emitted in bands.
EMIT_BAND_ROWS = 256
RowsFn = Callable[[int, np.ndarray], None]


class _BandBlender:
    """``Blender`` over one grid whose tiles arrive row-major, keeping one tile row.

    When the first tile of a new tile row arrives, every image row above its top is
    covered by no later tile: those rows are divided by their weights and handed to
    ``emit(top, rows)``, and the accumulator moves down.  It never holds more than
    ``min(S, H)`` rows: float32 ``min(S, H) x W x (C + 1)``.  The arithmetic is
    ``Blender``'s, in the same order, so the rows are bit-identical to its result.
    """

    def __init__(self, grid: TileGrid, num_classes: int, emit: RowsFn) -> None:
        self.grid = grid
        self._emit = emit
        self._columns = len({left for _, left, _, _ in grid.boxes})
        height = min(grid.tile, grid.height)
        self._sum = np.zeros((height, grid.width, num_classes), np.float32)
        self._weight = np.zeros((height, grid.width), np.float32)
        self._window = blend_window(grid.tile)
        self._top = 0  # the image row the accumulator's first row stands for

    def add(self, index: int, probabilities: np.ndarray) -> None:
        top, left, rows, cols = self.grid.boxes[index]
        if index % self._columns == 0 and top > self._top:
            self._advance(top)
        at = top - self._top
        weights = self._window[:rows, :cols]
        self._sum[at:at + rows, left:left + cols] += (probabilities[:rows, :cols]
                                                      * weights[..., None])
        self._weight[at:at + rows, left:left + cols] += weights

    def _advance(self, top: int) -> None:
        done = top - self._top
        self._emit(self._top, self._sum[:done] / self._weight[:done, :, None])
        kept = len(self._sum) - done
        self._sum[:kept] = self._sum[done:]
        self._weight[:kept] = self._weight[done:]
        self._sum[kept:] = 0
        self._weight[kept:] = 0
        self._top = top

    def finish(self) -> None:
        done = self.grid.height - self._top
        self._emit(self._top, self._sum[:done] / self._weight[:done, :, None])


class StreamingMerge:
    """``merge_image`` fed one tile at a time, handing the merged map on in row bands.

    Results may arrive in any order; they are folded in ``cut_image``'s order (one that
    comes early waits for those before it), so the output is bit-identical to
    ``merge_image``'s.  Memory, float32 with C classes, base = ``plan.base``:

    * one pass at the base resolution (tiling, or the single letterboxed canvas): one
      tile row of accumulator, ``min(S, rows) x cols x (C + 1)``;
    * several passes (scales, flip): the pass being blended and the running sum,
      ``(scale^2 + 1) x rows x cols x (C + 1)`` at most (scales are at most 2).

    Args:
        plan: from ``plan_image``.
        emit: called with (first row, float32 [n, cols, C] merged probabilities) for
            consecutive bands of rows, top to bottom, covering ``plan.base``.
    """

    def __init__(self, plan: ImagePlan, emit: RowsFn) -> None:
        self.plan = plan
        self._emit = emit
        self._next = 0  # index of the next result to fold in
        self._early: dict[int, np.ndarray] = {}
        self._pass = 0
        self._pass_start = 0
        self._total: np.ndarray | None = None
        self._banded: _BandBlender | None = None
        self._blender: Blender | None = None
        first = plan.passes[0].grid
        self._streamed = (len(plan.passes) == 1
                          and (first.height, first.width) == tuple(plan.base))

    @property
    def done(self) -> bool:
        return self._next == self.plan.tile_count

    def add(self, index: int, probabilities: np.ndarray) -> None:
        """Adds input ``index``'s float [S, S, C] probabilities (``cut_image`` order)."""
        if not 0 <= index < self.plan.tile_count or index < self._next or index in self._early:
            raise ValueError(f"result {index} is out of range or was already added")
        self._early[index] = probabilities
        while self._next in self._early:
            self._fold(self._early.pop(self._next))
            self._next += 1

    def _fold(self, probabilities: np.ndarray) -> None:
        step = self.plan.passes[self._pass]
        index = self._next - self._pass_start
        if self._streamed:
            if self._banded is None:
                self._banded = _BandBlender(step.grid, probabilities.shape[-1], self._emit)
            self._banded.add(index, probabilities)
            if self._next + 1 == self.plan.tile_count:
                self._banded.finish()
                self._banded = None
            return
        if self._blender is None:
            self._blender = Blender(step.grid, probabilities.shape[-1])
        self._blender.add(index, probabilities)
        if index + 1 < len(step.grid):
            return
        # The pass is whole: into the running sum (as average_probabilities), then freed.
        resized = resize_probabilities(self._blender.result(), self.plan.base)
        self._blender = None
        if step.flipped:
            resized = resized[:, ::-1]
        self._total = (resized.astype(np.float32, copy=True) if self._total is None
                       else self._total + resized)
        del resized
        self._pass += 1
        self._pass_start = self._next + 1
        if self._pass == len(self.plan.passes):
            self._total /= len(self.plan.passes)
            for top in range(0, len(self._total), EMIT_BAND_ROWS):
                self._emit(top, self._total[top:top + EMIT_BAND_ROWS])
            self._total = None
