"""Typed HTTP errors, the one table mapping lower layers' errors onto them, and the one
envelope every error response uses.

Each error class carries its HTTP status and a stable machine ``code`` (the table in
``docs/http-api.md``).  Image errors (``model.inference.imaging``) and batcher errors
(``app.batcher``) know nothing of HTTP: ``HTTP_ERRORS`` maps them.
``install_error_handlers`` renders all of these, FastAPI's 422s and Starlette's 404/405 as::

    {"error": {"code": "...", "message": "..."}, "request_id": "..."}

Anything else is a bug: a 500 whose message says nothing internal, with the traceback
in the log under the request id.
"""

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import batcher, budget
from app.context import REQUEST_ID_HEADER, request_id_of
from model.inference import augmented, imaging

log = logging.getLogger(__name__)


class AtrousError(Exception):
    """Base of the errors a request can end in; subclasses fix ``status`` and ``code``."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal server error"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


# One small class per error, alike on purpose (a table spelled as classes): routes raise
# them by name, ``except`` clauses catch them by type, and each line reads as a row of the
# error table in docs/http-api.md.  A generated table would hide them from both.


class EmptyBodyError(AtrousError):
    status, code, default_message = 400, "empty_body", "the request body is empty"


class CorruptImageError(AtrousError):
    status, code, default_message = 400, "corrupt_image", "the image could not be decoded"


class UnauthorizedError(AtrousError):
    """No API key, or a wrong one, while the server has keys (RFC 6750 challenge)."""

    status, code = 401, "unauthorized"
    default_message = "this server needs an API key: send `Authorization: Bearer <key>`"

    def __init__(self, message: str | None = None, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        self.invalid_token = invalid_token

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="atrous"'
        if self.invalid_token:
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}


class NotFoundError(AtrousError):
    status, code, default_message = 404, "not_found", "no such path"


class ModelNotFoundError(AtrousError):
    status, code, default_message = 404, "model_not_found", "no such model or version"


class ForbiddenError(AtrousError):
    status, code = 403, "forbidden"
    default_message = "this key may not load or unload models"


class ConflictError(AtrousError):
    status, code, default_message = 409, "conflict", "the request conflicts with the server's state"


class MethodNotAllowedError(AtrousError):
    status, code, default_message = 405, "method_not_allowed", "method not allowed"


class PayloadTooLargeError(AtrousError):
    status, code, default_message = 413, "payload_too_large", "the request body is too large"


class ImageTooLargeError(AtrousError):
    status, code, default_message = 413, "image_too_large", "the image has too many pixels"


class TooMuchWorkError(AtrousError):
    status, code = 413, "too_much_work"
    default_message = "tiling, scales and flip would need too many model inputs"


class UnsupportedMediaTypeError(AtrousError):
    status, code = 415, "unsupported_media_type"
    default_message = "not a supported image (accepted: PNG, JPEG, WebP, GIF, BMP, TIFF)"


class MissingImageError(AtrousError):
    status, code = 422, "missing_image"
    default_message = "multipart body without an 'image' file field"


class ValidationError(AtrousError):
    status, code, default_message = 422, "validation_error", "invalid request"


class NotSupportedError(AtrousError):
    status, code = 501, "not_supported"
    default_message = "the model's runtime cannot do this"


class NotReadyError(AtrousError):
    status, code, default_message = 503, "not_ready", "the model is not ready"


class _SheddingError(AtrousError):
    """Busy: the answer also closes the connection.  The kernel hashes each connection to
    one worker (``app.workers``) and a kept-alive one stays there, so a full worker would
    keep its clients while another idles; reconnecting lets them land anywhere."""

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Connection": "close"}


class QueueFullError(_SheddingError):
    status, code, default_message = 503, "queue_full", "the server is busy; retry later"


class MemoryBusyError(_SheddingError):
    status, code = 503, "memory_busy"
    default_message = "the server's memory budget is in use; retry later"


class RequestTimeoutError(AtrousError):
    status, code, default_message = 504, "timeout", "the request deadline passed"


class InternalError(AtrousError):
    """A failure that is not the client's: the message never says more than this."""


class InferenceFailedError(AtrousError):
    """The runtime failed on this request's batch (the cause is logged, never sent)."""

    status, code = 500, "inference_failed"
    default_message = "the model failed on this request's batch; retrying may succeed"


