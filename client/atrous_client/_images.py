"""Pixels in and out: what is uploaded for each input type, and how masks are read back.

Only numpy and Pillow here, no HTTP, so that both clients share it unchanged.
"""

from __future__ import annotations

import io
import os
from typing import IO, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ._exceptions import AtrousError

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)
"""What ``segment`` accepts: a path, encoded bytes, a binary file object, a PIL image, or a
uint8 array (H×W×3 RGB or H×W grayscale)."""

OCTET_STREAM = "application/octet-stream"
PNG = "image/png"

# Modes Pillow can write to PNG as they are; anything else (CMYK, YCbCr, F, ...) becomes RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def encode_input(image: ImageInput) -> tuple[bytes, str]:
    """The request body and its Content-Type for one input.

    Encoded inputs (path, bytes, file object) travel byte for byte, so the server sniffs the
    format and applies EXIF orientation itself; decoded inputs (PIL image, array) are
    written as a lossless PNG of exactly the pixels given.

    Raises:
        TypeError: an unsupported input type, or a file object opened in text mode.
        ValueError: an array that is not uint8 H×W×3 or H×W.
        OSError: a path that cannot be read.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), OCTET_STREAM
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read(), OCTET_STREAM
    if isinstance(image, Image.Image):
        return _png_bytes(image), PNG
    if isinstance(image, np.ndarray):
        return _png_bytes(_array_to_image(image)), PNG
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        return bytes(data), OCTET_STREAM
    raise TypeError(
        "image must be a path, bytes, a binary file object, a PIL image or a numpy array, "
        f"got {type(image).__name__}"
    )


def open_input(image: ImageInput) -> Image.Image:
    """An input as an RGB PIL image, oriented the way the server sees it (for overlays)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_image(image).convert("RGB")
    data, _ = encode_input(image)
    with Image.open(io.BytesIO(data)) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"arrays must be uint8, got {array.dtype}; "
                         "scale floats yourself, e.g. (x * 255).round().astype(np.uint8)")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(array))
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array))
    raise ValueError(f"arrays must be H×W×3 (RGB) or H×W (grayscale), got shape {array.shape}")


def _png_bytes(image: Image.Image) -> bytes:
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    # Level 1: the upload is usually on a fast link, so spend little CPU; PNG stays lossless.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """The uint8 H×W class-id array inside the server's palette PNG.

    Raises:
        AtrousError: the bytes are not a single-channel (palette or grayscale) PNG.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode not in ("P", "L"):
                raise AtrousError(f"expected a palette PNG mask, got {image.format} "
                                  f"mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise AtrousError(f"the server's mask is not a readable PNG: {e}") from None


def voc_colormap() -> np.ndarray:
    """The PASCAL VOC colour map, uint8 [256, 3]: bits of the class id spread over R, G, B."""
    ids = np.arange(256)
    colormap = np.zeros((256, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colormap[:, channel] |= ((ids >> channel) & 1) << shift
        ids = ids >> 3
    return colormap.astype(np.uint8)


VOC_COLORMAP = voc_colormap()
VOC_PALETTE: list[int] = VOC_COLORMAP.reshape(-1).tolist()


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """An 8-bit palette image: pixel value = class id, VOC colours (what the server sends)."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode L
    image.putpalette(VOC_PALETTE)  # L -> P, pixel values untouched
    return image


def blend(image: Image.Image, mask: np.ndarray, alpha: float) -> Image.Image:
    """``image`` (RGB, same size as ``mask``) blended with the class colours."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = mask.shape
    if image.size != (width, height):
        raise ValueError(f"image is {image.width}×{image.height} but the mask is "
                         f"{width}×{height}")
    pixels = np.asarray(image, dtype=np.float32)
    colours = VOC_COLORMAP[mask].astype(np.float32)
    mixed = pixels * (1.0 - alpha) + colours * alpha
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
