"""Typed dependencies for the routes (``Annotated`` aliases).

``leased`` holds the model version a request runs on (``VersionDep``: for the whole
request): ``/segment`` and ``/v1/model`` get the default model's newest available version,
``/v1/models/{model_name}[/versions/{model_version}]/...`` the one named.  The version is
chosen once, on arrival, and every tile, scale and flip runs on it even if a newer version
becomes available meanwhile; the response names it (``X-Atrous-Model``).  ``/segment``
takes it with ``with leased(request)`` rather than as a dependency: there FastAPI's solving
of the dependencies cost the event loop, the thread that holds the GIL the most, ~0.1 ms
per request (benchmarks/RESULTS.md, "/segment's version lease").

Every dependency here is ``async def``: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread handoff per dependency per request, which cost more of the event
loop's time than the route itself (``benchmarks/host_ceiling.py``).
"""

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, Path, Request

from app.api.errors import ValidationError
from app.context import set_served_model
from app.repository.manager import ModelManager, ModelVersion
from app.settings import Settings

MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.models
    return manager


ManagerDep = Annotated[ModelManager, Depends(get_manager)]


@contextlib.contextmanager
def leased(request: Request) -> Iterator[ModelVersion]:
    """The version this request runs on, held until the ``with`` ends."""
    name = request.path_params.get(MODEL_NAME)
    number = request.path_params.get(MODEL_VERSION)
    version = None
    if number is not None:
        # version_path documents the rule, but FastAPI would call this dependency before
        # reporting its own 422, and the lease would answer 404 for "abc".
        if not (number.isascii() and number.isdigit()) or int(number) < 1:
            raise ValidationError(f"path.{MODEL_VERSION}: a version is a whole number from 1 "
                                  f"(got {number!r})")
        version = int(number)
    manager: ModelManager = request.app.state.models
    with manager.lease(name, version) as held:
        set_served_model(request.scope, held.label)
        yield held


async def leased_version(request: Request) -> AsyncIterator[ModelVersion]:
    """``leased`` as a dependency: held until the request ends."""
    with leased(request) as held:
        yield held


VersionDep = Annotated[ModelVersion, Depends(leased_version)]


async def model_path(model_name: Annotated[str, Path(description="a model's name")]) -> None:
    """Documents the ``{model_name}`` path parameter (``leased_version`` reads it)."""


async def version_path(model_name: Annotated[str, Path(description="a model's name")],
                 model_version: Annotated[int, Path(ge=1, description="a version number")]
                 ) -> None:
    """Documents ``{model_name}`` and ``{model_version}`` (``leased_version`` reads them)."""


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app``)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(app_settings)]
