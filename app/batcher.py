"""Coalesces concurrent requests into batched model calls, with backpressure.

After ray serve's ``@serve.batch`` (``python/ray/serve/batching.py``), minus its two
weak points: the queue here is bounded (a full queue refuses at once with ``QueueFull``)
and shutdown is an explicit, draining ``stop()`` rather than ``__del__``.  It knows
nothing of HTTP: its errors are its own (``BatcherError``), mapped by the API layer.

* ``submit`` puts one letterboxed image in the queue and awaits its own future, with a
  deadline; a caller that gives up (deadline, client gone) cancels the future, and the
  worker drops cancelled items before they reach the model.
* The worker takes the first waiting image, then waits at most ``max_delay_s`` for the
  batch to fill to ``max_batch_size``, and runs the blocking model call in a dedicated
  thread so the event loop keeps serving.
* The model must return one result per image; each future gets its own result or the
  batch's exception.  On an out-of-memory error the batch is split in halves and retried,
  so only an image that fails on its own gets the error.
* ``submit_group`` queues the tiles of one image (tiling, test-time augmentation) all at
  once or not at all: they fill batches like any image, share one deadline, and a queue
  without room for all of them refuses the group before any tile runs.  Such inputs ask
  for class probabilities: a batch is run once per kind of output its items want.  With
  ``consume``, each result is handed on in input order as it arrives and then dropped,
  so a request never holds every tile's output at once.
* A model call that raises fails only its batch: each of its images gets a
  ``ModelCallFailed`` (the runtime's error as its cause).  ``busy_for`` tells how long the
  current call has run, so that the service can notice a hung model thread.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from app.metrics import VersionSeries

log = logging.getLogger(__name__)

ModelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# What a queued image asks the model for.
LABELS = "labels"
PROBABILITIES = "probabilities"


class BatcherError(Exception):
    """Why the batcher did not run an image."""


class QueueFull(BatcherError):
    """The queue holds ``max_queue`` images: come back later."""


class BatcherStopped(BatcherError):
    """The batcher is stopped or stopping."""


class DeadlineExceeded(BatcherError):
    """The image's deadline passed before its result."""


class ModelCallFailed(BatcherError):
    """The model call that held this image raised (the runtime's error is the cause)."""


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """One image's model output and where its time went."""

    output: np.ndarray  # uint8 [S, S] labels, or float32 [S, S, C] probabilities
    queue_s: float  # submitted -> its batch started
    inference_s: float  # the model call that included it
    batch_size: int

    @property
    def labels(self) -> np.ndarray:
        return self.output


_NO_OUTPUT = np.zeros((0,), np.float32)
Consume = Callable[[int, BatchResult], Awaitable[None]]


@dataclasses.dataclass(eq=False)
class _Item:
    image: np.ndarray
    size: tuple[int, int]
    future: asyncio.Future[BatchResult]
    enqueued: float
    deadline: float
    kind: str = LABELS


