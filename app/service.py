"""The serving state of one app: loading -> ready -> draining, the model and its batcher.

Loading (export, load, warm-up) runs in a background thread started by the lifespan,
so that the server answers ``/healthz`` (200) and ``/readyz`` (503) while it happens.
A SIGTERM flips the state to draining before uvicorn stops accepting, so ``/readyz``
turns 503 at once and new ``/segment`` requests are refused while in-flight ones finish.

Once ready, a watchdog checks the inference worker: if it has died, or a model call has
run past the request timeout (a hung runtime), the service turns failed (``/readyz``
503), refuses new work and the process exits with ``EXIT_WORKER_LOST`` for its supervisor
to restart it, instead of accepting work it cannot do.  ``budget`` is the memory budget
requests reserve their work from (``app.budget``): the server's one, shared by its versions;
``metrics`` the version's own series (``app.metrics.VersionSeries``).
"""

import asyncio
import concurrent.futures
import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from app import faults
from app.api.errors import NotReadyError
from app.batcher import Batcher
from app.budget import MemoryBudget
from app.loader import LoadedModel, load_segmenter
from app.metrics import VersionSeries
from app.settings import Settings
from app.signals import DrainOnSignal
from model.inference.contract import ModelMetadata, probabilities_of

log = logging.getLogger(__name__)
T = TypeVar("T")

Loader = Callable[[Settings], LoadedModel]

