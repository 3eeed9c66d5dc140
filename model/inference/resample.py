"""Pillow's Lanczos resize of an RGB image, the same bytes, as banded matrix products.

DeepLab's input is Pillow's antialiased (Lanczos) resize, and on a GPU node it is most of the
host's work per image (``benchmarks/resize_bench.py``).  Pillow computes it in scalar C;
this computes exactly the same numbers with BLAS, 1.35-2.3x faster on the CPU measured
(once a size's coefficients are cached):

* the coefficients are Pillow's (``libImaging/Resample.c``): the same double-precision
  formulas in the same order, with the same C library's ``sin``, then rounded to Pillow's
  22-bit fixed point;
* each output is a sum of 8-bit pixels times those integers.  Every partial sum is an
  integer below 2^31, so float64 holds it exactly in any order (BLAS may reorder and fuse):
  ``floor(sum / 2^22 + 0.5)`` clamped to 0..255 is Pillow's ``clip8((2^21 + sum) >> 22)``;
* the passes run as Pillow runs them: horizontal, the result rounded to 8 bits, then
  vertical.  Pillow 13 goes vertical-first for a tall reduction: that case, a mode other
  than RGB and an axis left as it is are resized by Pillow itself.

Outputs are grouped eight at a time, so that a product multiplies only the input span
those eight read.  Groups whose spans start at (nearly) even steps are multiplied in one
stacked call (``_Run``: a strided view of the input, one matrix per group): every numpy
call releases and retakes the GIL, and on a loaded server each retake can be a context
switch, so fewer calls cost less than their arithmetic suggests.  Each product stays under
OpenBLAS's threading threshold (it runs on the calling thread: decode threads must not wake
a BLAS pool), and the working buffers are reused per thread (fresh pages cost more than
the arithmetic).
"""

import dataclasses
import functools
import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided
from PIL import Image

from model.inference import pixels

_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images
_GROUP = 8  # outputs per matrix product
_MAX_WORK = 1 << 18  # m * n * k of one product: OpenBLAS runs it single-threaded
_BUFFER_BYTES = 2 << 20  # a thread keeps its working buffers up to this size
_MIN_STRIPE = 64  # input rows per product, at least (under _MAX_WORK)
_RUN_SLACK = 1.25  # a stacked run's windows are at most this much wider than a group's span

_local = threading.local()


def lanczos(image: Image.Image, size: tuple[int, int],
            out: np.ndarray | None = None) -> np.ndarray:
    """``np.asarray(image.resize(size, Image.Resampling.LANCZOS))``, the same bytes.

    Args:
        image: any PIL image (only RGB takes the fast path).
        size: (width, height) wanted.
        out: uint8 [height, width, bands] to write into (a canvas's region), or None.

    Returns:
        uint8 [height, width, bands]: ``out`` if given.
    """
    width, height = size
    if (image.mode != "RGB" or width == image.width or height == image.height
            or not _horizontal_first(image.size, size)):
        resized = pixels.view(image.resize(size, Image.Resampling.LANCZOS))
        if out is None:
            return resized
        out[...] = resized
        return out
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    _resize(image, out)
    return out


def _horizontal_first(old: tuple[int, int], new: tuple[int, int]) -> bool:
    """Pillow 13's order: vertical first when the height shrinks more than twice as much as
    the width (Pillow 12 always goes horizontal first: where both agree, so does this)."""
    shrink_x, shrink_y = old[0] - new[0], old[1] - new[1]
    return not (shrink_y > 0 and shrink_y > shrink_x * 2)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """Pillow's ``lanczos_filter``, element by element with the same double operations: the
    arithmetic is IEEE's either way, and ``sin`` is the C library's (``math.sin``), not
    numpy's own, which may differ in the last bit."""
    def sinc(x: np.ndarray) -> np.ndarray:
        angle = x * math.pi
        sines = np.fromiter(map(math.sin, angle.ravel().tolist()), np.float64, angle.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(x == 0.0, 1.0, sines.reshape(angle.shape) / angle)

    inside = (x >= -3.0) & (x < 3.0)
    return np.where(inside, sinc(x) * sinc(x / 3), 0.0)


class _Axis:
    """One axis's coefficients, as Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``
    make them, grouped: (first output, end, first input, end, float64 [inputs, outputs])."""

    def __init__(self, in_size: int, out_size: int) -> None:
        scale = in_size / out_size
        filterscale = max(scale, 1.0)
        support = 3.0 * filterscale
        inverse = 1.0 / filterscale
        center = (np.arange(out_size) + 0.5) * scale
        first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
        count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
        taps = np.arange(int(count.max()))
        used = taps < count[:, None]
        weights = np.where(used, _lanczos3(
            ((taps + first[:, None]) - center[:, None] + 0.5) * inverse), 0.0)
        # Summed in order, as Pillow's loop does (np.sum would pair them up).
        total = np.add.accumulate(weights, axis=1)[:, -1:]
        weights = np.where(total != 0.0, weights / np.where(total != 0.0, total, 1.0), weights)
        scaled = weights * (1 << _BITS)
        fixed = np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5))
        self.groups = []
        for start in range(0, out_size, _GROUP):
            end = min(start + _GROUP, out_size)
            low, high = int(first[start]), int((first[start:end] + count[start:end]).max())
            matrix = np.zeros((high - low, end - start))
            for j in range(end - start):
                offset = int(first[start + j]) - low
                matrix[offset:offset + count[start + j], j] = fixed[start + j, :count[start + j]]
            matrix *= 2.0 ** -_BITS  # a power of two: still exact
            self.groups.append((start, end, low, high, matrix))
        self.runs = _runs(self.groups, in_size, scale)
        self.window = max(run.window for run in self.runs)


