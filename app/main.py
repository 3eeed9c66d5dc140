"""The app factory, its lifespan, and ``serve`` (what ``atrous serve`` runs).

    uvicorn --factory app.main:create_app       # settings from ATROUS_* variables
    python -m app                               # the same through serve()
    ATROUS_WORKERS=4 python -m app              # a supervisor and 4 worker processes

``uvicorn --factory`` always builds one process's app: ``ATROUS_WORKERS`` is for ``serve``.
"""

import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from app.api import auth
from app.api.errors import install_error_handlers
from app.api.routes import health, metrics, model_info, models, segment, v2
from app.loader import load_segmenter
from app.metrics import Metrics
from app.observability import ObservabilityMiddleware
from app.repository.manager import ModelManager
from app.service import Loader
from app.settings import Settings, get_settings
from app.web import routes as web

if TYPE_CHECKING:
    from app.workers.node import WorkerSlot

log = logging.getLogger(__name__)

API_VERSION = "1"


def create_app(settings: Settings | None = None, *, loader: Loader = load_segmenter,
               handle_signals: bool = True, node: "WorkerSlot | None" = None) -> FastAPI:
    """Builds the app; the models load in the background once the server starts.

    Args:
        settings: validated settings; default ``get_settings()`` (the environment).
        loader: settings -> warmed model (one version's); tests may pass a fake.
        handle_signals: chain a SIGTERM/SIGINT hook (flip ``/readyz`` to 503) in front
            of the server's own; in-process test clients pass False.
        node: this worker's slot when it is one of several processes (``app.workers``):
            it publishes its readiness there, and ``/readyz`` answers for every worker.
    """
    settings = settings or get_settings()
    _configure_logging()
    auth.log_policy(settings)
    if node is None and settings.workers > 1:
        log.warning("ATROUS_WORKERS=%d is for `atrous serve` / `python -m app`: this app is "
                    "one process", settings.workers)
    server_metrics = Metrics(settings.max_batch_size)
    manager = ModelManager(settings, loader, server_metrics, handle_signals=handle_signals,
                           node=node)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        publishing = (asyncio.create_task(node.publish(manager.is_ready), name="atrous-node")
                      if node is not None else None)
        try:
            yield
        finally:
            if publishing is not None:
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
            await manager.stop()

    app = FastAPI(title="atrous", version=API_VERSION, lifespan=lifespan,
                  description="DeepLab-style semantic segmentation. See docs/http-api.md.")
    app.state.models = manager
    app.state.settings = settings
    app.state.metrics = server_metrics
    app.state.node = node
    # With API keys set, `keyed` holds the dependency that checks them (else nothing).
    keyed = auth.guard(settings)
    app.include_router(segment.router, **keyed)
    app.include_router(model_info.router, **keyed)
    app.include_router(models.router, **keyed)
    app.include_router(v2.router, **keyed)
    app.include_router(v2.health_router)
    if settings.accepted_admin_keys:  # off unless configured: the routes do not exist
        app.include_router(v2.repository_router, **auth.admin_guard())
    app.include_router(metrics.router, **({} if settings.metrics_public else keyed))
    app.include_router(health.router)
    app.include_router(web.router)  # the page stays open, so that a user can type a key
    install_error_handlers(app)
    # With several workers, every response names the one that answered.
    app.add_middleware(ObservabilityMiddleware, metrics=server_metrics,
                       headers=node.response_headers() if node is not None else ())
    return app


def serve(settings: Settings | None = None) -> None:
    """Runs the server until SIGTERM/SIGINT, then drains and returns (exit status 0).

    Draining: ``/readyz`` turns 503, the listening socket closes, in-flight requests get
    ``settings.shutdown_grace_s`` seconds to finish.  Exits 1 if the default model failed
    to load at start.  With ``settings.workers`` > 1 a supervisor runs that many worker
    processes on the one port (``app.workers``), with the same promises for all of them.
    """
    settings = settings or get_settings()
    if settings.workers > 1:
        from app.workers.supervisor import supervise

        status = supervise(settings)
        if status:
            raise SystemExit(status)
        return
    run_app(create_app(settings), settings)


def run_app(app: FastAPI, settings: Settings, *,
            sockets: list[socket.socket] | None = None) -> None:
    """Serves ``app`` with uvicorn until SIGTERM/SIGINT (on ``sockets`` if given, already
    bound, else on ``settings.host:port``); raises ``SystemExit`` 1 if the default model
    failed to load, 3 if the server did not start."""
    import uvicorn

    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on",
                            # uvicorn takes whole seconds; round up, never cut the grace short
                            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
                            log_level="info", access_log=settings.access_log)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; with SIG_DFL that kills
    # the process (status 143). A no-op handler turns a graceful SIGTERM into exit 0.
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run(sockets=sockets)
    finally:
        signal.signal(signal.SIGTERM, previous)
    manager: ModelManager = app.state.models
    if manager.failure is not None:
        raise SystemExit(1)
    if not server.started:
        raise SystemExit(3)  # uvicorn's own "startup failed" status


def _configure_logging() -> None:
    """INFO logs (loading, ready, draining) to stderr, unless the host already set up
    logging: uvicorn only configures its own loggers, so ours would otherwise be lost."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _ignore(signum: int, frame: Any) -> None:
    return None
