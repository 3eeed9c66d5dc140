"""SDK: the exception tree, the error envelope, and which failures are retried how."""

from __future__ import annotations

import email.utils
import time

import atrous_client
import httpx
import pytest
from atrous_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AtrousError,
    BadRequestError,
    GatewayTimeoutError,
    InternalServerError,
    PayloadTooLargeError,
    Segmentation,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)

from tests.client.fakes import (
    MODEL_JSON,
    FakeServer,
    error_response,
    make_client,
    random_pixels,
)

# Errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("status, code, error_class", [
    (400, "corrupt_image", BadRequestError),
    (400, "empty_body", BadRequestError),
    (404, "not_found", APIStatusError),
    (413, "payload_too_large", PayloadTooLargeError),
    (413, "image_too_large", PayloadTooLargeError),
    (415, "unsupported_media_type", UnsupportedMediaTypeError),
    (422, "validation_error", UnprocessableEntityError),
    (500, "internal_error", InternalServerError),
    (502, "bad_gateway", InternalServerError),
    (503, "queue_full", ServiceUnavailableError),
    (504, "timeout", GatewayTimeoutError),
])
def test_status_errors_carry_the_envelope(client_kind: str, sleeps: list[float], status: int,
                                          code: str, error_class: type[APIStatusError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        return error_response(status, code, f"the {code} message")

    with make_client(client_kind, handler, max_retries=0) as client:
        with pytest.raises(error_class) as caught:
            client.segment(b"image bytes")
    error = caught.value
    assert type(error) is error_class
    assert isinstance(error, APIStatusError) and isinstance(error, AtrousError)
    assert (error.status_code, error.code, error.request_id) == (status, code, "rid-err")
    assert error.message == f"the {code} message"
    assert error.response.status_code == status
    assert str(error) == f"{status} {code}: the {code} message (request id rid-err)"


def test_status_error_without_envelope(client_kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway from the proxy",
                              headers={"X-Request-ID": "proxy-1"})
    with make_client(client_kind, handler, max_retries=0) as client:
        with pytest.raises(InternalServerError) as caught:
            client.model_info()
    assert caught.value.code is None
    assert caught.value.message == "Bad Gateway from the proxy"
    assert caught.value.request_id == "proxy-1"


def test_exception_tree() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIConnectionError, AtrousError)
    for cls in (BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError,
                UnprocessableEntityError, ServiceUnavailableError, GatewayTimeoutError,
                InternalServerError):
        assert cls.__bases__ == (APIStatusError,)
    assert APIStatusError.__bases__ == (AtrousError,)
    doc = atrous_client._exceptions.__doc__ or ""
    errors = [name for name in atrous_client.__all__
              if isinstance(getattr(atrous_client, name), type)
              and issubclass(getattr(atrous_client, name), AtrousError)]
    assert len(errors) == 12
    for name in errors:
        assert name in doc, f"{name} is missing from the tree in the module docstring"


# Retries --------------------------------------------------------------------------------------

class Flaky:
    """Answers ``failures`` (responses or exceptions) first, then a proper server."""

    def __init__(self, *failures: httpx.Response | Exception) -> None:
        self.failures = list(failures)
        self.server = FakeServer()
        self.attempts: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, json=MODEL_JSON)
        self.attempts.append(request)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return self.server(request)


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


# (status, Retry-After, lowest and highest acceptable sleep); None: no retry at all.
RETRY_AFTER_TABLE = [
    (503, "2", (2.0, 2.2)),
    (503, " 1.5 ", (1.5, 1.65)),
    (429, "0", (0.0, 0.0)),
    (504, "3", (3.0, 3.3)),
    (503, "<date +30 s>", (28.0, 33.1)),
    (503, "<date -30 s>", (0.0, 0.0)),
    (503, None, (0.25, 0.5)),          # no header: first backoff step, jittered
    (503, "soon", (0.25, 0.5)),        # unreadable: backoff
    (503, "-5", (0.0, 0.0)),
    (503, "3600", None),               # longer than we are willing to block: fail now
]


