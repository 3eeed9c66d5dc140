"""Pillow's Lanczos resize of an RGB image, the same bytes, as banded matrix products.

DeepLab's input is Pillow's antialiased (Lanczos) resize, and on a GPU node it is most of the
host's work per image (``benchmarks/resize_bench.py``).  Pillow computes it in scalar C;
this computes exactly the same numbers with BLAS, 1.3-2x faster on the CPU measured
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
those eight read; each product stays under OpenBLAS's threading threshold (it runs on the
calling thread: decode threads must not wake a BLAS pool), and the working buffers are
reused per thread (fresh pages cost more than the arithmetic).
"""

import functools
import math
import threading

import numpy as np
from PIL import Image

from model.inference import pixels

_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images
_GROUP = 8  # outputs per matrix product
_MAX_WORK = 1 << 18  # m * n * k of one product: OpenBLAS runs it single-threaded
_BUFFER_BYTES = 2 << 20  # a thread keeps its working buffers up to this size
_MIN_STRIPE = 64  # input rows per product, at least (under _MAX_WORK)

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
        self.span = max(high - low for _, _, low, high, _ in self.groups)


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
    stripe = max(1, min(_MAX_WORK // (_GROUP * across.span * bands),
                        max(_BUFFER_BYTES // (bands * width * 8), _MIN_STRIPE)))
    columns = max(1, _MAX_WORK // (_GROUP * down.span))
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
            for start, end, first, last, matrix in across.groups:
                np.matmul(rows[:, first:last], matrix, out=part[:, start:end])
            _round(part)
        held_low, held_high = low, high
        band_rows = flat[:high - low]
        top = groups[i][0]
        for start, end, first, last, matrix in groups[i:j]:
            for left in range(0, row_size, columns):
                right = min(left + columns, row_size)
                np.matmul(matrix.T, band_rows[first - low:last - low, left:right],
                          out=result_buffer[start - top:end - top, left:right])
        bottom = groups[j - 1][1]
        result = result_buffer[:bottom - top]
        _round(result)
        out[top:bottom] = result.reshape(bottom - top, bands, out_width).transpose(0, 2, 1)
