"""Per-request context kept in the ASGI scope: the request id."""

import random
import re
from collections.abc import MutableMapping
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
MODEL_HEADER = "X-Atrous-Model"
_SCOPE_KEY = "atrous.request_id"
_MODEL_KEY = "atrous.model"
# What we accept from clients: short, printable, no separators that could split a log line.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Fresh ids from a generator seeded once per process from the OS (os.urandom per request
# is a system call on the event loop's hot path); unique, not secret.
_ids = random.Random()


def assign_request_id(scope: MutableMapping[str, Any]) -> str:
    """The client's X-Request-ID if it is sane, else a fresh hex id; stored in the scope."""
    supplied = None
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            supplied = value.decode("latin-1")
            break
    request_id = (supplied if supplied and _VALID_REQUEST_ID.fullmatch(supplied)
                  else f"{_ids.getrandbits(128):032x}")
    scope[_SCOPE_KEY] = request_id
    return request_id


def request_id_of(scope: MutableMapping[str, Any]) -> str | None:
    value = scope.get(_SCOPE_KEY)
    return value if isinstance(value, str) else None


def set_served_model(scope: MutableMapping[str, Any], label: str) -> None:
    """Records the ``model/version`` serving this request (sent as ``X-Atrous-Model``)."""
    scope[_MODEL_KEY] = label


def served_model_of(scope: MutableMapping[str, Any]) -> str | None:
    value = scope.get(_MODEL_KEY)
    return value if isinstance(value, str) else None