@pytest.mark.parametrize("status, retry_after, bounds", RETRY_AFTER_TABLE)
def test_retry_after_table(client_kind: str, sleeps: list[float], status: int,
                           retry_after: str | None,
                           bounds: tuple[float, float] | None) -> None:
    if retry_after == "<date +30 s>":
        retry_after = _http_date(30)
    elif retry_after == "<date -30 s>":
        retry_after = _http_date(-30)
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    flaky = Flaky(error_response(status, "busy", headers=headers))
    with make_client(client_kind, flaky, max_retries=2) as client:
        if bounds is None:
            with pytest.raises(APIStatusError) as caught:
                client.segment(random_pixels())
            assert caught.value.status_code == status
            assert len(flaky.attempts) == 1 and sleeps == []
            return
        result = client.segment(random_pixels())
    assert isinstance(result, Segmentation)
    assert len(flaky.attempts) == 2
    assert len(sleeps) == 1 and bounds[0] <= sleeps[0] <= bounds[1], sleeps


@pytest.mark.parametrize("status, code", [
    (400, "corrupt_image"), (404, "not_found"), (405, "method_not_allowed"),
    (413, "payload_too_large"), (415, "unsupported_media_type"), (422, "missing_image"),
    (500, "internal_error"),
])
def test_no_retry_on_other_errors(client_kind: str, sleeps: list[float], status: int,
                                  code: str) -> None:
    # Even with a Retry-After header: a bad image stays bad however often it is sent.
    flaky = Flaky(*[error_response(status, code, headers={"Retry-After": "1"})] * 5)
    with make_client(client_kind, flaky, max_retries=5) as client:
        with pytest.raises(APIStatusError) as caught:
            client.segment(random_pixels())
    assert caught.value.code == code
    assert len(flaky.attempts) == 1
    assert sleeps == []


def test_backoff_grows_with_jitter_then_gives_up(client_kind: str, sleeps: list[float]) -> None:
    flaky = Flaky(*[error_response(503, "queue_full")] * 10)
    with make_client(client_kind, flaky, max_retries=4) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            client.segment(random_pixels())
    assert caught.value.code == "queue_full"
    assert len(flaky.attempts) == 5
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        full = 0.5 * 2 ** attempt
        assert full / 2 <= delay <= full, (attempt, sleeps)


def test_jitter_spreads_delays(sleeps: list[float]) -> None:
    for _ in range(20):
        flaky = Flaky(error_response(503, "queue_full"))
        with make_client("sync", flaky, max_retries=1) as client:
            client.segment(random_pixels())
    assert len(set(sleeps)) > 10


@pytest.mark.parametrize("failure, error_class", [
    (httpx.ConnectError("connection refused"), APIConnectionError),
    (httpx.ReadError("connection reset"), APIConnectionError),
    (httpx.RemoteProtocolError("server hung up"), APIConnectionError),
    (httpx.ReadTimeout("read timed out"), APITimeoutError),
    (httpx.ConnectTimeout("connect timed out"), APITimeoutError),
])
def test_connection_errors_are_retried_then_raised(client_kind: str, sleeps: list[float],
                                                   failure: Exception,
                                                   error_class: type[Exception]) -> None:
    flaky = Flaky(failure)
    with make_client(client_kind, flaky, max_retries=2) as client:
        assert isinstance(client.segment(random_pixels()), Segmentation)  # one failure: ok
    assert len(flaky.attempts) == 2 and len(sleeps) == 1

    flaky = Flaky(*[failure] * 3)
    with make_client(client_kind, flaky, max_retries=2) as client:
        with pytest.raises(error_class) as caught:
            client.segment(random_pixels())
    assert type(caught.value) is error_class
    assert caught.value.status_code is None and caught.value.code is None
    assert "/segment" in caught.value.message
    assert len(flaky.attempts) == 3


def test_unsupported_protocol_is_not_retried(client_kind: str, sleeps: list[float]) -> None:
    flaky = Flaky(*[httpx.UnsupportedProtocol("no")] * 3)
    with make_client(client_kind, flaky, max_retries=2) as client:
        with pytest.raises(APIConnectionError):
            client.segment(random_pixels())
    assert len(flaky.attempts) == 1 and sleeps == []


def test_retries_keep_one_request_id(client_kind: str, sleeps: list[float]) -> None:
    flaky = Flaky(error_response(503, "not_ready"), httpx.ConnectError("refused"))
    with make_client(client_kind, flaky) as client:
        client.segment(random_pixels())
        client.segment(random_pixels())
    ids = [r.headers["X-Request-ID"] for r in flaky.attempts]
    assert len(ids) == 4
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
