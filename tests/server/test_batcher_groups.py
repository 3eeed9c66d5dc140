"""Groups of model inputs (an image's tiles) in the batcher: all or nothing, one deadline,
mixed with single images, and the out-of-memory split on probability calls."""

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batcher import LABELS, PROBABILITIES, Batcher, DeadlineExceeded, QueueFull
from app.metrics import VersionMetrics

S = 5


class Recorder:
    """A model output: labels (or 2-class probabilities) from the first pixel; records calls."""

    def __init__(self, kind: str, log: list, oom_above: int | None = None,
                 delay: float = 0.0) -> None:
        self.kind, self.log, self.oom_above, self.delay = kind, log, oom_above, delay
        self.release = threading.Event()
        self.release.set()

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        self.release.wait(5)
        if self.delay:
            time.sleep(self.delay)
        values = images[:, 0, 0, 0].tolist()
        self.log.append((self.kind, values))
        if self.oom_above is not None and len(images) > self.oom_above:
            raise MemoryError(f"batch of {len(images)}")
        if self.kind == LABELS:
            return np.broadcast_to(images[:, :1, :1, 0], (len(images), S, S)).copy()
        p = images[:, :, :, 0].astype(np.float32) / 255
        return np.stack([1 - p, p], -1)


def tiles(*values: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.full((S, S, 3), v, np.uint8) for v in values])
    return images, np.full((len(values), 2), S, np.int32)


async def started(log, labels_kwargs=None, probability_kwargs=None, **kwargs):
    labels = Recorder(LABELS, log, **(labels_kwargs or {}))
    probabilities = Recorder(PROBABILITIES, log, **(probability_kwargs or {}))
    options = {"max_batch_size": 4, "max_delay_s": 0.05, "max_queue": 8, **kwargs}
    batcher = Batcher(labels, probabilities=probabilities, **options)
    await batcher.start()
    return batcher, labels, probabilities


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_group_fills_batches_keeps_its_order_and_runs_beside_single_images():
    async def main():
        log: list = []
        metrics = VersionMetrics(4).of("default", 1)
        batcher, _, _ = await started(log, metrics=metrics)
        group, single = await asyncio.gather(
            batcher.submit_group(*tiles(10, 20, 30, 40, 50, 60), timeout=5),
            batcher.submit(np.full((S, S, 3), 7, np.uint8), (S, S), timeout=5))
        await batcher.stop()
        return log, group, single, metrics

    log, group, single, metrics = run(main())
    assert [r.output[0, 0, 1] for r in group] == pytest.approx([v / 255 for v in
                                                                 (10, 20, 30, 40, 50, 60)])
    assert single.labels[0, 0] == 7
    # the six tiles (queued first) and the image filled two batches of four; the second
    # batch ran one model call per kind of output
    assert log == [(PROBABILITIES, [10, 20, 30, 40]), (LABELS, [7]), (PROBABILITIES, [50, 60])]
    assert metrics.model_inputs.labels(output=PROBABILITIES)._value.get() == 6
    assert metrics.model_inputs.labels(output=LABELS)._value.get() == 1


def test_a_queue_without_room_for_every_tile_refuses_the_group_before_any_tile_runs():
    async def main():
        log: list = []
        batcher, labels, _ = await started(log, max_batch_size=1)
        labels.release.clear()  # the model is busy: images pile up in the queue
        waiting = [asyncio.create_task(batcher.submit(np.full((S, S, 3), v, np.uint8), (S, S),
                                                      timeout=5)) for v in range(1, 6)]
        await asyncio.sleep(0.2)  # one image on the model, four queued: room for four
        with pytest.raises(QueueFull, match="5 model inputs.*room for 4"):
            await batcher.submit_group(*tiles(101, 102, 103, 104, 105), timeout=5)
        fits = asyncio.create_task(batcher.submit_group(*tiles(111, 112, 113, 114), timeout=5))
        await asyncio.sleep(0.05)
        labels.release.set()
        await asyncio.gather(*waiting, fits)
        await batcher.stop()
        return log

    log = run(main())
    ran = [v for _, values in log for v in values]
    assert not set(ran) & {101, 102, 103, 104, 105}  # no tile of the refused image ran
    assert {111, 112, 113, 114} <= set(ran)


def test_one_deadline_covers_every_tile_and_the_unstarted_ones_are_dropped():
    async def main():
        log: list = []
        batcher, _, _ = await started(log, max_batch_size=2,
                                      probability_kwargs={"delay": 0.3})
        with pytest.raises(DeadlineExceeded):
            await batcher.submit_group(*tiles(1, 2, 3, 4, 5, 6), timeout=0.4)
        await asyncio.sleep(0.8)  # let the worker reach the abandoned tiles
        await batcher.stop()
        return log

    log = run(main())
    ran = [v for _, values in log for v in values]
    assert len(ran) < 6 and ran[:2] == [1, 2], log  # the rest were skipped, not run


def test_out_of_memory_on_a_probability_batch_splits_it():
    async def main():
        log: list = []
        batcher, _, _ = await started(log, probability_kwargs={"oom_above": 1})
        results = await batcher.submit_group(*tiles(1, 2, 3, 4), timeout=5)
        await batcher.stop()
        return log, results

    log, results = run(main())
    assert [round(float(r.output[0, 0, 1]) * 255) for r in results] == [1, 2, 3, 4]
    assert [len(values) for _, values in log] == [4, 2, 1, 1, 2, 1, 1]


def test_a_model_without_probabilities_refuses_groups_clearly():
    async def main():
        batcher = Batcher(Recorder(LABELS, []), max_batch_size=2, max_delay_s=0, max_queue=4)
        await batcher.start()
        try:
            with pytest.raises(ValueError, match="no probabilities"):
                await batcher.submit_group(*tiles(1), timeout=1)
        finally:
            await batcher.stop()

    run(main())
