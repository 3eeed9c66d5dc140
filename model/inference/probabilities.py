"""Class probability maps to what a caller asked for: mask, class filter, confidence, planes.

Conventions (documented in docs/http-api.md):

* the mask is the argmax of the probabilities; with a class filter, pixels whose class
  is not requested become background (0);
* under a filter, "background" means "none of the requested classes": its probability
  is ``1 - sum(p[c] for requested c != 0)``, so the planes still sum to 1;
* the confidence of a pixel is the probability of the class the mask gives it;
* probabilities travel as uint8 planes, ``round(255 p)``, in an ``.npz`` archive:
  ``probabilities`` uint8 [K, H, W], ``class_ids`` int32 [K], ``labels`` [K] (plane 0 is
  always the background) and the ``mask`` uint8 [H, W].
"""

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "NPZ_MEDIA_TYPE",
    "class_confidences",
    "class_planes",
    "confidence",
    "confidence_png",
    "filter_mask",
    "labels_of",
    "probabilities_npz",
    "quantize",
    "resize_nearest",
]

NPZ_MEDIA_TYPE = "application/x-npz"
BACKGROUND = 0


def labels_of(probabilities: np.ndarray, classes: Sequence[int] | None) -> np.ndarray:
    """float [H, W, C] -> uint8 [H, W]: the argmax, other classes than ``classes`` -> 0."""
    return filter_mask(probabilities.argmax(-1).astype(np.uint8), classes)


def filter_mask(mask: np.ndarray, classes: Sequence[int] | None) -> np.ndarray:
    """uint8 [H, W] class ids with every class outside ``classes`` set to background."""
    if classes is None:
        return mask
    keep = np.zeros(256, bool)
    keep[list(classes)] = True
    return np.where(keep[mask], mask, np.uint8(BACKGROUND)).astype(np.uint8)


def class_planes(probabilities: np.ndarray,
                 classes: Sequence[int] | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The planes a caller receives: background first, then the requested classes.

    Returns:
        float32 [H, W, K] and the K class ids (0 first).
    """
    if classes is None:
        return probabilities, tuple(range(probabilities.shape[-1]))
    kept = [c for c in sorted(set(classes)) if c != BACKGROUND]
    planes = np.empty(probabilities.shape[:2] + (len(kept) + 1,), np.float32)
    planes[..., 1:] = probabilities[..., kept]
    planes[..., 0] = np.clip(1.0 - planes[..., 1:].sum(-1), 0.0, 1.0)
    return planes, (BACKGROUND, *kept)


def confidence(planes: np.ndarray, ids: Sequence[int], mask: np.ndarray) -> np.ndarray:
    """float32 [H, W]: the probability of each pixel's class in ``mask`` (from ``planes``)."""
    index = np.zeros(256, np.intp)
    index[list(ids)] = np.arange(len(ids))
    picked = np.take_along_axis(planes, index[mask][..., None], axis=-1)[..., 0]
    return picked.astype(np.float32)


def quantize(probabilities: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 ``round(255 p)``."""
    return np.clip(np.rint(probabilities * 255.0), 0, 255).astype(np.uint8)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] or [H, W, K] -> (width, height) ``size``, nearest neighbour (as masks)."""
    width, height = size
    if array.shape[:2] == (height, width):
        return array
    rows = np.minimum(((np.arange(height) + 0.5) * array.shape[0] / height).astype(np.intp),
                      array.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * array.shape[1] / width).astype(np.intp),
                      array.shape[1] - 1)
    return array[rows][:, cols]


def probabilities_npz(planes: np.ndarray, ids: Sequence[int], labels: Sequence[str],
                      mask: np.ndarray) -> bytes:
    """uint8 [H, W, K] quantized planes and the uint8 [H, W] mask -> the
    ``format=probabilities`` body (.npz; the mask spares clients an argmax of rounded values)."""
    buffer = io.BytesIO()
    names = [labels[i] if i < len(labels) else f"class_{i}" for i in ids]
    np.savez_compressed(buffer, probabilities=np.ascontiguousarray(np.moveaxis(planes, -1, 0)),
                        class_ids=np.asarray(ids, np.int32), labels=np.asarray(names, np.str_),
                        mask=np.ascontiguousarray(mask, np.uint8))
    return buffer.getvalue()


def confidence_png(confidence_u8: np.ndarray) -> bytes:
    """uint8 [H, W] -> greyscale PNG (255 = certain)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(confidence_u8, np.uint8)).save(
        buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def class_confidences(mask: np.ndarray, confidence_u8: np.ndarray) -> dict[int, float]:
    """Mean confidence (0..1) of each class present in ``mask``."""
    counts = np.bincount(mask.ravel(), minlength=256)
    sums = np.bincount(mask.ravel(), weights=confidence_u8.ravel().astype(np.float64),
                       minlength=256)
    return {int(c): round(float(sums[c] / counts[c]) / 255.0, 4) for c in np.flatnonzero(counts)}
