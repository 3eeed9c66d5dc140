"""Host-side DeepLab pre/post-processing (numpy and Pillow, no TensorFlow).

DeepLab's demo resizes the RGB image so that its longer side is the input size
(antialiased: Pillow's Lanczos, here computed by ``resample.lanczos`` to the same bytes),
feeds it at the top left of the canvas, which the graph pads with the mean pixel
(``model.nets.network.pad_with_mean``), and crops the prediction back to the resized region.
Here the crop is resized to the original width x height with nearest neighbour, so every
mask pixel lines up with an input pixel.
"""

import numpy as np
from PIL import Image

from model.inference import pixels, resample


def resized_shape(width: int, height: int, input_size: int) -> tuple[int, int]:
    """(height, width) after scaling the longer side to ``input_size``, aspect kept."""
    longer = max(width, height)
    # Integer arithmetic: 513 * w // w must be exactly 513, never 512.999.
    return max(1, height * input_size // longer), max(1, width * input_size // longer)


def letterbox(image: Image.Image, input_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Places a resized RGB image at the top left of an ``input_size`` square canvas.

    Args:
        image: RGB PIL image of any size.
        input_size: canvas side S.

    Returns:
        canvas: uint8 [S, S, 3], zeros outside the image (the graph fills the mean pixel).
        size: valid (height, width) of the image inside the canvas.
    """
    if image.mode != "RGB":
        raise ValueError(f"letterbox expects an RGB image, got mode {image.mode}")
    height, width = resized_shape(image.width, image.height, input_size)
    canvas = np.zeros((input_size, input_size, 3), dtype=np.uint8)
    resample.lanczos(image, (width, height), out=canvas[:height, :width])
    return canvas, (height, width)


def restore_mask(labels: np.ndarray, size: tuple[int, int],
                 original: tuple[int, int]) -> np.ndarray:
    """Crops the valid region of a label map and resizes it to the original image.

    Args:
        labels: uint8 [S, S] class ids from the model.
        size: valid (height, width) returned by ``letterbox``.
        original: (width, height) of the image before letterboxing.

    Returns:
        uint8 [height, width] class ids.
    """
    valid_height, valid_width = size
    crop = Image.fromarray(np.ascontiguousarray(labels[:valid_height, :valid_width]))
    width, height = original
    if crop.size != (width, height):
        crop = crop.resize((width, height), Image.Resampling.NEAREST)
    return pixels.view(crop)
