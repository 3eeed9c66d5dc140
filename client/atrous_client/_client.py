"""``AtrousClient`` and ``AsyncAtrousClient``: the same methods, blocking or awaitable.

Both send with retries (``_request``), then hand the response to the shared decoding in
``BaseClient``; only sending, sleeping and fan-out differ.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import Any, cast

import httpx

from ._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    BaseClient,
    check_concurrency,
    check_format,
    segment_options,
)
from ._exceptions import APIConnectionError, APITimeoutError
from ._images import ImageInput
from ._progress import progress_bar
from ._types import Format, ModelInfo, ModelStatus, Segmentation, Tiling

log = logging.getLogger("atrous_client")

__all__ = ["AtrousClient", "AsyncAtrousClient"]

_PROBE_POLL_S = 0.5


class AtrousClient(BaseClient[httpx.Client]):
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

    def __init__(self, base_url: str | httpx.URL | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 api_key: str | None = None, model: str | None = None,
                 version: int | None = None) -> None:
        super().__init__(base_url=base_url, timeout=timeout, max_retries=max_retries,
                         api_key=api_key, model=model, version=version)
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                    transport=transport,
                                    headers={**self._default_headers(), **(headers or {})})
        self._model_info_lock = threading.Lock()

    def __enter__(self) -> AtrousClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool."""
        self._client.close()

    def segment(self, image: ImageInput, *, format: Format = "png", tiling: Tiling = "off",
                scales: Sequence[float] | None = None, flip: bool = False,
                classes: Sequence[str | int] | None = None) -> Segmentation:
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
            tiling: ``off`` (DeepLab's single pass), ``on`` (overlapping tiles at native
                resolution, for large images with thin structures) or ``auto``.
            scales: test-time scales whose probabilities are averaged, e.g. DeepLab's
                ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``; None is ``(1.0,)``.
            flip: also run on the mirrored image and average.
            classes: labels or ids to keep; other classes become background (0).

        Raises:
            APIStatusError: the server refused the image (a subclass per status).
            APIConnectionError: no response, after retries.
            TypeError, ValueError: an unsupported input, before anything is sent.
        """
        options = segment_options(tiling, scales, flip, classes)
        body, headers, params = self._segment_parts(image, format, options)
        labels = self._labels()
        response = self._request("POST", self._path("segment"), content=body, headers=headers,
                                 params=params)
        return self._segmentation(response, format, labels)

    def segment_many(self, images: Iterable[ImageInput], *, format: Format = "png",
                     concurrency: int = 4, progress: bool = False,
                     **options: Any) -> list[Segmentation | Exception]:
        """Segments many images, ``concurrency`` at a time, on a thread pool.

        Returns:
            one entry per input, in input order: a ``Segmentation``, or the exception that
            input raised (``AtrousError``, ``TypeError``, ``OSError``, ...).  Nothing is
            dropped and one failure never stops the others; check with
            ``isinstance(result, Exception)``.  ``options`` (tiling, scales, flip, classes)
            are ``segment``'s.
        """
        check_format(format)
        segment_options(**{"tiling": "off", "scales": None, "flip": False, "classes": None,
                           **options})
        check_concurrency(concurrency)
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
        return self._model_info_from(self._request("GET", self._path("info")))

    def list_models(self) -> list[ModelStatus]:
        """``GET /v1/models``: every model the server has, its versions and their states."""
        return self._models_from(self._request("GET", "/v1/models"))

    def health(self) -> bool:
        """Whether the server process answers ``/healthz`` with 200 (no retries).

        Raises:
            APIConnectionError: nothing answered.
        """
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether ``/readyz`` says the model is loaded and warm (no retries).

        Raises:
            APIConnectionError: nothing answered.
        """
        return self._probe("/readyz")

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Polls ``/readyz`` until it answers 200, riding over connection errors.

        Raises:
            APITimeoutError: not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and self._probe("/readyz", timeout=remaining):
                    return
            except APIConnectionError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError(f"{self.base_url} was not ready within {timeout:g} s")
            self._sleep(min(_PROBE_POLL_S, remaining))

    # Internals --------------------------------------------------------------------------

    def _labels(self) -> tuple[str, ...]:
        with self._model_info_lock:
            if self._model_info is None:
                self.model_info()
            assert self._model_info is not None
            return self._model_info.labels

    def _probe(self, path: str, timeout: float | None = None) -> bool:
        request = self._build_request(
            "GET", path, timeout=None if timeout is None else httpx.Timeout(timeout))
        try:
            response = self._client.send(request)
        except httpx.TransportError as e:
            raise self._connection_error(e, request) from e
        return response.status_code == 200

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self._build_request(method, path, **kwargs)
        attempt = 0
        while True:
            try:
                response = self._client.send(request)
            except httpx.TransportError as e:
                delay = (self._retry_delay(attempt, self.max_retries, None)
                         if self._is_retryable_transport_error(e) else None)
                if delay is None:
                    raise self._connection_error(e, request) from e
                log.info("%s %s failed (%r); retrying in %.2f s", method, path, e, delay)
            else:
                if response.is_success:
                    return response
                delay = self._retry_delay(attempt, self.max_retries, response)
                if delay is None:
                    raise self._status_error(response)
                log.info("%s %s answered %d; retrying in %.2f s", method, path,
                         response.status_code, delay)
            self._sleep(delay)
            attempt += 1

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)


