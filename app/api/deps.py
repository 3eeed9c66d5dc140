"""Typed dependencies for the routes (``Annotated`` aliases)."""

from typing import Annotated

from fastapi import Depends, Request

from app.service import Service
from app.settings import Settings, get_settings


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[Service, Depends(get_service)]
