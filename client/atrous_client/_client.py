"""``AtrousClient`` and ``AsyncAtrousClient``: the same methods, blocking or awaitable.

Every call is written once in ``BaseClient`` as a generator of requests and sleeps (``Call``);
a client only drives those generators (``_run``), sends, sleeps, guards the label cache with
its kind of lock and fans ``segment_many`` out (threads or tasks).  A new option goes to
``SegmentOptions`` and ``segment_options`` (per call) or ``BaseClient.__init__`` (per client).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import TypeVar, Unpack, cast

import httpx

from ._base import BaseClient, Call, Done, Outcome, resume
from ._images import ImageInput
from ._progress import progress_bar
from ._types import Format, ModelInfo, ModelStatus, Segmentation, SegmentOptions

__all__ = ["AtrousClient", "AsyncAtrousClient"]

_T = TypeVar("_T")


class AtrousClient(BaseClient[httpx.Client, httpx.BaseTransport]):
    """Blocking client for an atrous server; thread-safe, use it as a context manager.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``; defaults to ``$ATROUS_URL``,
            then ``http://127.0.0.1:8000``.
        timeout: seconds per HTTP attempt (or an ``httpx.Timeout``).
        max_retries: extra attempts after a 429/503/504 or a connection error.
        transport: an ``httpx`` transport, e.g. ``httpx.MockTransport(handler)`` in tests.
        headers: extra headers sent with every request.
        api_key: sent as ``Authorization: Bearer <key>`` to a server with API keys;
            None (the default) reads ``$ATROUS_API_KEY``; ``""`` sends no key.
        model: the model to use on a server with several (``list_models()``); None: the
            server's default model.
        version: that model's version to use; None: its newest available one.
    """

    def _open_pool(self, transport: httpx.BaseTransport | None,
                   headers: dict[str, str]) -> httpx.Client:
        self._model_info_lock = threading.Lock()
        return httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport,
                            headers=headers)

    def __enter__(self) -> AtrousClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()

    def segment(self, image: ImageInput, *, format: Format = "png",
                **options: Unpack[SegmentOptions]) -> Segmentation:
        """Segments one image.

        Args:
            image: a path, encoded bytes, a binary file object (sent as they are; the server
                applies EXIF orientation), a PIL image or a uint8 H×W×3 / H×W array (sent as a
                lossless PNG of exactly those pixels).
            format: ``png`` downloads only the mask and computes ``classes`` here; ``json``
                takes ``classes`` (with mean confidences) from the server; ``probabilities``
                also downloads per-class probability planes (``result.probabilities``,
                ``result.probability("person")``, ``result.confidence``).  All give the
                same ``mask`` for the same options.
            **options: the keywords of ``SegmentOptions``, each documented there: ``tiling``
                (``off``, ``on`` or ``auto``), ``scales`` and ``flip`` (test-time
                augmentation), ``classes`` (the classes to keep).

        Raises:
            APIStatusError: the server refused the image (a subclass per status).
            APIConnectionError: no response, after retries.
            TypeError, ValueError: an unsupported input, before anything is sent.
        """
        request = self._segment_request(image, format, options)
        labels = self._labels()
        return self._segmentation(self._run(self._send(request)), format, labels)

    def segment_many(self, images: Iterable[ImageInput], *, format: Format = "png",
                     concurrency: int = 4, progress: bool = False,
                     **options: Unpack[SegmentOptions]) -> list[Segmentation | Exception]:
        """Segments many images, ``concurrency`` at a time, on a thread pool.

        Returns:
            one entry per input, in input order: a ``Segmentation``, or the exception that
            input raised (``AtrousError``, ``TypeError``, ``OSError``, ...).  Nothing is
            dropped and one failure never stops the others; check with
            ``isinstance(result, Exception)``.  ``options`` (tiling, scales, flip, classes)
            are ``segment``'s.
        """
        self._check_many(format, concurrency, options)
        items = list(images)
        results: list[Segmentation | Exception | None] = [None] * len(items)
        bar = progress_bar(progress, len(items))
        pool = ThreadPoolExecutor(max_workers=min(concurrency, max(len(items), 1)),
                                  thread_name_prefix="atrous-segment")
        try:
            futures: dict[Future[Segmentation], int] = {
                pool.submit(self.segment, item, format=format, **options): index
                for index, item in enumerate(items)
            }
            for future in as_completed(futures):
                index = futures[future]
                try:
                    results[index] = future.result()
                except Exception as e:  # noqa: BLE001 - reported in place, by design
                    results[index] = e
                bar.update(1)
        finally:
            # On Ctrl-C, drop what has not started instead of segmenting it in the background.
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        # Every index was filled: as_completed yields each future exactly once.
        return cast(list[Segmentation | Exception], results)

    def model_info(self) -> ModelInfo:
        """``GET /v1/model``: backbone, classes, batching, ... (also refreshes the label cache)."""
        return self._run(self._call_model_info())

    def list_models(self) -> list[ModelStatus]:
        """``GET /v1/models``: every model the server has, its versions and their states."""
        return self._run(self._call_list_models())

    def health(self) -> bool:
        """Whether the server process answers ``/healthz`` with 200 (no retries).

        Raises:
            APIConnectionError: nothing answered.
        """
        return self._run(self._call_probe("/healthz"))

    def ready(self) -> bool:
        """Whether ``/readyz`` says the model is loaded and warm (no retries).

        Raises:
            APIConnectionError: nothing answered.
        """
        return self._run(self._call_probe("/readyz"))

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Polls ``/readyz`` until it answers 200, riding over connection errors.

        Raises:
            APITimeoutError: not ready within ``timeout`` seconds.
        """
        self._run(self._call_wait_until_ready(timeout))

    # Internals --------------------------------------------------------------------------

    def _labels(self) -> tuple[str, ...]:
        with self._model_info_lock:
            if self._model_info is None:
                self.model_info()
            assert self._model_info is not None
            return self._model_info.labels

    def _run(self, call: Call[_T]) -> _T:
        """Drives ``call`` with blocking sends and sleeps."""
        outcome: Outcome = None
        while not isinstance(step := resume(call, outcome), Done):
            if isinstance(step, float):
                self._sleep(step)
                outcome = None
                continue
            try:
                outcome = self._client.send(step)
            except httpx.TransportError as e:
                outcome = e
        return step.value

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)


