"""Times a loaded ``Segmenter``: the bare model call the server's batcher makes.

Same harness as ``model.bench`` (burn-in calls untimed, then timed calls, mean ± sd),
but through a runtime on an exported model, so that runtimes and formats compare on
equal terms.  Inputs are random letterboxed uint8 images, made once, outside the timing.
"""

import dataclasses
import math
import time
from typing import Any

import numpy as np


# Its fields overlap model.bench.BenchResult's, on purpose: the two tables have different
# columns (an export through a runtime here, a graph setting with XLA there), and this module
# must not import TensorFlow.
@dataclasses.dataclass(frozen=True)
class SegmenterTiming:
    runtime: str
    runtime_version: str
    format: str
    precision: str
    backbone: str
    input_size: int
    batch_size: int
    device: str
    mean_s: float
    sd_s: float
    num_batches: int

    @property
    def s_per_image(self) -> float:
        return self.mean_s / self.batch_size

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.mean_s

    def row(self) -> str:
        return (f"| {self.runtime} {self.runtime_version} | {self.format} | {self.precision} | "
                f"{self.backbone} | {self.input_size} | {self.batch_size} | {self.device} | "
                f"{self.mean_s:.4f} ± {self.sd_s:.4f} | {self.s_per_image:.4f} | "
                f"{self.images_per_s:.2f} |")


HEADER = ("| runtime | format | precision | backbone | size | batch | device | "
          "s/batch (mean ± sd) | s/image | images/s |\n|---|---|---|---|---|---|---|---|---|---|")


def random_batch(batch_size: int, input_size: int, seed: int = 0) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """uint8 [N, S, S, 3] noise and full-canvas sizes [N, 2]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, input_size, input_size, 3), np.uint8)
    return images, np.full((batch_size, 2), input_size, np.int32)


def time_calls(segmenter: Any, images: np.ndarray, sizes: np.ndarray, *, num_batches: int,
               burn_in: int) -> list[float]:
    """Seconds per call for ``num_batches`` calls after ``burn_in`` untimed ones."""
    durations = []
    for step in range(burn_in + num_batches):
        start = time.perf_counter()
        segmenter(images, sizes)
        if step >= burn_in:
            durations.append(time.perf_counter() - start)
    return durations


def mean_and_sd(durations: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the timed calls, in seconds."""
    mean = sum(durations) / len(durations)
    return mean, math.sqrt(sum((d - mean) ** 2 for d in durations) / len(durations))


def summarise(segmenter: Any, batch_size: int, durations: list[float]) -> SegmenterTiming:
    mean, sd = mean_and_sd(durations)
    metadata = segmenter.metadata
    return SegmenterTiming(segmenter.runtime, segmenter.runtime_version, metadata.format,
                           metadata.precision, metadata.backbone, metadata.input_size,
                           batch_size, segmenter.device, mean, sd, len(durations))


def time_segmenter(segmenter: Any, batch_size: int, *, num_batches: int = 20,
                   burn_in: int = 3) -> SegmenterTiming:
    """Times ``segmenter`` on random batches of ``batch_size``."""
    images, sizes = random_batch(batch_size, segmenter.metadata.input_size)
    durations = time_calls(segmenter, images, sizes, num_batches=num_batches, burn_in=burn_in)
    return summarise(segmenter, batch_size, durations)
