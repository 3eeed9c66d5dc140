"""What the sync and async clients share: configuration, retry policy, request building and
response decoding.  Everything here is free of I/O; the subclasses only send and sleep.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.utils
import io
import logging
import os
import random
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AtrousError,
    status_error_class,
)
from ._images import ImageInput, decode_mask, encode_input
from ._types import (
    Format,
    ModelInfo,
    ModelStatus,
    Segmentation,
    SegmentOptions,
    Tiling,
    classes_from_json,
    classes_from_mask,
)
from ._version import __version__

log = logging.getLogger("atrous_client")

ENV_BASE_URL = "ATROUS_URL"
ENV_API_KEY = "ATROUS_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2

RETRY_STATUSES = frozenset({429, 503, 504})
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A server asking for a longer pause than this is not coming back soon: fail now rather than
# block the caller for minutes, and never retry sooner than it asked.
MAX_RETRY_AFTER = 60.0
FORMATS: tuple[Format, ...] = ("png", "json", "probabilities")
TILINGS: tuple[Tiling, ...] = ("off", "auto", "on")
_ACCEPT = {"png": "image/png", "json": "application/json", "probabilities": "application/x-npz"}

# Transport failures worth another try.  Others (an unsupported URL scheme, a local protocol
# error) would fail the same way again.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError,
                               httpx.RemoteProtocolError)

_HttpxClientT = TypeVar("_HttpxClientT", httpx.Client, httpx.AsyncClient)
_TransportT = TypeVar("_TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)
_T = TypeVar("_T")

PROBE_POLL_S = 0.5

Call: TypeAlias = Generator["httpx.Request | float", "httpx.Response | None", _T]
"""One client call written once for both clients, free of I/O: it yields a request to send
(and receives the response, or has the ``httpx.TransportError`` thrown in) or a number of
seconds to sleep (and receives None), and returns the call's result.  ``AtrousClient._run``
drives it with blocking sends and sleeps, ``AsyncAtrousClient._run`` with awaited ones."""

Outcome: TypeAlias = "httpx.Response | httpx.TransportError | None"
"""What a driver hands back to a ``Call``: the response, the transport error, or None (after a
sleep, and to start it)."""


@dataclasses.dataclass(frozen=True)
class Done(Generic[_T]):
    """A finished ``Call``'s result."""

    value: _T


def resume(call: Call[_T], outcome: Outcome) -> httpx.Request | float | Done[_T]:
    """Hands ``outcome`` to ``call``: its next step, or ``Done`` with what it returned.  Errors
    it raises (``AtrousError`` and the like) pass through to the caller."""
    try:
        if isinstance(outcome, httpx.TransportError):
            return call.throw(outcome)
        return call.send(outcome)
    except StopIteration as done:
        return Done(done.value)


