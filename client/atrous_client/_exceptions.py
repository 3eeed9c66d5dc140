"""Every error the SDK raises on purpose.

Our exception hierarchy::

    AtrousError                      anything that went wrong talking to the server
    ├── APIConnectionError           no usable response: refused, reset, DNS, protocol error
    │   └── APITimeoutError          connect/read/write timed out, or wait_until_ready gave up
    └── APIStatusError               the server answered with a status >= 400
        ├── BadRequestError              400  empty_body, corrupt_image
        ├── AuthenticationError          401  unauthorized: no API key, or a wrong one
        ├── PayloadTooLargeError         413  payload_too_large, image_too_large
        ├── UnsupportedMediaTypeError    415  unsupported_media_type
        ├── UnprocessableEntityError     422  missing_image, validation_error
        ├── ServiceUnavailableError      503  not_ready, queue_full,
        │                                     memory_busy                    (retried)
        ├── GatewayTimeoutError          504  timeout                        (retried)
        └── InternalServerError          other >= 500, e.g. internal_error,
                                              inference_failed

Other statuses (404, 405, 429, ...) raise a plain ``APIStatusError``; 429 is retried.
``AtrousError`` itself is raised when a 2xx response cannot be decoded (not a PNG, bad JSON).

Every error carries ``message`` (from the server's ``{"error": {"code", "message"}}`` envelope
when there is one), ``code`` (the envelope's stable machine code), ``status_code`` and
``request_id`` (the ``X-Request-ID`` the server answered with); the last three are ``None``
when no response arrived.  Mistakes in the call itself (an unsupported input type, a float
array) raise ``TypeError``/``ValueError`` before anything is sent.
"""

from __future__ import annotations

import httpx

# No __all__ here: the package's __init__ names the public errors once, and the tree above
# says how they relate.


class AtrousError(Exception):
    """Base class of every error raised by ``atrous_client``."""

    message: str
    status_code: int | None
    code: str | None
    request_id: str | None

    def __init__(self, message: str, *, status_code: int | None = None,
                 code: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id


class APIConnectionError(AtrousError):
    """The request never got a response (after all retries)."""


class APITimeoutError(APIConnectionError):
    """The request, or the wait for readiness, ran out of time."""


class APIStatusError(AtrousError):
    """The server answered with an error status; ``response`` is the raw ``httpx.Response``."""

    status_code: int
    response: httpx.Response

    def __init__(self, message: str, *, response: httpx.Response, code: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message, status_code=response.status_code, code=code,
                         request_id=request_id)
        self.response = response

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status_code}{code}: {self.message}{rid}"


class BadRequestError(APIStatusError):
    """400: an empty body or a corrupt image."""


class AuthenticationError(APIStatusError):
    """401: the server has API keys and the request carried none, or a wrong one
    (``api_key=`` / ``$ATROUS_API_KEY``)."""


class PayloadTooLargeError(APIStatusError):
    """413: the upload is over the byte limit, or the image over the pixel limit."""


class UnsupportedMediaTypeError(APIStatusError):
    """415: the bytes are not an image format the server decodes."""


class UnprocessableEntityError(APIStatusError):
    """422: a multipart body without ``image``, or a bad query value."""


class ServiceUnavailableError(APIStatusError):
    """503: the model is still loading, shutting down, or the queue is full."""


class GatewayTimeoutError(APIStatusError):
    """504: the server's request deadline passed while the image was queued or running."""


class InternalServerError(APIStatusError):
    """A 5xx other than 503 and 504: a bug on the server (its log has the traceback)."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The most specific ``APIStatusError`` subclass for an HTTP status."""
    if status_code in _STATUS_ERRORS:
        return _STATUS_ERRORS[status_code]
    if status_code >= 500:
        return InternalServerError
    return APIStatusError