@dataclasses.dataclass(frozen=True)
class _Run:
    """Groups ``first`` .. ``first + count - 1`` as one stacked product: group ``k`` reads
    inputs ``start + k * step`` .. ``+ window`` (a window covering its span: the weights
    outside the span are zeros, which add exact zeros)."""

    first: int
    count: int
    start: int
    step: int
    window: int
    matrices: np.ndarray  # float64 [count, window, _GROUP]; a lone group: its own width

    @property
    def outputs(self) -> tuple[int, int]:
        return self.first * _GROUP, self.first * _GROUP + self.count * self.matrices.shape[2]


def _runs(groups: list, in_size: int, scale: float) -> list[_Run]:
    """The groups as stacked runs at an even step (the groups' nominal step, ``_GROUP *
    scale``, rounded down or up: whichever makes fewer runs).  A run grows from its first
    group while its full groups' spans fit windows inside the input no more than
    ``_RUN_SLACK`` wider than their widest span; a group alone always fits."""
    best: list[tuple[int, int, int, int, int]] = []
    for step in sorted({math.floor(_GROUP * scale), math.ceil(_GROUP * scale)}):
        runs, first = [], 0
        while first < len(groups):
            _, _, low, high, _ = groups[first]
            run = (first, 1, low, 0, high - low)
            start, reach, widest = low, high, high - low  # reach: max(high - k * step)
            for k in range(1, len(groups) - first):
                begin, finish, low, high, _ = groups[first + k]
                start, reach = min(start, low - k * step), max(reach, high - k * step)
                widest = max(widest, high - low)
                window = reach - start
                if (finish - begin != _GROUP or start < 0 or window > _RUN_SLACK * widest
                        or start + k * step + window > in_size):
                    break
                run = (first, k + 1, start, step, window)
            runs.append(run)
            first += run[1]
        if not best or len(runs) < len(best):
            best = runs
    return [_run(groups, *run) for run in best]


def _run(groups: list, first: int, count: int, start: int, step: int, window: int) -> _Run:
    """The run's matrices: each group's own, placed in its window."""
    if count == 1:
        return _Run(first, 1, start, step, window, groups[first][4][None])
    matrices = np.zeros((count, window, _GROUP))
    for k, (_, _, low, high, matrix) in enumerate(groups[first:first + count]):
        offset = low - (start + k * step)
        matrices[k, offset:offset + high - low] = matrix
    return _Run(first, count, start, step, window, matrices)


@functools.lru_cache(maxsize=64)
def _axis(in_size: int, out_size: int) -> _Axis:
    return _Axis(in_size, out_size)


