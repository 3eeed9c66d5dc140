"""The one inference sequence: prepare -> run -> render.

The server, ``atrous segment`` and evaluation all go through these functions, so the
same image gives the same mask whichever way it came in (DeepLab's 513 semantics:
``model.inference.preprocessing``).

* ``decode`` / ``prepare``: bytes or a PIL image -> a letterboxed canvas (the server
  decodes before queueing, so a corrupt image fails alone and never joins a batch).
* ``run``: one model call for a list of prepared images.
* ``restore`` / ``render``: the model's labels -> a mask at the image's own size ->
  a response body.

Image errors are ``imaging.ImageError`` subclasses; mapping them to HTTP statuses is
the API layer's business.
"""

import dataclasses
import enum
import json
from collections.abc import Sequence

import numpy as np
from PIL import Image

from model.inference import encoding, imaging, preprocessing
from model.inference.contract import ModelMetadata, Segmenter


class OutputFormat(enum.StrEnum):
    """What a segmentation is rendered as."""

    png = "png"
    json = "json"
    overlay = "overlay"


MEDIA_TYPES = {OutputFormat.png: "image/png", OutputFormat.json: "application/json",
               OutputFormat.overlay: "image/jpeg"}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An image ready for the model."""

    canvas: np.ndarray  # uint8 [S, S, 3]
    valid: tuple[int, int]  # (height, width) of the image inside the canvas
    size: tuple[int, int]  # (width, height) of the image, EXIF-oriented
    image: Image.Image | None  # kept only when the output needs the pixels (overlay)


def prepare(image: Image.Image, input_size: int, *, keep_image: bool = False,
            size: tuple[int, int] | None = None) -> Prepared:
    """Letterboxes a decoded RGB image (``size``: its true size if decoded reduced)."""
    canvas, valid = preprocessing.letterbox(image, input_size)
    return Prepared(canvas, valid, size or image.size, image if keep_image else None)


def decode(data: bytes, *, max_pixels: int, input_size: int, keep_image: bool,
           fast_jpeg: bool = False) -> Prepared:
    """Decodes and letterboxes one upload.

    By default every image is decoded in full, so the model sees DeepLab's exact input
    (and the mask equals the offline command's); ``fast_jpeg`` trades that for speed.

    Raises:
        imaging.ImageError: unsupported, corrupt or too large (see its subclasses).
    """
    if keep_image or not fast_jpeg:  # the overlay blends the full-resolution pixels
        image = imaging.load_image(data, max_pixels=max_pixels)
        return prepare(image, input_size, keep_image=keep_image)
    # A big JPEG is decoded at reduced (DCT) scale: it is downsampled anyway.
    image, size = imaging.load_image_for_model(data, max_pixels=max_pixels,
                                               input_size=input_size)
    return prepare(image, input_size, size=size)


def run(segmenter: Segmenter, prepared: Sequence[Prepared]) -> np.ndarray:
    """One model call for the batch: uint8 labels [N, S, S]."""
    return segmenter(np.stack([p.canvas for p in prepared]),
                     np.array([p.valid for p in prepared], np.int32))


def restore(labels: np.ndarray, prepared: Prepared) -> np.ndarray:
    """Model labels [S, S] -> uint8 class ids [height, width] at the image's own size."""
    return preprocessing.restore_mask(labels, prepared.valid, prepared.size)


def render(labels: np.ndarray, prepared: Prepared, output: OutputFormat,
           metadata: ModelMetadata) -> bytes:
    """Model labels [S, S] -> the body in the requested format."""
    mask = restore(labels, prepared)
    if output is OutputFormat.png:
        return encoding.mask_png(mask)
    if output is OutputFormat.json:
        return json.dumps(encoding.summary(mask, metadata), separators=(",", ":")).encode()
    if prepared.image is None:
        raise ValueError("an overlay needs the image: prepare it with keep_image=True")
    return encoding.overlay_jpeg(prepared.image, mask)


def segment_images(segmenter: Segmenter, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Full DeepLab inference on RGB PIL images, one model call for the batch.

    Returns:
        one uint8 [height, width] mask per image, at the image's own size.
    """
    size = segmenter.metadata.input_size
    prepared = [prepare(image, size) for image in images]
    return [restore(labels, p) for labels, p in zip(run(segmenter, prepared), prepared,
                                                     strict=True)]
