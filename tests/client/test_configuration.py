"""SDK: constructor arguments beat the environment; health and readiness probes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import atrous_client
import httpx
import pytest
from atrous_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncAtrousClient,
    AtrousClient,
)

from tests.client.fakes import (
    FakeServer,
    SyncView,
    error_response,
    make_client,
)

# Configuration --------------------------------------------------------------------------------

def _host_seen(kind: str, monkeypatch: pytest.MonkeyPatch, env: str | None,
               base_url: str | None) -> str:
    if env is None:
        monkeypatch.delenv("ATROUS_URL", raising=False)
    else:
        monkeypatch.setenv("ATROUS_URL", env)
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"status": "ok"})

    transport = httpx.MockTransport(handler)
    client: Any = (AtrousClient(base_url, transport=transport) if kind == "sync"
                   else SyncView(AsyncAtrousClient(base_url, transport=transport)))
    with client:
        assert client.health() is True
    return str(seen[0])


def test_base_url_argument_beats_environment_beats_default(
        client_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _host_seen(client_kind, monkeypatch, "http://env.test:9000", None) == \
        "http://env.test:9000/healthz"
    assert _host_seen(client_kind, monkeypatch, "http://env.test:9000",
                      "http://arg.test/prefix") == "http://arg.test/prefix/healthz"
    assert _host_seen(client_kind, monkeypatch, None, None) == "http://127.0.0.1:8000/healthz"


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "ftp://example.com"}, "http"),
    ({"base_url": "not a url"}, "http"),
    ({"max_retries": -1}, "max_retries"),
])
def test_bad_configuration(client_kind: str, kwargs: dict[str, Any], match: str) -> None:
    cls = AtrousClient if client_kind == "sync" else AsyncAtrousClient
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_headers_and_timeout_reach_requests(client_kind: str, server: FakeServer) -> None:
    with make_client(client_kind, server, timeout=7.5,
                     headers={"Authorization": "Bearer t"}) as client:
        client.model_info()
    request = server.requests[-1]
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["User-Agent"] == f"atrous-client/{atrous_client.__version__}"
    assert request.extensions["timeout"]["read"] == 7.5


def test_context_managers_close_the_pool(server: FakeServer) -> None:
    with AtrousClient(transport=httpx.MockTransport(server)) as client:
        assert not client.is_closed
    assert client.is_closed
    assert repr(client) == "AtrousClient(base_url='http://127.0.0.1:8000')"

    async def use() -> AsyncAtrousClient:
        async with AsyncAtrousClient(transport=httpx.MockTransport(server)) as aclient:
            assert not aclient.is_closed
        return aclient
    assert asyncio.run(use()).is_closed


# Health and readiness -------------------------------------------------------------------------

def test_health_and_ready(client_kind: str) -> None:
    state = {"ready": False}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if state["ready"]:
            return httpx.Response(200, json={"status": "ready"})
        return error_response(503, "not_ready", headers={"Retry-After": "1"})

    with make_client(client_kind, handler) as client:
        assert client.health() is True
        assert client.ready() is False
        state["ready"] = True
        assert client.ready() is True


def test_probes_raise_when_nothing_answers(client_kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    with make_client(client_kind, handler) as client:
        with pytest.raises(APIConnectionError):
            client.health()
        with pytest.raises(APIConnectionError):
            client.ready()


def test_wait_until_ready_rides_over_refusals_and_503(client_kind: str,
                                                      sleeps: list[float]) -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"), error_response(503, "not_ready"),
        httpx.Response(200, json={"status": "ready"})]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with make_client(client_kind, handler) as client:
        client.wait_until_ready(timeout=30)
    assert seen == ["/readyz"] * 3
    assert len(sleeps) == 2 and all(0 < s <= 0.5 for s in sleeps)


def test_wait_until_ready_times_out(client_kind: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error_response(503, "not_ready")
    with make_client(client_kind, handler) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match="not ready within 0.3 s"):
            client.wait_until_ready(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
