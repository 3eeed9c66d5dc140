"""What the sync and async clients share: configuration, retry policy, request building and
response decoding.  Everything here is free of I/O; the subclasses only send and sleep.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import io
import logging
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar
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


class BaseClient(Generic[_HttpxClientT]):
    """Configuration and policy shared by ``AtrousClient`` and ``AsyncAtrousClient``."""

    _client: _HttpxClientT
    base_url: httpx.URL
    timeout: httpx.Timeout
    max_retries: int

    def __init__(self, *, base_url: str | httpx.URL | None, timeout: float | httpx.Timeout,
                 max_retries: int, api_key: str | None = None, model: str | None = None,
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

    @staticmethod
    def _segment_parts(image: ImageInput, format: str,
                       options: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, str],
                                                                         dict[str, str]]:
        """Body, headers and query of ``POST /segment``; raises before any I/O on bad input."""
        check_format(format)
        body, content_type = encode_input(image)
        return (body, {"Content-Type": content_type, "Accept": _ACCEPT[format]},
                {"format": format, **(options or {})})

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
    def _is_retryable_transport_error(exc: httpx.TransportError) -> bool:
        return isinstance(exc, _RETRYABLE_TRANSPORT_ERRORS)

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


def segment_options(tiling: str, scales: Sequence[float] | None, flip: bool,
                    classes: Sequence[str | int] | None) -> dict[str, str]:
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


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")


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
