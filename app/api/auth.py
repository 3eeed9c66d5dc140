"""API keys: the one dependency that guards the keyed routes.

With ``ATROUS_API_KEYS`` / ``ATROUS_API_KEYS_FILE`` set, ``create_app`` includes the keyed
routers (``/segment``, ``/v1/model``, and ``/metrics`` when ``ATROUS_METRICS_PUBLIC=false``)
with ``require_api_key``; without keys nothing is added, so the API (and its OpenAPI
document) is exactly the unkeyed one. Health probes and the page stay open.
"""

import hashlib
import hmac
import logging
from typing import Annotated, Any

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import SettingsDep
from app.api.errors import ForbiddenError, UnauthorizedError
from app.api.schemas import ErrorEnvelope
from app.settings import Settings

log = logging.getLogger(__name__)

# auto_error=False: a missing or non-Bearer header reaches require_api_key as None, so
# that the 401 comes in our envelope with our challenge, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="an API key from ATROUS_API_KEYS / ATROUS_API_KEYS_FILE")

RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope, "description": "no API key, or not a valid one "
          "(`WWW-Authenticate: Bearer`)"},
}


def key_matches(given: str, keys: tuple[bytes, ...]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of where they differ.

    Digests of equal length are compared, so the time does not even reveal a key's length,
    and every key is compared (no early exit on a match).
    """
    digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, hashlib.sha256(key).digest())
    return matched


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <one of the keys>``."""
    keys = settings.accepted_api_keys
    if not keys:
        return
    if credentials is None:
        raise UnauthorizedError()
    if not key_matches(credentials.credentials, keys):
        raise UnauthorizedError("the API key is not valid", invalid_token=True)


async def require_admin_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """401 without a key, 403 with a key that is not an admin key (``ATROUS_ADMIN_KEYS``)."""
    if credentials is None:
        raise UnauthorizedError("this route needs an admin key: send `Authorization: Bearer "
                                "<key>`")
    if not key_matches(credentials.credentials, settings.accepted_admin_keys):
        if key_matches(credentials.credentials, settings.accepted_api_keys):
            raise ForbiddenError()
        raise UnauthorizedError("the key is not valid", invalid_token=True)


def admin_guard() -> dict[str, Any]:
    """``include_router`` arguments for the model repository API (admin keys only)."""
    return {"dependencies": [Depends(require_admin_key)],
            "responses": {**RESPONSES, 403: {"model": ErrorEnvelope,
                                             "description": "not an admin key"}}}


def guard(settings: Settings) -> dict[str, Any]:
    """``include_router`` arguments that key a router: the dependency and the documented
    401, or nothing when the server has no keys."""
    if not settings.accepted_api_keys:
        return {}
    return {"dependencies": [Depends(require_api_key)], "responses": RESPONSES}


def log_policy(settings: Settings) -> None:
    """Says once, at start, who may call the API."""
    if settings.accepted_admin_keys:
        log.info("model repository API on: POST /v2/repository/... needs an admin key")
    keys = settings.accepted_api_keys
    if not keys:
        log.info("no API keys set (ATROUS_API_KEYS, ATROUS_API_KEYS_FILE): every route is open")
        return
    keyed = "/segment, /v1/model(s), /v2" + ("" if settings.metrics_public else ", /metrics")
    log.info("%d API key%s set: %s need Authorization: Bearer <key>", len(keys),
             "" if len(keys) == 1 else "s", keyed)
