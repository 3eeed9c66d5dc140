"""The batcher in pure asyncio, with a fake model that records its calls."""

import asyncio
import threading
import time

import numpy as np
import pytest

from app.api.errors import as_http_error
from app.batcher import Batcher, BatcherStopped, DeadlineExceeded, ModelCallFailed, QueueFull
from app.metrics import Metrics

S = 5


class FakeModel:
    """labels = the image's first pixel value everywhere; records batch sizes."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None,
                 oom_above: int | None = None) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail_on = fail_on
        self.oom_above = oom_above
        self.release = threading.Event()
        self.release.set()
        self.threads: set[str] = set()

    def __call__(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.release.wait(5)
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(len(images))
        if self.oom_above is not None and len(images) > self.oom_above:
            raise MemoryError(f"batch of {len(images)}")
        values = images[:, 0, 0, 0]
        if self.fail_on is not None and self.fail_on in values:
            raise ValueError("model exploded")
        return np.broadcast_to(values[:, None, None], (len(images), S, S)).astype(np.uint8)


def image(value: int) -> np.ndarray:
    return np.full((S, S, 3), value, np.uint8)


async def started(model, **kwargs) -> Batcher:
    options = {"max_batch_size": 4, "max_delay_s": 0.05, "max_queue": 16, **kwargs}
    batcher = Batcher(model, **options)
    await batcher.start()
    return batcher


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concurrent_requests_are_coalesced_and_each_gets_its_own_result():
    async def main():
        model = FakeModel()
        batcher = await started(model)
        results = await asyncio.gather(*(batcher.submit(image(v), (S, S), timeout=5)
                                         for v in range(4)))
        await batcher.stop()
        return model, results
    model, results = run(main())
    assert model.calls == [4]
    assert [int(r.labels[0, 0]) for r in results] == [0, 1, 2, 3]
    assert all(r.batch_size == 4 for r in results)
    assert all(thread.startswith("atrous-model") for thread in model.threads)


def test_a_lone_request_is_flushed_after_the_delay():
    async def main():
        model = FakeModel()
        batcher = await started(model, max_delay_s=0.2)
        start = time.monotonic()
        result = await batcher.submit(image(7), (S, S), timeout=5)
        elapsed = time.monotonic() - start
        await batcher.stop()
        return model, result, elapsed
    model, result, elapsed = run(main())
    assert model.calls == [1] and int(result.labels[0, 0]) == 7
    assert 0.15 <= elapsed < 1.5
    assert result.queue_s >= 0.15


def test_batches_never_exceed_max_batch_size():
    async def main():
        model = FakeModel()
        batcher = await started(model, max_batch_size=3)
        results = await asyncio.gather(*(batcher.submit(image(v), (S, S), timeout=5)
                                         for v in range(7)))
        await batcher.stop()
        return model, results
    model, results = run(main())
    assert sum(model.calls) == 7 and max(model.calls) <= 3
    assert [int(r.labels[0, 0]) for r in results] == list(range(7))


def test_a_failing_batch_fails_its_members_and_the_worker_survives():
    async def main():
        model = FakeModel(fail_on=13)
        batcher = await started(model)
        outcomes = await asyncio.gather(*(batcher.submit(image(v), (S, S), timeout=5)
                                          for v in (1, 13)), return_exceptions=True)
        after = await batcher.submit(image(2), (S, S), timeout=5)
        await batcher.stop()
        return outcomes, after
    outcomes, after = run(main())
    assert all(isinstance(o, ModelCallFailed) and isinstance(o.__cause__, ValueError)
               for o in outcomes)
    assert int(after.labels[0, 0]) == 2


def test_out_of_memory_splits_the_batch_until_it_fits():
    async def main():
        model = FakeModel(oom_above=1)
        batcher = await started(model)
        results = await asyncio.gather(*(batcher.submit(image(v), (S, S), timeout=5)
                                         for v in range(4)))
        await batcher.stop()
        return model, results
    model, results = run(main())
    assert model.calls == [4, 2, 1, 1, 2, 1, 1]
    assert [int(r.labels[0, 0]) for r in results] == [0, 1, 2, 3]


def test_only_the_image_that_fails_alone_gets_the_oom_error():
    class PickyModel(FakeModel):
        def __call__(self, images, sizes):
            if 99 in images[:, 0, 0, 0]:
                self.calls.append(len(images))
                raise MemoryError("this one is too big")
            return super().__call__(images, sizes)

    async def main():
        batcher = await started(PickyModel())
        return await asyncio.gather(*(batcher.submit(image(v), (S, S), timeout=5)
                                      for v in (1, 99, 3, 4)), return_exceptions=True)
    outcomes = run(main())
    assert isinstance(outcomes[1], ModelCallFailed)
    assert isinstance(outcomes[1].__cause__, MemoryError)
    assert [int(outcomes[i].labels[0, 0]) for i in (0, 2, 3)] == [1, 3, 4]


def test_a_full_queue_refuses_at_once_with_retry_after():
    async def main():
        model = FakeModel()
        model.release.clear()  # the model hangs: the worker holds one batch, the queue fills
        batcher = await started(model, max_batch_size=1, max_delay_s=0, max_queue=2)
        first = asyncio.create_task(batcher.submit(image(0), (S, S), timeout=5))
        await asyncio.sleep(0.05)  # taken by the worker
        queued = [asyncio.create_task(batcher.submit(image(v), (S, S), timeout=5))
                  for v in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.full
        with pytest.raises(QueueFull):
            batcher.check_capacity()  # what the route asks before decoding
        start = time.monotonic()
        with pytest.raises(QueueFull) as info:
            await batcher.submit(image(3), (S, S), timeout=5)
        refused_in = time.monotonic() - start
        model.release.set()
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return info.value, refused_in, results
    error, refused_in, results = run(main())
    http_error = as_http_error(error, retry_after_s=3)  # the API layer's one table
    assert http_error.status == 503 and http_error.code == "queue_full"
    assert http_error.headers() == {"Retry-After": "3", "Connection": "close"}
    assert refused_in < 0.05
    assert [int(r.labels[0, 0]) for r in results] == [0, 1, 2]


def test_a_deadline_passing_in_the_queue_is_a_timeout_and_skips_the_model():
    async def main():
        model = FakeModel()
        model.release.clear()
        batcher = await started(model, max_batch_size=1, max_delay_s=0)
        first = asyncio.create_task(batcher.submit(image(0), (S, S), timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded) as info:
            await batcher.submit(image(1), (S, S), timeout=0.1)
        model.release.set()
        await first
        await batcher.stop()
        return model, info.value
    model, error = run(main())
    http_error = as_http_error(error, retry_after_s=3)
    assert http_error.status == 504 and http_error.code == "timeout"
    assert http_error.headers() == {}  # Retry-After only on 503s
    assert model.calls == [1]  # the expired image never reached the model


def test_a_cancelled_caller_is_dropped_before_inference():
    async def main():
        model = FakeModel()
        model.release.clear()
        batcher = await started(model, max_batch_size=4, max_delay_s=0)
        first = asyncio.create_task(batcher.submit(image(0), (S, S), timeout=5))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.submit(image(1), (S, S), timeout=5))
        kept = asyncio.create_task(batcher.submit(image(2), (S, S), timeout=5))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected
        model.release.set()
        await first
        result = await kept
        await batcher.stop()
        return model, result
    model, result = run(main())
    assert model.calls == [1, 1]
    assert int(result.labels[0, 0]) == 2


def test_stop_drains_queued_work_then_refuses():
    async def main():
        model = FakeModel(delay=0.05)
        batcher = await started(model, max_batch_size=2, max_delay_s=0)
        pending = [asyncio.create_task(batcher.submit(image(v), (S, S), timeout=5))
                   for v in range(5)]
        await asyncio.sleep(0.01)
        await batcher.stop(timeout=5)
        results = await asyncio.gather(*pending)
        with pytest.raises(BatcherStopped):
            await batcher.submit(image(9), (S, S), timeout=5)
        return results
    results = run(main())
    assert [int(r.labels[0, 0]) for r in results] == list(range(5))


def test_metrics_see_batch_sizes_and_queue_depth():
    async def main():
        metrics = Metrics(max_batch_size=4)
        batcher = await started(FakeModel(), metrics=metrics.versions.of("voc", 3))
        await asyncio.gather(*(batcher.submit(image(v), (S, S), timeout=5) for v in range(3)))
        await batcher.stop()
        return metrics
    metrics = run(main())
    registry, labels = metrics.registry, {"model": "voc", "version": "3"}
    assert registry.get_sample_value("atrous_batch_size_count", labels) == 1
    assert registry.get_sample_value("atrous_batch_size_sum", labels) == 3
    assert registry.get_sample_value("atrous_queue_depth", labels) == 0