class BaseClient(Generic[_HttpxClientT, _TransportT]):
    """What ``AtrousClient`` and ``AsyncAtrousClient`` share: the constructor, the retry
    policy, and every call as a ``Call`` generator; a subclass only opens its pool, drives the
    generators (``_run``) and fans ``segment_many`` out."""

    _client: _HttpxClientT
    base_url: httpx.URL
    timeout: httpx.Timeout
    max_retries: int

    def __init__(self, base_url: str | httpx.URL | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: _TransportT | None = None,
                 headers: Mapping[str, str] | None = None,
                 api_key: str | None = None, model: str | None = None,
                 version: int | None = None) -> None:
        if version is not None and model is None:
            raise ValueError("version= needs model=")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        # An explicit argument beats the environment, which beats the local default.
        url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        self.base_url = httpx.URL(str(url))
        if self.base_url.scheme not in ("http", "https") or not self.base_url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {str(url)!r}")
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = max_retries
        # An explicit argument beats the environment; "" means no key even if the variable is set.
        self._api_key = check_api_key(api_key if api_key is not None
                                      else os.environ.get(ENV_API_KEY))
        self._model_info: ModelInfo | None = None
        # The model (and version) every call goes to; None: the server's default model.
        self.model = model
        self.version = version
        self._client = self._open_pool(transport, {**self._default_headers(), **(headers or {})})

    def _open_pool(self, transport: _TransportT | None,
                   headers: dict[str, str]) -> _HttpxClientT:
        """The ``httpx`` client (sync or async) every request goes through."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={str(self.base_url)!r})"

    @property
    def is_closed(self) -> bool:
        """Whether ``close()`` (or the ``with`` block) has released the connections."""
        return self._client.is_closed

    def _default_headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"atrous-client/{__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _build_request(self, method: str, path: str, *, content: bytes | None = None,
                       params: Mapping[str, str] | None = None,
                       headers: Mapping[str, str] | None = None,
                       timeout: httpx.Timeout | None = None) -> httpx.Request:
        # One id per logical call, kept across retries, so the server's log ties them together.
        all_headers = {"X-Request-ID": uuid.uuid4().hex, **(headers or {})}
        return self._client.build_request(
            method, path, content=content, params=params, headers=all_headers,
            timeout=timeout if timeout is not None else self.timeout)

    def _path(self, leaf: str) -> str:
        """``/segment`` or ``/v1/model`` on the default model, else the model's (version's)
        own URL: ``/v1/models/{model}[/versions/{version}]`` (+ ``/segment``)."""
        if self.model is None:
            return "/segment" if leaf == "segment" else "/v1/model"
        path = "/v1/models/" + quote(self.model, safe="")
        if self.version is not None:
            path += f"/versions/{int(self.version)}"
        return path + "/segment" if leaf == "segment" else path

    @staticmethod
    def _models_from(response: httpx.Response) -> list[ModelStatus]:
        try:
            return [ModelStatus.from_json(m) for m in BaseClient._json(response)["models"]]
        except (KeyError, TypeError, ValueError) as e:
            raise AtrousError(f"unexpected /v1/models JSON: {e!r}",
                              request_id=response.headers.get("X-Request-ID")) from None

    def _segment_request(self, image: ImageInput, format: str,
                         options: SegmentOptions) -> httpx.Request:
        """``POST /segment`` for one image; raises before any I/O on bad input.  Reads files
        and PNG-encodes arrays: blocking work, which the async client runs in a thread."""
        check_format(format)
        query = {"format": format, **segment_options(**options)}
        body, content_type = encode_input(image)
        return self._build_request("POST", self._path("segment"), content=body, params=query,
                                   headers={"Content-Type": content_type,
                                            "Accept": _ACCEPT[format]})

    @staticmethod
    def _check_many(format: str, concurrency: int, options: SegmentOptions) -> None:
        """``segment_many``'s arguments, checked once before any image is read."""
        check_format(format)
        segment_options(**options)
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")

    # Calls (see ``Call``) ---------------------------------------------------------------------

    def _send(self, request: httpx.Request) -> Call[httpx.Response]:
        """Sends ``request`` until it succeeds, retrying as ``_retry_delay`` allows."""
        attempt = 0
        while True:
            try:
                response = yield request
            except httpx.TransportError as e:
                delay = (self._retry_delay(attempt, self.max_retries, None)
                         if isinstance(e, _RETRYABLE_TRANSPORT_ERRORS) else None)
                if delay is None:
                    raise self._connection_error(e, request) from e
                log.info("%s %s failed (%r); retrying in %.2f s", request.method,
                         request.url.path, e, delay)
            else:
                assert response is not None
                if response.is_success:
                    return response
                delay = self._retry_delay(attempt, self.max_retries, response)
                if delay is None:
                    raise self._status_error(response)
                log.info("%s %s answered %d; retrying in %.2f s", request.method,
                         request.url.path, response.status_code, delay)
            yield delay
            attempt += 1

    def _call_model_info(self) -> Call[ModelInfo]:
        return self._model_info_from((yield from self._send(
            self._build_request("GET", self._path("info")))))

    def _call_list_models(self) -> Call[list[ModelStatus]]:
        return self._models_from((yield from self._send(
            self._build_request("GET", "/v1/models"))))

    def _call_probe(self, path: str, timeout: float | None = None) -> Call[bool]:
        """Whether ``path`` answers 200, in one attempt."""
        request = self._build_request(
            "GET", path, timeout=None if timeout is None else httpx.Timeout(timeout))
        try:
            response = yield request
        except httpx.TransportError as e:
            raise self._connection_error(e, request) from e
        assert response is not None
        return response.status_code == 200

    def _call_wait_until_ready(self, timeout: float) -> Call[None]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and (yield from self._call_probe("/readyz", remaining)):
                    return
            except APIConnectionError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise APITimeoutError(f"{self.base_url} was not ready within {timeout:g} s")
            yield min(PROBE_POLL_S, remaining)

    # Retry policy ---------------------------------------------------------------------------

    def _retry_delay(self, attempt: int, max_retries: int,
                     response: httpx.Response | None) -> float | None:
        """Seconds to sleep before retrying after failed attempt ``attempt`` (0-based), or None.

        ``response`` is None after a transport error.  Retry-After (seconds or an HTTP date) is
        honoured exactly, plus up to 10% so that clients told the same pause do not return
        in lockstep; without it the delay grows 0.5, 1, 2, ... 8 s with jitter.
        """
        if attempt >= max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                if retry_after > MAX_RETRY_AFTER:
                    return None
                return retry_after * (1.0 + 0.1 * random.random())
        backoff = min(INITIAL_RETRY_DELAY * 2.0 ** attempt, MAX_RETRY_DELAY)
        return backoff * (0.5 + 0.5 * random.random())

    @staticmethod
    def _connection_error(exc: httpx.TransportError,
                          request: httpx.Request) -> APIConnectionError:
        cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        what = "timed out" if cls is APITimeoutError else "failed"
        return cls(f"{request.method} {request.url} {what}: {exc!r}")

    # Responses ------------------------------------------------------------------------------

    @staticmethod
    def _status_error(response: httpx.Response) -> APIStatusError:
        code, message, request_id = _parse_envelope(response)
        return status_error_class(response.status_code)(
            message, response=response, code=code,
            request_id=request_id or response.headers.get("X-Request-ID"))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as e:
            raise AtrousError(f"the server sent invalid JSON: {e}",
                              status_code=response.status_code,
                              request_id=response.headers.get("X-Request-ID")) from None

    def _segmentation(self, response: httpx.Response, format: str,
                      labels: tuple[str, ...]) -> Segmentation:
        request_id = response.headers.get("X-Request-ID")
        timings = parse_server_timing(response.headers.get("Server-Timing"))
        planes: np.ndarray | None = None
        class_ids: tuple[int, ...] = ()
        if format == "png":
            mask = decode_mask(response.content)
            classes = classes_from_mask(mask, labels)
        elif format == "probabilities":
            try:
                with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
                    mask = archive["mask"]
                    planes = archive["probabilities"]
                    class_ids = tuple(int(i) for i in archive["class_ids"])
            except (KeyError, ValueError, OSError) as e:
                raise AtrousError(f"unexpected probabilities archive: {e!r}",
                                  request_id=request_id,
                                  status_code=response.status_code) from None
            result = Segmentation(mask=mask, labels=labels, classes=(), planes=planes,
                                  class_ids=class_ids)
            classes = classes_from_mask(mask, labels, result.confidence)
        else:
            body = self._json(response)
            try:
                mask = decode_mask(base64.b64decode(body["mask_png"], validate=True))
                classes = classes_from_json(body["classes"])
                size = (int(body["height"]), int(body["width"]))
            except (KeyError, TypeError, ValueError, binascii.Error) as e:
                raise AtrousError(f"unexpected /segment JSON: {e!r}", request_id=request_id,
                                  status_code=response.status_code) from None
            if mask.shape != size:
                raise AtrousError(f"mask_png is {mask.shape[1]}×{mask.shape[0]} but the JSON "
                                  f"says {size[1]}×{size[0]}", request_id=request_id,
                                  status_code=response.status_code)
        return Segmentation(mask=mask, labels=labels, classes=classes, request_id=request_id,
                            timings=timings, planes=planes, class_ids=class_ids,
                            model=response.headers.get("X-Atrous-Model"))

    def _model_info_from(self, response: httpx.Response) -> ModelInfo:
        try:
            info = ModelInfo.from_json(self._json(response))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise AtrousError(f"unexpected /v1/model JSON: {e!r}",
                              request_id=response.headers.get("X-Request-ID")) from None
        self._model_info = info
        return info


