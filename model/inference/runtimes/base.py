"""What every runtime shares: input checks and warm-up, so that they behave alike."""

from collections.abc import Callable, Iterable

import numpy as np


def check_batch(images: np.ndarray, sizes: np.ndarray, input_size: int) -> np.ndarray:
    """Validates a batch against the serving contract; returns ``sizes`` as int32 [N, 2]."""
    size = input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"images must be uint8 [N, {size}, {size}, 3], "
                         f"got {images.dtype} {list(images.shape)}")
    sizes = np.asarray(sizes, np.int32)
    if sizes.shape != (len(images), 2):
        raise ValueError(f"sizes must be int32 [{len(images)}, 2], got {list(sizes.shape)}")
    return sizes


def warm_up(segment: Callable[[np.ndarray, np.ndarray], np.ndarray], input_size: int,
            batch_sizes: Iterable[int]) -> None:
    """Runs each batch size once, so that no request pays for compilation or autotuning."""
    for batch in batch_sizes:
        segment(np.zeros((batch, input_size, input_size, 3), np.uint8),
                np.full((batch, 2), input_size, np.int32))
