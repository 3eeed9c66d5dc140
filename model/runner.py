"""Runs an exported SavedModel: the narrow seam between the server and TensorFlow.

Loading, and warming up, happen once in ``__init__``; calling the runner maps a
letterboxed uint8 batch to uint8 labels.  Only TensorFlow is imported here, never
tf-slim, so the request path of the server stays free of it.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from model import preprocessing
from model.serving import (
    INPUT_IMAGES,
    INPUT_SIZES,
    OUTPUT_LABELS,
    SIGNATURE_NAME,
    ModelMetadata,
)


class Segmenter(Protocol):
    """Anything that maps letterboxed uint8 images [N, S, S, 3] and sizes [N, 2] to labels."""

    metadata: ModelMetadata

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray: ...


class SavedModelRunner:
    """Loads an atrous SavedModel with plain ``tf.saved_model.load``.

    Args:
        path: the SavedModel directory.
        warmup_batch_sizes: batch sizes run once at load, so that no request pays for
            graph tracing or kernel autotuning.
    """

    def __init__(self, path: str | Path, warmup_batch_sizes: Iterable[int] = ()) -> None:
        import tensorflow as tf

        self.path = Path(path)
        self.metadata = ModelMetadata.read(self.path)
        self._tf = tf
        self._loaded = tf.saved_model.load(str(self.path))
        self._signature = self._loaded.signatures[SIGNATURE_NAME]
        size = self.metadata.input_size
        for batch in warmup_batch_sizes:
            self(np.zeros((batch, size, size, 3), np.uint8),
                 np.full((batch, 2), size, np.int32))

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] and int32 [N, 2] -> uint8 [N, S, S] class ids."""
        size = self.metadata.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must be uint8 [N, {size}, {size}, 3], "
                             f"got {images.dtype} {list(images.shape)}")
        sizes = np.asarray(sizes, np.int32)
        if sizes.shape != (len(images), 2):
            raise ValueError(f"sizes must be int32 [{len(images)}, 2], got {list(sizes.shape)}")
        outputs = self._signature(**{
            INPUT_IMAGES: self._tf.constant(images),
            INPUT_SIZES: self._tf.constant(sizes),
        })
        labels: np.ndarray = outputs[OUTPUT_LABELS].numpy()
        return labels


def segment_images(segmenter: Segmenter, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Full DeepLab inference on RGB PIL images, one model call for the batch.

    Returns:
        one uint8 [height, width] mask per image, at the image's own size.
    """
    size = segmenter.metadata.input_size
    boxed = [preprocessing.letterbox(image, size) for image in images]
    labels = segmenter(np.stack([canvas for canvas, _ in boxed]),
                       np.array([valid for _, valid in boxed], np.int32))
    return [
        preprocessing.restore_mask(label, valid, image.size)
        for label, (_, valid), image in zip(labels, boxed, images, strict=True)
    ]