class Batcher:
    """Bounded queue + one worker task + one model thread.

    Args:
        model: maps uint8 [N, S, S, 3] images and int32 [N, 2] sizes to [N, S, S] labels.
        max_batch_size: most images per model call.
        max_delay_s: how long the first image of a batch waits for company.
        max_queue: most images waiting; beyond it ``submit`` raises ``QueueFull``.
        oom_errors: exception types that mean "too big a batch": the batch is split.
        metrics: where to report batch sizes and queue depth (optional).
        probabilities: maps the same inputs to float32 [N, S, S, C] class probabilities
            (what ``submit_group`` asks for); None if the model cannot.
    """

    def __init__(self, model: ModelFn, *, max_batch_size: int, max_delay_s: float,
                 max_queue: int, oom_errors: tuple[type[BaseException], ...] = (MemoryError,),
                 metrics: VersionSeries | None = None,
                 probabilities: ModelFn | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_delay_s >= 0")
        self._model = model
        self._models: dict[str, ModelFn] = {LABELS: model}
        if probabilities is not None:
            self._models[PROBABILITIES] = probabilities
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._oom_errors = oom_errors
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._call_started: float | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def depth(self) -> int:
        """Images waiting in the queue (not counting the batch on the model)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def busy_for(self) -> float | None:
        """Seconds the model call in progress has run; None between calls."""
        started = self._call_started
        return None if started is None else time.monotonic() - started

    @property
    def full(self) -> bool:
        """True when ``submit`` would be refused: callers can refuse before decoding."""
        return self._queue is not None and self._queue.full()

    def check_capacity(self) -> None:
        """Raises ``QueueFull`` now if the queue is full (saves decoding the upload)."""
        if self.full:
            raise QueueFull(f"{self.max_queue} images already queued")

    async def start(self) -> None:
        """Starts the worker; call from the event loop that will submit."""
        if self.running:
            return
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atrous-model")
        self._worker = asyncio.create_task(self._work(), name="atrous-batcher")
        self._accepting = True

    async def stop(self, timeout: float | None = None) -> None:
        """Refuses new work, lets queued work finish (up to ``timeout``), then stops."""
        self._accepting = False
        if self._queue is not None and self.running:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                log.warning("batcher: %d queued images abandoned at shutdown", self.depth)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(BatcherStopped("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._set_depth()

    async def submit(self, image: np.ndarray, size: tuple[int, int], *,
                     timeout: float) -> BatchResult:
        """Queues one letterboxed image and waits for its labels.

        Raises:
            QueueFull: the queue is full (refused at once).
            DeadlineExceeded: ``timeout`` seconds passed before the result.
            BatcherStopped: the batcher is stopped or stopping.
        """
        if not self._accepting or self._queue is None:
            raise BatcherStopped("the server is not accepting work")
        now = time.monotonic()
        item = _Item(image, size, asyncio.get_running_loop().create_future(), now, now + timeout)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} images already queued") from None
        self._set_depth()
        try:
            async with asyncio.timeout(timeout):
                # A cancelled wait cancels the future, which the worker then skips.
                return await item.future
        except TimeoutError:
            raise DeadlineExceeded(f"no result within {timeout:g} s") from None

    async def submit_group(self, images: np.ndarray, sizes: np.ndarray, *, timeout: float,
                           kind: str = PROBABILITIES,
                           consume: Consume | None = None) -> list[BatchResult]:
        """Queues several inputs of one request (an image's tiles) together; waits for all.

        All or nothing: when the queue cannot take every input now, ``QueueFull`` is
        raised before any is queued.  One ``timeout`` covers them all; if one fails, or the
        caller leaves, the others are cancelled (the worker skips them).  With ``consume``,
        ``await consume(index, result)`` runs for each input in order as its result
        arrives, and the results returned carry no output (it was handed on, then freed).

        Raises:
            the errors of ``submit``, and ``ValueError`` for a ``kind`` the model lacks.
        """
        if kind not in self._models:
            raise ValueError(f"this model gives no {kind}")
        if not self._accepting or self._queue is None:
            raise BatcherStopped("the server is not accepting work")
        free = self.max_queue - self._queue.qsize()
        if len(images) > free:
            raise QueueFull(f"the image needs {len(images)} model inputs and the queue has "
                            f"room for {free} of {self.max_queue}")
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        items = [_Item(image, (int(size[0]), int(size[1])), loop.create_future(), now,
                       now + timeout, kind) for image, size in zip(images, sizes, strict=True)]
        for item in items:  # no await in between: nobody else can take the free slots
            self._queue.put_nowait(item)
        self._set_depth()
        futures: list[asyncio.Future[BatchResult]] = [item.future for item in items]
        del items
        try:
            async with asyncio.timeout(timeout):
                if consume is None:
                    return list(await asyncio.gather(*futures))
                return [await self._hand_on(futures, index, consume)
                        for index in range(len(futures))]
        except TimeoutError:
            raise DeadlineExceeded(f"no result within {timeout:g} s") from None
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()

    @staticmethod
    async def _hand_on(futures: list[asyncio.Future[BatchResult]], index: int,
                       consume: Consume) -> BatchResult:
        """Awaits result ``index``, hands it to ``consume``, keeps only its timings."""
        result = await futures[index]
        # A settled stand-in: the finally above skips it, and the tile's output is freed.
        done: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        done.set_result(dataclasses.replace(result, output=_NO_OUTPUT))
        futures[index] = done
        await consume(index, result)
        return done.result()

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            try:
                await self._fill(batch)
                self._set_depth()
                live = self._live(batch)
                if live:
                    await self._run(live)
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise
            except Exception:  # never let one batch kill the worker
                log.exception("batcher: unexpected error")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ModelCallFailed("batch failed"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _fill(self, batch: list[_Item]) -> None:
        assert self._queue is not None
        flush_at = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = flush_at - time.monotonic()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                return

    def _live(self, batch: list[_Item]) -> list[_Item]:
        """Drops items whose caller left or whose deadline passed while queued."""
        now = time.monotonic()
        live = []
        for item in batch:
            if item.future.done():
                continue
            if now >= item.deadline:
                item.future.set_exception(DeadlineExceeded("the deadline passed in the queue"))
                continue
            live.append(item)
        return live

    async def _run(self, batch: list[_Item]) -> None:
        for kind, model in self._models.items():  # one model call per kind of output
            live = [item for item in batch if item.kind == kind]
            if live:
                await self._run_model(model, kind, live)

    async def _run_model(self, model: ModelFn, kind: str, live: list[_Item]) -> None:
        images = [item.image for item in live]
        sizes = [item.size for item in live]
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(live))
            self._metrics.model_inputs.labels(output=kind).inc(len(live))
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._call_started = started
        try:
            outcomes = await loop.run_in_executor(self._executor, self._stack_and_call,
                                                  images, sizes, model)
        finally:
            self._call_started = None
        inference_s = time.monotonic() - started
        for item, outcome in zip(live, outcomes, strict=True):
            if item.future.done():  # the caller left while the model ran
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(BatchResult(outcome, started - item.enqueued,
                                                   inference_s, len(live)))

    def _stack_and_call(self, images: list[np.ndarray], sizes: list[tuple[int, int]],
                        model: ModelFn) -> list[np.ndarray | BaseException]:
        """The batch's arrays are built in the worker thread too: a copy of every canvas
        is work the event loop should not do."""
        return self._call(np.stack(images), np.array(sizes, np.int32), model)

    def _call(self, images: np.ndarray, sizes: np.ndarray,
              model: ModelFn | None = None) -> list[np.ndarray | BaseException]:
        """The model call (worker thread), split in halves on out-of-memory errors."""
        model = model or self._model
        count = len(images)
        try:
            labels = model(images, sizes)
        except self._oom_errors as e:
            if count == 1:
                log.error("batcher: out of memory on a single image: %s", e)
                return [_failed("the model ran out of memory on this image", e)]
            half = count // 2
            log.warning("batcher: out of memory on a batch of %d, retrying in halves", count)
            return (self._call(images[:half], sizes[:half], model)
                    + self._call(images[half:], sizes[half:], model))
        except Exception as e:  # noqa: BLE001 - every caller gets the batch's error
            log.error("batcher: model call failed: %r", e, exc_info=e)
            return [_failed(f"the model call for a batch of {count} failed", e)
                    for _ in range(count)]
        if len(labels) != count:
            error = ModelCallFailed(f"the model returned {len(labels)} results for {count} "
                                    "images")
            return [error] * count
        return list(labels)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self.depth)


def _failed(message: str, cause: BaseException) -> ModelCallFailed:
    error = ModelCallFailed(message)
    error.__cause__ = cause
    return error