class AsyncAtrousClient(BaseClient[httpx.AsyncClient]):
    """``AtrousClient`` with awaitable methods; use it as an ``async with`` context manager.

    Takes the same arguments as ``AtrousClient``; ``transport`` is an
    ``httpx.AsyncBaseTransport``.
    """

    def __init__(self, base_url: str | httpx.URL | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 api_key: str | None = None, model: str | None = None,
                 version: int | None = None) -> None:
        super().__init__(base_url=base_url, timeout=timeout, max_retries=max_retries,
                         api_key=api_key, model=model, version=version)
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout,
                                         transport=transport,
                                         headers={**self._default_headers(), **(headers or {})})
        self._model_info_lock: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncAtrousClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._client.aclose()

    async def segment(self, image: ImageInput, *, format: Format = "png", tiling: Tiling = "off",
                      scales: Sequence[float] | None = None, flip: bool = False,
                      classes: Sequence[str | int] | None = None) -> Segmentation:
        """Segments one image; see ``AtrousClient.segment``."""
        check_format(format)
        options = segment_options(tiling, scales, flip, classes)
        # Reading files and PNG-encoding arrays is blocking work: keep it off the event loop.
        body, headers, params = await asyncio.to_thread(self._segment_parts, image, format,
                                                        options)
        labels = await self._labels()
        response = await self._request("POST", self._path("segment"), content=body,
                                       headers=headers, params=params)
        return await asyncio.to_thread(self._segmentation, response, format, labels)

    async def segment_many(self, images: Iterable[ImageInput], *, format: Format = "png",
                           concurrency: int = 4, progress: bool = False,
                           **options: Any) -> list[Segmentation | Exception]:
        """Segments many images, at most ``concurrency`` in flight; see
        ``AtrousClient.segment_many`` (same ordering and per-item errors)."""
        check_format(format)
        segment_options(**{"tiling": "off", "scales": None, "flip": False, "classes": None,
                           **options})
        check_concurrency(concurrency)
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
        return self._model_info_from(await self._request("GET", self._path("info")))

    async def list_models(self) -> list[ModelStatus]:
        """``GET /v1/models``; see ``AtrousClient.list_models``."""
        return self._models_from(await self._request("GET", "/v1/models"))

    async def health(self) -> bool:
        """Whether ``/healthz`` answers 200; see ``AtrousClient.health``."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """Whether ``/readyz`` answers 200; see ``AtrousClient.ready``."""
        return await self._probe("/readyz")

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Polls ``/readyz`` until 200; see ``AtrousClient.wait_until_ready``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and await self._probe("/readyz", timeout=remaining):
                    return
            except APIConnectionError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError(f"{self.base_url} was not ready within {timeout:g} s")
            await self._sleep(min(_PROBE_POLL_S, remaining))

    # Internals --------------------------------------------------------------------------

    async def _labels(self) -> tuple[str, ...]:
        if self._model_info is None:
            # Created here, inside the running loop, and only once the first call needs it.
            if self._model_info_lock is None:
                self._model_info_lock = asyncio.Lock()
            async with self._model_info_lock:
                if self._model_info is None:
                    await self.model_info()
        assert self._model_info is not None
        return self._model_info.labels

    async def _probe(self, path: str, timeout: float | None = None) -> bool:
        request = self._build_request(
            "GET", path, timeout=None if timeout is None else httpx.Timeout(timeout))
        try:
            response = await self._client.send(request)
        except httpx.TransportError as e:
            raise self._connection_error(e, request) from e
        return response.status_code == 200

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self._build_request(method, path, **kwargs)
        attempt = 0
        while True:
            try:
                response = await self._client.send(request)
            except httpx.TransportError as e:
                delay = (self._retry_delay(attempt, self.max_retries, None)
                         if self._is_retryable_transport_error(e) else None)
                if delay is None:
                    raise self._connection_error(e, request) from e
                log.info("%s %s failed (%r); retrying in %.2f s", method, path, e, delay)
            else:
                if response.is_success:
                    return response
                delay = self._retry_delay(attempt, self.max_retries, response)
                if delay is None:
                    raise self._status_error(response)
                log.info("%s %s answered %d; retrying in %.2f s", method, path,
                         response.status_code, delay)
            await self._sleep(delay)
            attempt += 1

    @staticmethod
    async def _sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)

