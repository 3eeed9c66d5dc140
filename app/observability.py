"""Pure ASGI middleware: request ids on every response, request counts and latencies.

Pure ASGI rather than ``BaseHTTPMiddleware``, so that the route can still listen to the
raw ``receive`` channel (client disconnects) and streaming is untouched.
"""

import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import MODEL_HEADER, REQUEST_ID_HEADER, assign_request_id, served_model_of
from app.metrics import Metrics


class ObservabilityMiddleware:
    """``headers``: fixed ones for every response (a worker's name, ``app.workers``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = assign_request_id(scope)
        started = time.monotonic()
        status = 500  # what an exception escaping the app becomes

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
                served = served_model_of(scope)
                if served is not None and MODEL_HEADER not in headers:
                    headers.append(MODEL_HEADER, served)
                for name, value in self.headers:
                    headers.append(name, value)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            route = _route_label(scope)
            self.metrics.requests.labels(route=route, method=scope["method"],
                                         status=str(status)).inc()
            self.metrics.request_latency.labels(route=route).observe(time.monotonic() - started)


def _route_label(scope: Scope) -> str:
    # The route template, never the raw path: unknown paths must not grow label sets.
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
