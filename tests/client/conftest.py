"""Fixtures of the SDK unit tests (helpers in fakes.py)."""

from __future__ import annotations

import pytest
from atrous_client import (
    AsyncAtrousClient,
    AtrousClient,
)

from tests.client.fakes import (
    FakeServer,
)


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records retry sleeps instead of sleeping."""
    recorded: list[float] = []

    async def async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(AtrousClient, "_sleep", staticmethod(recorded.append))
    monkeypatch.setattr(AsyncAtrousClient, "_sleep", staticmethod(async_sleep))
    return recorded


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()
