"""The host-side steps around the model call, each run in a worker thread.

``prepare`` (decode + letterbox) happens before queueing, so a corrupt image fails
alone and never joins a batch; ``render`` (crop, resize back, encode) after.
"""

import dataclasses
import enum
import json

import numpy as np
from PIL import Image

from app import encoding, errors
from model import imaging, preprocessing
from model.serving import ModelMetadata


class OutputFormat(enum.StrEnum):
    """What POST /segment returns."""

    png = "png"
    json = "json"
    overlay = "overlay"


MEDIA_TYPES = {OutputFormat.png: "image/png", OutputFormat.json: "application/json",
               OutputFormat.overlay: "image/jpeg"}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A decoded upload, ready for the batcher."""

    canvas: np.ndarray  # uint8 [S, S, 3]
    valid: tuple[int, int]  # (height, width) of the image inside the canvas
    size: tuple[int, int]  # (width, height) of the upload, EXIF-oriented
    image: Image.Image | None  # kept only when the response needs the pixels (overlay)


def prepare(data: bytes, max_pixels: int, input_size: int, keep_image: bool,
            fast_jpeg: bool = False) -> Prepared:
    """Decodes and letterboxes one upload, mapping image errors to HTTP errors.

    By default every image is decoded in full, so the model sees DeepLab's exact input
    (and the mask equals the offline command's); ``fast_jpeg`` trades that for speed.
    """
    try:
        if keep_image or not fast_jpeg:  # the overlay blends the full-resolution pixels
            image = imaging.load_image(data, max_pixels=max_pixels)
            size = image.size
        else:  # a big JPEG is decoded at reduced (DCT) scale: it is downsampled anyway
            image, size = imaging.load_image_for_model(data, max_pixels=max_pixels,
                                                       input_size=input_size)
    except imaging.UnsupportedImageError as e:
        raise errors.UnsupportedMediaTypeError(str(e)) from None
    except imaging.ImageTooLargeError as e:
        raise errors.ImageTooLargeError(str(e)) from None
    except imaging.CorruptImageError as e:
        raise errors.CorruptImageError(str(e)) from None
    canvas, valid = preprocessing.letterbox(image, input_size)
    return Prepared(canvas, valid, size, image if keep_image else None)


def render(labels: np.ndarray, prepared: Prepared, output: OutputFormat,
           metadata: ModelMetadata) -> bytes:
    """Model labels [S, S] -> the response body in the requested format."""
    mask = preprocessing.restore_mask(labels, prepared.valid, prepared.size)
    if output is OutputFormat.png:
        return encoding.mask_png(mask)
    if output is OutputFormat.json:
        return json.dumps(encoding.summary(mask, metadata), separators=(",", ":")).encode()
    assert prepared.image is not None
    return encoding.overlay_jpeg(prepared.image, mask)