class AsyncAtrousClient(BaseClient[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """``AtrousClient`` with awaitable methods; use it as an ``async with`` context manager.

    Takes the same arguments as ``AtrousClient``; ``transport`` is an
    ``httpx.AsyncBaseTransport``.
    """

    def _open_pool(self, transport: httpx.AsyncBaseTransport | None,
                   headers: dict[str, str]) -> httpx.AsyncClient:
        # Created inside the running loop, once the first call needs it (``_labels``).
        self._model_info_lock: asyncio.Lock | None = None
        return httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout,
                                 transport=transport, headers=headers)

    async def __aenter__(self) -> AsyncAtrousClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._client.aclose()

    async def segment(self, image: ImageInput, *, format: Format = "png",
                      **options: Unpack[SegmentOptions]) -> Segmentation:
        """Segments one image; see ``AtrousClient.segment``."""
        # Reading files and PNG-encoding arrays is blocking work: keep it off the event loop.
        request = await asyncio.to_thread(self._segment_request, image, format, options)
        labels = await self._labels()
        response = await self._run(self._send(request))
        return await asyncio.to_thread(self._segmentation, response, format, labels)

    async def segment_many(self, images: Iterable[ImageInput], *, format: Format = "png",
                           concurrency: int = 4, progress: bool = False,
                           **options: Unpack[SegmentOptions]) -> list[Segmentation | Exception]:
        """Segments many images, at most ``concurrency`` in flight; see
        ``AtrousClient.segment_many`` (same ordering and per-item errors)."""
        self._check_many(format, concurrency, options)
        items = list(images)
        semaphore = asyncio.Semaphore(concurrency)
        bar = progress_bar(progress, len(items))

        async def one(item: ImageInput) -> Segmentation | Exception:
            async with semaphore:
                try:
                    return await self.segment(item, format=format, **options)
                except Exception as e:  # noqa: BLE001 - reported in place, by design
                    return e
                finally:
                    bar.update(1)

        try:
            return list(await asyncio.gather(*(one(item) for item in items)))
        finally:
            bar.close()

    async def model_info(self) -> ModelInfo:
        """``GET /v1/model``; see ``AtrousClient.model_info``."""
        return await self._run(self._call_model_info())

    async def list_models(self) -> list[ModelStatus]:
        """``GET /v1/models``; see ``AtrousClient.list_models``."""
        return await self._run(self._call_list_models())

    async def health(self) -> bool:
        """Whether ``/healthz`` answers 200; see ``AtrousClient.health``."""
        return await self._run(self._call_probe("/healthz"))

    async def ready(self) -> bool:
        """Whether ``/readyz`` answers 200; see ``AtrousClient.ready``."""
        return await self._run(self._call_probe("/readyz"))

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Polls ``/readyz`` until 200; see ``AtrousClient.wait_until_ready``."""
        await self._run(self._call_wait_until_ready(timeout))

    # Internals --------------------------------------------------------------------------

    async def _labels(self) -> tuple[str, ...]:
        if self._model_info is None:
            if self._model_info_lock is None:
                self._model_info_lock = asyncio.Lock()
            async with self._model_info_lock:
                if self._model_info is None:
                    await self.model_info()
        assert self._model_info is not None
        return self._model_info.labels

    async def _run(self, call: Call[_T]) -> _T:
        """Drives ``call`` with awaited sends and sleeps."""
        outcome: Outcome = None
        while not isinstance(step := resume(call, outcome), Done):
            if isinstance(step, float):
                await self._sleep(step)
                outcome = None
                continue
            try:
                outcome = await self._client.send(step)
            except httpx.TransportError as e:
                outcome = e
        return step.value

    @staticmethod
    async def _sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)
