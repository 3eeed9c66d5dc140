"""PASCAL VOC class names and the VOC colour map (the palette DeepLab's demo uses)."""

import numpy as np

VOC_LABELS: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class id bits spread over the RGB channels.

    Returns:
        uint8 array of shape [num_colors, 3].
    """
    ids = np.arange(num_colors)
    colormap = np.zeros((num_colors, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colormap[:, channel] |= ((ids >> channel) & 1) << shift
        ids >>= 3
    return colormap.astype(np.uint8)


def class_labels(num_classes: int) -> list[str]:
    """VOC names for the first 21 ids, ``class_<i>`` beyond them."""
    return [VOC_LABELS[i] if i < len(VOC_LABELS) else f"class_{i}" for i in range(num_classes)]


def palette() -> list[int]:
    """A flat 768-entry palette for PIL mode-"P" images (VOC colours for all 256 ids)."""
    return voc_colormap(256).reshape(-1).tolist()