#: Exit status when the inference worker died or hung (EX_SOFTWARE): restart me.
EXIT_WORKER_LOST = 70
#: Seconds between watchdog checks, and from a lost worker to the hard exit (time for
#: /readyz to answer 503 and for uvicorn to answer the requests it can).
WATCHDOG_INTERVAL_S = 0.5
EXIT_GRACE_S = 2.0


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Service:
    """Holds what the routes need; one per app, created by ``create_app``."""

    def __init__(self, settings: Settings, loader: Loader = load_segmenter, *,
                 budget: MemoryBudget, metrics: VersionSeries, handle_signals: bool = True,
                 exit_on_lost_worker: bool | None = None) -> None:
        self.settings = settings
        self._handle_signals = handle_signals
        # A model version's service (app.repository) chains no signals of its own, but in a
        # server process a lost worker must still end the process.
        self._exit_on_lost_worker = (handle_signals if exit_on_lost_worker is None
                                     else exit_on_lost_worker)
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.loaded: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.started_at = time.monotonic()
        self._loader = loader
        self._load_task: asyncio.Task[None] | None = None
        # Decoding and encoding threads, a bounded number at once (their memory); a plain
        # executor, whose handoff costs the event loop far less than anyio's thread pool.
        self._cpu = concurrent.futures.ThreadPoolExecutor(settings.decode_threads,
                                                          thread_name_prefix="atrous-cpu")
        self._signals = DrainOnSignal(self.mark_draining, enabled=handle_signals)
        self.failure: BaseException | None = None
        self.budget = budget  # the server's, shared by every model version
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def metadata(self) -> ModelMetadata:
        if self.loaded is None:
            raise self.not_ready()
        return self.loaded.segmenter.metadata

    def not_ready(self) -> NotReadyError:
        reason = {Phase.LOADING: "the model is loading and warming up",
                  Phase.DRAINING: "the server is shutting down",
                  Phase.FAILED: "the model failed to load" if self.loaded is None
                  else "the inference worker failed; the server is restarting"
                  }.get(self.phase, "not ready")
        return NotReadyError(reason, retry_after=self.settings.retry_after_s)

    def require_ready(self) -> Batcher:
        """The batcher, or ``NotReadyError`` (503 + Retry-After)."""
        if self.phase is not Phase.READY or self.batcher is None:
            raise self.not_ready()
        return self.batcher

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs CPU work (decode, encode) in a thread, a bounded number at a time.

        A cancelled caller (a client gone, a deadline) still waits for the work to end:
        the thread cannot be stopped, and what it holds stays reserved in the memory
        budget until it ends.
        """
        work = asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait({work})
            raise

    async def start(self) -> None:
        """Installs the drain-on-SIGTERM hook and starts loading in the background."""
        self._signals.install()
        self._load_task = asyncio.create_task(self._load(), name="atrous-load")

    async def _load(self) -> None:
        try:
            loaded = await _in_daemon_thread(self._loader, self.settings)
            labels, probabilities = faults.inject(self.settings.test_fault, loaded.segmenter,
                                                  probabilities_of(loaded.segmenter))
            assert labels is not None
            batcher = Batcher(labels, max_batch_size=self.settings.max_batch_size,
                              max_delay_s=self.settings.max_batch_delay_ms / 1000,
                              max_queue=self.settings.max_queue,
                              oom_errors=loaded.segmenter.oom_errors,
                              metrics=self.metrics,
                              probabilities=probabilities)
            await batcher.start()
        except Exception as e:  # noqa: BLE001 - reported, then the process stops
            self.failure = e
            self.phase = Phase.FAILED
            log.critical("model loading failed: %s", e, exc_info=e)
            self._signals.stop_process()
            return
        self.loaded, self.batcher = loaded, batcher
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            self.metrics.ready.set(1)
            log.info("ready: %s with %s on %s, %.1f s after start", loaded.path,
                     loaded.segmenter.runtime, loaded.segmenter.device,
                     time.monotonic() - self.started_at)
            self._watchdog = asyncio.create_task(self._watch_worker(batcher),
                                                 name="atrous-watchdog")

    async def _watch_worker(self, batcher: Batcher) -> None:
        """Fails the service if the batcher's worker died or a model call hangs."""
        limit = self.settings.request_timeout_s
        while self.phase in (Phase.READY, Phase.DRAINING):
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            busy = batcher.busy_for
            if self.phase is Phase.READY and not batcher.running:
                self._lose_worker("the inference worker stopped")
            elif busy is not None and busy > limit:
                self._lose_worker(f"a model call has run {busy:.1f} s, past the request "
                                  f"timeout ({limit:g} s): the runtime is hung")

    def _lose_worker(self, reason: str) -> None:
        """Not ready (queued work refused with 503 now), then a hard exit after a grace
        period in which ``/readyz`` answers 503: a hung model thread cannot be stopped,
        and would keep the interpreter from ever exiting on its own."""
        log.critical("%s; exiting with status %d for a restart", reason, EXIT_WORKER_LOST)
        self.failure = RuntimeError(reason)
        self.phase = Phase.FAILED
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self._stopping = asyncio.create_task(self.batcher.stop(timeout=0))
        if self._exit_on_lost_worker:  # a server process, not an in-process test client
            threading.Timer(EXIT_GRACE_S, os._exit, (EXIT_WORKER_LOST,)).start()

    async def stop(self) -> None:
        """Drains the batcher (up to the grace period) and releases the model."""
        self.mark_draining()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.batcher is not None:
            await self.batcher.stop(timeout=self.settings.shutdown_grace_s)
        self._cpu.shutdown(wait=False)
        self._signals.restore()

    async def wait_loaded(self) -> None:
        """Returns once the background load has ended, ready or failed (``phase`` says)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    def release(self) -> None:
        """After ``stop``: closes the runtime and drops the model, so that its memory can
        be returned (a model version being unloaded while the server goes on)."""
        loaded, self.loaded, self.batcher = self.loaded, None, None
        close = getattr(loaded.segmenter, "close", None) if loaded is not None else None
        if callable(close):
            close()

    def mark_draining(self) -> None:
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        self.metrics.ready.set(0)


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Like ``asyncio.to_thread``, but a daemon thread: a SIGTERM during a 30 s export
    must not keep the process alive until the export ends."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed while we worked: nobody is waiting
            pass

    threading.Thread(target=target, name="atrous-load", daemon=True).start()
    return await future