def check_api_key(api_key: str | None) -> str | None:
    """The key, stripped (None when blank); ValueError if it cannot travel in a header
    (the message never echoes the key)."""
    key = (api_key or "").strip()
    if not key:
        return None
    if not all("!" <= char <= "~" for char in key):
        raise ValueError("api_key must be printable ASCII without spaces "
                         f"(from the argument or ${ENV_API_KEY})")
    return key


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")


def segment_options(*, tiling: str = "off", scales: Sequence[float] | None = None,
                    flip: bool = False,
                    classes: Sequence[str | int] | None = None) -> dict[str, str]:
    """The query parameters beyond ``format``; only what differs from the server's default
    is sent.  Raises ``ValueError`` on values the server would refuse for sure."""
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {', '.join(TILINGS)}, got {tiling!r}")
    options: dict[str, str] = {}
    if tiling != "off":
        options["tiling"] = tiling
    if scales is not None:
        if isinstance(scales, str) or not len(scales):
            raise ValueError(f"scales must be a non-empty sequence of numbers, got {scales!r}")
        options["scales"] = ",".join(f"{float(s):g}" for s in scales)
    if flip:
        options["flip"] = "true"
    if classes is not None:
        if isinstance(classes, str) or not len(classes):
            raise ValueError(f"classes must be a non-empty sequence of labels or ids, "
                             f"got {classes!r}")
        options["classes"] = ",".join(str(c) for c in classes)
    return options


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


def parse_server_timing(value: str | None) -> dict[str, float]:
    """``decode;dur=1.2, inference;dur=690.1`` -> ``{"decode": 1.2, "inference": 690.1}``;
    metrics without a readable ``dur`` are left out."""
    timings: dict[str, float] = {}
    for metric in (value or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, raw = param.partition("=")
            if name and key.strip().lower() == "dur":
                try:
                    timings[name] = float(raw.strip().strip('"'))
                except ValueError:
                    pass
    return timings


def _parse_envelope(response: httpx.Response) -> tuple[str | None, str, str | None]:
    """(code, message, request_id) from the error envelope, tolerating bodies without one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        request_id = body.get("request_id")
        request_id = str(request_id) if request_id else None
        if isinstance(error, dict) and error.get("message"):
            code = error.get("code")
            return (str(code) if code else None), str(error["message"]), request_id
        if "detail" in body:  # a framework default that escaped the envelope
            return None, str(body["detail"]), request_id
    text = response.text.strip()
    return None, (text[:500] if text else response.reason_phrase or "error"), None