# Lower layers' errors -> the HTTP error a request ends in (the message is kept).
HTTP_ERRORS: dict[type[Exception], type[AtrousError]] = {
    imaging.UnsupportedImageError: UnsupportedMediaTypeError,
    imaging.ImageTooLargeError: ImageTooLargeError,
    imaging.CorruptImageError: CorruptImageError,
    augmented.WorkTooLargeError: TooMuchWorkError,
    batcher.QueueFull: QueueFullError,
    batcher.BatcherStopped: NotReadyError,
    batcher.DeadlineExceeded: RequestTimeoutError,
    batcher.ModelCallFailed: InferenceFailedError,
    budget.BudgetBusy: MemoryBusyError,
    budget.OverBudget: TooMuchWorkError,
}

# Errors whose message may carry internals (a runtime's error text): the default is sent.
_PRIVATE_MESSAGES = (batcher.ModelCallFailed,)


def as_http_error(error: Exception, retry_after_s: int | None = None) -> AtrousError:
    """The HTTP error for a lower layer's error (503s carry ``Retry-After``)."""
    for kind in type(error).__mro__:
        if kind in HTTP_ERRORS:
            http_error = HTTP_ERRORS[kind]
            retry = retry_after_s if http_error.status == 503 else None
            message = None if isinstance(error, _PRIVATE_MESSAGES) else str(error) or None
            return http_error(message, retry_after=retry)
    return InternalError()


def envelope(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}, "request_id": request_id}


#: Paths of the Open Inference Protocol: their errors take its shape, ``{"error": "..."}``.
PROTOCOL_V2_PREFIX = "/v2"


def speaks_protocol_v2(request: Request) -> bool:
    path = request.url.path
    return path == PROTOCOL_V2_PREFIX or path.startswith(PROTOCOL_V2_PREFIX + "/")


def error_response(error: AtrousError, request_id: str | None, *,
                   protocol_v2: bool = False) -> JSONResponse:
    headers = error.headers()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    body = ({"error": error.message} if protocol_v2
            else envelope(error.code, error.message, request_id))
    return JSONResponse(body, status_code=error.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Registers the handlers that put every error into the envelope."""

    @app.exception_handler(AtrousError)
    async def _domain(request: Request, exc: AtrousError) -> JSONResponse:
        _count_rejection(request, exc.code)
        return error_response(exc, request_id_of(request.scope),
                              protocol_v2=speaks_protocol_v2(request))

    @app.exception_handler(imaging.ImageError)
    @app.exception_handler(batcher.BatcherError)
    @app.exception_handler(budget.BudgetError)
    async def _lower(request: Request, exc: Exception) -> JSONResponse:
        settings = getattr(request.app.state, "settings", None)
        error = as_http_error(exc, settings.retry_after_s if settings else None)
        _count_rejection(request, error.code)
        if error.status >= 500 and error.status != 503:  # ours, not the load's: log why
            log.error("%s in %s %s (request %s)", error.code, request.method, request.url.path,
                      request_id_of(request.scope), exc_info=exc)
        return error_response(error, request_id_of(request.scope),
                              protocol_v2=speaks_protocol_v2(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = ValidationError(_summarise(exc.errors()))
        _count_rejection(request, error.code)
        return error_response(error, request_id_of(request.scope),
                              protocol_v2=speaks_protocol_v2(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: AtrousError
        if exc.status_code == 404:
            error = NotFoundError(f"no route for {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}")
        else:  # not raised by our code: keep its status, give it a generic code
            request_id = request_id_of(request.scope)
            return JSONResponse(envelope("http_error", str(exc.detail), request_id),
                                status_code=exc.status_code,
                                headers={REQUEST_ID_HEADER: request_id or ""})
        response = error_response(error, request_id_of(request.scope),
                                  protocol_v2=speaks_protocol_v2(request))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request.scope)
        log.error("unhandled error in %s %s (request %s)", request.method, request.url.path,
                  request_id, exc_info=exc)
        return error_response(InternalError(), request_id,
                              protocol_v2=speaks_protocol_v2(request))


def _count_rejection(request: Request, code: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejections.labels(reason=code).inc()


def _summarise(errors: Any) -> str:
    parts = []
    for error in list(errors)[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()))
        given = f" (got {error['input']!r})" if isinstance(error.get("input"), str) else ""
        parts.append(f"{location}: {error.get('msg', 'invalid')}{given}")
    return "; ".join(parts) or "invalid request"
