"""Masks to response bodies: palette PNG, JSON summary with COCO RLE, JPEG overlay.

numpy and Pillow only; COCO's compressed RLE is written here (pycocotools is only a
test dependency, used to check that what we write decodes).
"""

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from model.inference.contract import ModelMetadata
from model.inference.labels import palette, voc_colormap

_PALETTE = palette()
_COLORS = voc_colormap(256)
# Masks are large flat regions: zlib level 1 is several times faster than the default
# and the files stay small.
_PNG_COMPRESS_LEVEL = 1
_OVERLAY_ALPHA = 0.5
_JPEG_QUALITY = 90


def mask_png(mask: np.ndarray) -> bytes:
    """uint8 [H, W] class ids -> 8-bit palette PNG (mode P, VOC colours)."""
    height, width = mask.shape
    # The class ids are the palette indices: no quantisation, just a palette attached to
    # the mask's own memory (no copy).
    image = Image.frombuffer("P", (width, height), np.ascontiguousarray(mask, np.uint8),
                             "raw", "P", 0, 1)
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def overlay_jpeg(image: Image.Image, mask: np.ndarray) -> bytes:
    """The RGB input blended with the class colours (alpha 0.5), as JPEG."""
    colours = Image.fromarray(_COLORS[mask])
    blended = Image.blend(image, colours, _OVERLAY_ALPHA)
    buffer = io.BytesIO()
    blended.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def summary(mask: np.ndarray, metadata: ModelMetadata,
            confidences: dict[int, float] | None = None) -> dict[str, Any]:
    """The ``format=json`` body: size, model, classes present (pixels, bbox, RLE, mean
    confidence when known), mask PNG."""
    height, width = mask.shape
    runs = _label_runs(mask)
    classes = [{**entry,
                "rle": {"size": [height, width],
                        "counts": _class_rle(runs, entry["id"], height * width)},
                "confidence": None if confidences is None else confidences.get(entry["id"])}
               for entry in classes_present(mask, metadata.labels)]
    return {
        "width": width,
        "height": height,
        "model": {"backbone": metadata.backbone, "output_stride": metadata.output_stride,
                  "input_size": metadata.input_size, "trained": metadata.trained},
        "classes": classes,
        "mask_png": base64.b64encode(mask_png(mask)).decode("ascii"),
    }


def classes_present(mask: np.ndarray, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """The classes in a uint8 [H, W] mask, by id: label, pixels, fraction of the image and
    bbox ``[x, y, width, height]`` (the ``format=json`` entries without RLE)."""
    height, width = mask.shape
    total = height * width
    counts = np.bincount(mask.ravel(), minlength=256)
    classes = []
    for class_id in np.flatnonzero(counts).tolist():
        selected = mask == class_id
        rows = np.flatnonzero(selected.any(axis=1))
        cols = np.flatnonzero(selected.any(axis=0))
        pixels = int(counts[class_id])
        classes.append({
            "id": class_id,
            "label": labels[class_id] if class_id < len(labels) else f"class_{class_id}",
            "pixels": pixels,
            "fraction": round(pixels / total, 6),
            "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                     int(rows[-1] - rows[0] + 1)],
        })
    return classes


def _label_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal labels in column-major (COCO) order: starts, lengths, values."""
    flat = mask.ravel(order="F")
    boundaries = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    return starts, lengths, flat[starts]


def _class_rle(runs: tuple[np.ndarray, np.ndarray, np.ndarray], class_id: int,
               total: int) -> str:
    """COCO compressed RLE of ``mask == class_id``, from the label runs.

    Two runs of the same label are never adjacent, so the binary mask's runs alternate
    gap (zeros), run (ones), starting with a possibly empty gap, ending with the trailing
    zeros if any -- exactly what ``pycocotools.mask.encode`` produces.
    """
    starts, lengths, values = runs
    selected = values == class_id
    on_starts, on_lengths = starts[selected], lengths[selected]
    ends = on_starts + on_lengths
    gaps = on_starts - np.concatenate(([0], ends[:-1]))
    counts = np.empty(2 * len(on_starts), np.int64)
    counts[0::2], counts[1::2] = gaps, on_lengths
    trailing = total - int(ends[-1]) if len(ends) else total
    if trailing:
        counts = np.append(counts, trailing)
    return _compress_counts(counts)


def _compress_counts(counts: np.ndarray) -> str:
    """pycocotools' ``rleToString``, vectorised: LEB128-like, 5 bits per char from '0'.

    Each count from the fourth on (``i > 2`` in the C code) is stored as the difference
    to the count two before.
    """
    counts = counts.astype(np.int64)
    values = counts.copy()
    values[3:] -= counts[1:-2]
    chars = np.zeros((len(values), 14), np.uint8)  # 64 bits / 5 per char
    keep = np.zeros_like(chars, dtype=bool)
    active = np.ones(len(values), bool)
    for position in range(chars.shape[1]):
        low = values & 0x1F
        values = values >> 5  # arithmetic shift, like C's on a signed long
        more = np.where(low & 0x10, values != -1, values != 0)
        chars[:, position] = (low | (more * 0x20)) + 48
        keep[:, position] = active
        active &= more
        if not active.any():
            break
    return chars[keep].tobytes().decode("ascii")