def _buffer(name: str, shape: tuple[int, int]) -> np.ndarray:
    """A float64 working buffer: this thread's own, grown as needed and kept, unless it is
    over ``_BUFFER_BYTES`` (a big photo's), which is the call's alone."""
    count = shape[0] * shape[1]
    if count * 8 > _BUFFER_BYTES:
        return np.empty(shape)
    buffer = getattr(_local, name, None)
    if buffer is None:
        buffer = np.empty(_BUFFER_BYTES // 8)
        setattr(_local, name, buffer)
    return buffer[:count].reshape(shape)


def _round(values: np.ndarray) -> None:
    """sum / 2^22 -> Pillow's clip8((2^21 + sum) >> 22), in place."""
    values += 0.5
    np.floor(values, out=values)
    np.clip(values, 0, 255, out=values)


def _resize(image: Image.Image, out: np.ndarray) -> None:
    width, height = image.size
    bands = 3
    out_height, out_width = out.shape[:2]
    across, down = _axis(width, out_width), _axis(height, out_height)
    row_size = bands * out_width
    # Input rows converted at once: few enough for one product under _MAX_WORK and for the
    # buffer, but not so few that a wide photo costs thousands of tiny products.
    stripe = max(1, min(_MAX_WORK // (_GROUP * across.window * bands),
                        max(_BUFFER_BYTES // (bands * width * 8), _MIN_STRIPE)))
    columns = max(1, _MAX_WORK // (_GROUP * down.window))
    # Bands of output rows whose input rows' horizontal pass fits in the buffer; the rows
    # two bands share are moved, not computed again.
    groups, bands_of_rows, i = down.groups, [], 0
    while i < len(groups):
        j, low = i + 1, groups[i][2]
        while j < len(groups) and (groups[j][3] - low) * row_size * 8 <= _BUFFER_BYTES:
            j += 1
        bands_of_rows.append((i, j, low, groups[j - 1][3]))
        i = j
    flat = _buffer("band", (max(high - low for _, _, low, high in bands_of_rows), row_size))
    # Pillow's own memory where it can share it; else a big photo is read stripe by stripe:
    # as one array it would be a copy as big as itself.
    whole = pixels.shared(image)
    converted = _buffer("rows", (min(stripe, height) * bands, width))
    result_buffer = _buffer("result", (max(len(groups[i:j]) for i, j, _, _ in bands_of_rows)
                                       * _GROUP, row_size))
    held_low = held_high = 0
    for i, j, low, high in bands_of_rows:
        kept = max(0, held_high - low)
        if kept:
            flat[:kept] = flat[low - held_low:held_high - held_low]
        band = flat[:high - low].reshape((high - low) * bands, out_width)
        for top in range(low + kept, high, stripe):
            bottom = min(top + stripe, high)
            rows = converted[:(bottom - top) * bands]
            stripe_pixels = (whole[top:bottom] if whole is not None
                             else pixels.view(image.crop((0, top, width, bottom))))
            np.copyto(rows.reshape(bottom - top, bands, width), stripe_pixels.transpose(0, 2, 1))
            part = band[(top - low) * bands:(bottom - low) * bands]
            for run in across.runs:
                _across(rows, run, part)
        _round(band[kept * bands:])
        held_low, held_high = low, high
        band_rows = flat[:high - low]
        top = groups[i][0]
        for run in down.runs:
            first, end = max(run.first, i), min(run.first + run.count, j)
            for left in range(0, row_size, columns) if first < end else ():
                right = min(left + columns, row_size)
                _down(band_rows[:, left:right], low, groups, run, first, end,
                      result_buffer[groups[first][0] - top:groups[end - 1][1] - top,
                                    left:right])
        bottom = groups[j - 1][1]
        result = result_buffer[:bottom - top]
        _round(result)
        out[top:bottom] = result.reshape(bottom - top, bands, out_width).transpose(0, 2, 1)


def _across(rows: np.ndarray, run: _Run, part: np.ndarray) -> None:
    """The horizontal pass of one run's outputs: ``part[:, outputs] = rows @ weights``."""
    start, end = run.outputs
    if run.count == 1:
        np.matmul(rows[:, run.start:run.start + run.window], run.matrices[0],
                  out=part[:, start:end])
        return
    windows = as_strided(rows[:, run.start:], (run.count, len(rows), run.window),
                         (run.step * rows.strides[1], *rows.strides), writeable=False)
    np.matmul(windows, run.matrices,
              out=part[:, start:end].reshape(len(rows), run.count, _GROUP).transpose(1, 0, 2))


def _down(band: np.ndarray, low: int, groups: list, run: _Run, first: int, end: int,
          result: np.ndarray) -> None:
    """The vertical pass of groups ``first`` .. ``end - 1`` of ``run``, whose input rows
    ``low`` .. are ``band``: ``result = weights.T @ band``.  Stacked when their windows lie
    in the band (a band of a big photo may cut a run); else group by group."""
    start = run.start + (first - run.first) * run.step
    count = end - first
    if count > 1 and start >= low and start + (count - 1) * run.step + run.window <= low + len(
            band):
        windows = as_strided(band[start - low:], (count, run.window, band.shape[1]),
                             (run.step * band.strides[0], *band.strides), writeable=False)
        matrices = run.matrices[first - run.first:end - run.first].transpose(0, 2, 1)
        np.matmul(matrices, windows, out=result.reshape(count, _GROUP, band.shape[1]))
        return
    top = groups[first][0]
    for begin, finish, first_row, last_row, matrix in groups[first:end]:
        np.matmul(matrix.T, band[first_row - low:last_row - low],
                  out=result[begin - top:finish - top])
