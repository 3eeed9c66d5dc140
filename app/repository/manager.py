"""The model manager: which versions of which models serve, and every change to that.

A version is a state machine, and this manager is the only thing that moves it::

    loading --> available --> unloading --> (gone)
        \\
         --> failed            (the reason logged and counted; the old version keeps serving)

Each version holds one ``app.service.Service`` (its runtime and batcher).  A request
takes a *lease* on the version it starts with (``lease``), so all its tiles, scales and
flips run on that version; a version being unloaded takes no new leases and is stopped
only once its last lease is returned.  Swaps are availability-preserving (TF Serving's
policy): a model's new version is loaded and warmed while the old one serves, and the old
one is unloaded only once a wanted version is available, so a failed load never leaves a
model without a version.

Changes come from ``sync`` (the start, the poll loop, ``POST /v2/repository/models/{m}/
load``) and ``unload_model``; one lock makes them one at a time.
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import enum
import gc
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.api.errors import ConflictError, ModelNotFoundError, NotReadyError
from app.budget import MemoryBudget
from app.loader import LoadedModel
from app.metrics import Metrics
from app.repository.layout import (
    SINGLE_MODEL_NAME,
    SINGLE_MODEL_VERSION,
    VersionSource,
    check_model_name,
    parse_version_policy,
    scan,
)
from app.service import Loader, Phase, Service
from app.settings import Settings
from app.signals import DrainOnSignal
from model.inference import formats

if TYPE_CHECKING:
    from app.workers.node import WorkerSlot

log = logging.getLogger(__name__)

_FREEZE_AGAIN_S = 1.0  # after an unload (``_collect_everything``)


class VersionState(enum.Enum):
    LOADING = "loading"
    AVAILABLE = "available"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclasses.dataclass(eq=False)
class ModelVersion:
    """One version of one model, its service, its state and the leases on it."""

    model: str
    version: int
    service: Service
    source: VersionSource | None  # None: the one model of ATROUS_MODEL / ATROUS_CHECKPOINT
    state: VersionState = VersionState.LOADING
    reason: str | None = None  # why it failed, with no server path in it
    fingerprint: str | None = None
    leases: int = 0
    stamp: tuple[int, int] | None = None
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def label(self) -> str:
        """``model/version``, as the ``X-Atrous-Model`` header says it."""
        return f"{self.model}/{self.version}"


class ModelManager:
    """Owns every ``ModelVersion``: loads, swaps, unloads, and leases them to requests.

    Args:
        settings: the server's settings; a version's service gets a copy naming its model.
        loader: settings -> warmed model (tests pass a fake).
        metrics: the app's collectors: the server-wide ones (load outcomes, readiness) and
            ``metrics.versions``, whose series each version's service is given.
        handle_signals: chain a SIGTERM/SIGINT hook that turns ``/readyz`` to 503 at once.
        node: this worker's slot when the server runs several worker processes
            (``ATROUS_WORKERS``, ``app.workers``), each with its own manager: readiness is
            then every worker's, and the repository API is refused (it would change this
            process only; the repository's poll converges every one of them).
    """

    def __init__(self, settings: Settings, loader: Loader, metrics: Metrics, *,
                 handle_signals: bool = True, node: "WorkerSlot | None" = None) -> None:
        self.settings = settings
        self.node = node
        self.processes = node.workers if node is not None else 1
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.failure: BaseException | None = None
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.default_model = settings.default_model or SINGLE_MODEL_NAME
        self.started_at = time.monotonic()
        self._loader = loader
        self._policy = parse_version_policy(settings.version_policy)
        self._held_out: set[str] = set()  # unloaded by the API: polling leaves them be
        self._served = False  # the default model has been served (the start is over)
        # Admitted work's memory, whichever version runs it (app.budget).
        self.budget = MemoryBudget(settings.memory_budget_bytes, metrics.memory_in_use)
        metrics.memory_budget.set(settings.memory_budget_bytes)
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handle_signals = handle_signals
        self._signals = DrainOnSignal(self.mark_draining, enabled=handle_signals)
        if settings.model_repository is not None and settings.default_model is None:
            found = sorted(scan(settings.model_repository))
            if len(found) != 1:
                raise ValueError(f"ATROUS_DEFAULT_MODEL: the repository holds {len(found)} "
                                 f"models ({', '.join(found) or 'none'}): name the default one")
            self.default_model = found[0]

    # --- the lifespan ---------------------------------------------------------------------
    async def start(self) -> None:
        """Loads the wanted versions in the background; polls the repository if asked."""
        self._lock = asyncio.Lock()
        self._signals.install()
        self._spawn(self._boot(), "atrous-boot")

    async def _boot(self) -> None:
        await self.sync()
        if self._serving(self.default_model) is None:
            self.phase = Phase.FAILED
            failed = [v for v in self.models.get(self.default_model, {}).values()
                      if v.state is VersionState.FAILED]
            self.failure = (failed[0].service.failure if failed and failed[0].service.failure
                            else RuntimeError(f"no version of {self.default_model} to serve"))
            log.critical("the default model %s could not be loaded: %s", self.default_model,
                         self.failure)
            self._signals.stop_process()
            return
        self._served = True
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            self.metrics.ready.set(1)
            log.info("ready: %s, %.1f s after start", ", ".join(
                v.label for v in self.versions() if v.state is VersionState.AVAILABLE),
                time.monotonic() - self.started_at)
        if self.settings.model_repository is not None and self.settings.repository_poll_s > 0:
            self._spawn(self._poll(), "atrous-poll")

    async def stop(self) -> None:
        """Draining: refuses new leases, lets every version finish (up to the grace) and
        releases them."""
        self.mark_draining()
        if self._served:
            # A swap's load runs in a daemon thread inside OpenVINO / TensorFlow; a process
            # that exits under it aborts ("terminate called without an active exception").
            # Let it end first, within the grace (at start nothing serves yet, and a SIGTERM
            # must not wait for a long export: the process exits at once, as before).
            loading = [v.service for v in self.versions() if v.state is VersionState.LOADING]
            if loading:
                log.info("waiting for %d version(s) still loading before stopping",
                         len(loading))
                try:
                    await asyncio.wait_for(asyncio.gather(
                        *(s.wait_loaded() for s in loading), return_exceptions=True),
                        self.settings.shutdown_grace_s)
                except TimeoutError:
                    log.warning("a version still loading after %.0f s: stopping anyway",
                                self.settings.shutdown_grace_s)
        for task in list(self._tasks):
            task.cancel()
        versions = list(self.versions())
        await asyncio.gather(*(v.service.stop() for v in versions), return_exceptions=True)
        for v in versions:
            v.service.release()
        self._signals.restore()

    def mark_draining(self) -> None:
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        self.metrics.ready.set(0)

    # --- what requests see ----------------------------------------------------------------
    def versions(self) -> Iterator[ModelVersion]:
        for versions in list(self.models.values()):
            yield from list(versions.values())

    def is_ready(self) -> bool:
        """Whether this process is ready, whatever the others (what a worker publishes)."""
        try:
            self._require_ready_here()
        except NotReadyError:
            return False
        return True

    def require_ready(self) -> None:
        """``/readyz``: NotReadyError unless the default model has an available version
        (with several workers: in every one of them, and no drain under way)."""
        self._require_ready_here()
        if self.node is not None:
            self.node.require_all_ready(retry_after=self.settings.retry_after_s)

    def _require_ready_here(self) -> None:
        serving = self._serving(self.default_model)
        if self.phase is not Phase.READY or serving is None:
            raise self._not_ready()
        if serving.service.phase is not Phase.READY:  # its inference worker was lost
            raise serving.service.not_ready()

    def _not_ready(self, reason: str | None = None) -> NotReadyError:
        reason = reason or {Phase.LOADING: "the model is loading and warming up",
                            Phase.DRAINING: "the server is shutting down",
                            Phase.FAILED: "the model failed to load"}.get(self.phase, "not ready")
        return NotReadyError(reason, retry_after=self.settings.retry_after_s)

    def _serving(self, name: str) -> ModelVersion | None:
        """The newest available version of ``name``: what a request without a version gets."""
        available = [v for v in self.models.get(name, {}).values()
                     if v.state is VersionState.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None

    def resolve(self, name: str | None, version: int | None) -> ModelVersion:
        """The version a new request goes to, or the typed error saying why none."""
        if self.phase in (Phase.DRAINING, Phase.LOADING, Phase.FAILED) and (
                name is None or name == self.default_model or self.phase is Phase.DRAINING):
            raise self._not_ready()
        name = name or self.default_model
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r}")
        if version is None:
            chosen = self._serving(name)
            if chosen is not None:
                return chosen
            states = {v.state for v in versions.values()}
            if VersionState.LOADING in states:
                raise self._not_ready(f"model {name} is loading")
            raise self._not_ready(f"model {name} has no available version")
        held = versions.get(version)
        if held is None or held.state is VersionState.UNLOADING:
            raise ModelNotFoundError(f"model {name} has no version {version}")
        if held.state is not VersionState.AVAILABLE:
            raise self._not_ready(f"{held.label} is {held.state.value}")
        return held

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: int | None = None
              ) -> Iterator[ModelVersion]:
        """Holds a version for one request: it is not stopped until the lease returns."""
        held = self.resolve(name, version)
        held.leases += 1
        held.idle.clear()
        try:
            yield held
        finally:
            held.leases -= 1
            if held.leases == 0:
                held.idle.set()

    # --- transitions ----------------------------------------------------------------------
    async def sync(self, only: str | None = None, *, retry_failed: bool = False) -> None:
        """One pass: loads the versions the policy wants that are not loaded, then unloads
        the others of each model that has a wanted version available."""
        assert self._lock is not None, "start() first"
        async with self._lock:
            wanted = self._wanted()
            names = [only] if only is not None else sorted(set(wanted) | set(self.models))
            for name in names:
                if only is None and name in self._held_out:
                    continue
                await self._sync_model(name, wanted.get(name, {}), retry_failed=retry_failed)

    async def _sync_model(self, name: str, wanted: dict[int, VersionSource | None], *,
                          retry_failed: bool) -> None:
        current = self.models.setdefault(name, {})
        to_load = []
        for number, source in wanted.items():
            held = current.get(number)
            if held is None or held.state is VersionState.UNLOADING:
                to_load.append((number, source))
            elif held.state is VersionState.FAILED and (retry_failed or _stamp(source)
                                                       != held.stamp):
                to_load.append((number, source))  # fixed (re-published) or asked again
        if to_load:
            await asyncio.gather(*(self._load(name, n, s) for n, s in to_load))
        if not wanted and name == self.default_model and self._serving(name) is not None:
            log.warning("the default model %s has no version on disk any more: it keeps "
                        "serving what it has loaded", name)
            return
        if not any(current.get(n) is not None and current[n].state is VersionState.AVAILABLE
                   for n in wanted) and wanted:
            return  # availability first: nothing new serves, so the old keep serving
        for number, held in list(current.items()):
            if number in wanted:
                continue
            if held.state is VersionState.AVAILABLE:
                self._spawn(self._unload(held), f"atrous-unload-{held.label}")
            elif held.state is VersionState.FAILED:
                del current[number]
        if not current:
            del self.models[name]

    def _wanted(self) -> dict[str, dict[int, VersionSource | None]]:
        root = self.settings.model_repository
        if root is None:
            return {self.default_model: {SINGLE_MODEL_VERSION: None}}
        try:
            found = scan(root)
        except OSError as e:
            log.error("cannot read the model repository: %s", e)
            return {name: {v.version: v.source for v in versions.values()}
                    for name, versions in self.models.items()}
        return {name: {n: versions[n] for n in self._policy.select(list(versions))}
                for name, versions in found.items()}

    async def _load(self, name: str, number: int, source: VersionSource | None) -> None:
        settings = self.settings
        if source is not None:
            update = ({"model": source.path, "checkpoint": None} if source.is_export
                      else {"model": None, "checkpoint": source.path})
            settings = settings.model_copy(update=update)
        service = Service(settings, self._loader, budget=self.budget,
                          metrics=self.metrics.versions.of(name, number), handle_signals=False,
                          exit_on_lost_worker=self._handle_signals)
        version = ModelVersion(name, number, service, source, stamp=_stamp(source))
        version.idle.set()
        self.models.setdefault(name, {})[number] = version
        log.info("%s: loading", version.label)
        started = time.monotonic()
        await service.start()
        await service.wait_loaded()
        if service.phase is Phase.READY and service.loaded is not None:
            version.fingerprint = await asyncio.to_thread(fingerprint, service.loaded)
            version.state = VersionState.AVAILABLE
            _freeze()
            self.metrics.model_loads.labels(model=name, outcome="available").inc()
            log.info("%s: available (%.1f s)", version.label, time.monotonic() - started)
            return
        version.state = VersionState.FAILED
        version.reason = public_reason(service.failure)
        self.metrics.model_loads.labels(model=name, outcome="failed").inc()
        log.error("%s: failed to load: %s", version.label, service.failure)
        await service.stop()
        service.release()
        self._forget_series(version)
        _collect_everything()

    async def _unload(self, version: ModelVersion) -> None:
        """Unloading: no new leases; waits for the last one (up to the grace), then stops
        the batcher and closes the runtime so that its memory is returned."""
        version.state = VersionState.UNLOADING
        log.info("%s: unloading (%d requests in flight)", version.label, version.leases)
        try:
            await asyncio.wait_for(version.idle.wait(), self.settings.shutdown_grace_s)
        except TimeoutError:
            log.warning("%s: %d requests still in flight after %.0f s: unloading anyway",
                        version.label, version.leases, self.settings.shutdown_grace_s)
        await version.service.stop()
        version.service.release()
        versions = self.models.get(version.model, {})
        if versions.get(version.version) is version:
            del versions[version.version]
        if not versions:
            self.models.pop(version.model, None)
        self._forget_series(version)
        _collect_everything()
        _return_freed_memory()
        log.info("%s: unloaded", version.label)

    def _forget_series(self, version: ModelVersion) -> None:
        """Takes a version that is gone (or failed) off ``/metrics`` - unless another load of
        the same number holds its label set now (unloaded and loaded again at once): then
        that one's readiness, which the old one's stop just zeroed, is set back."""
        now = self.models.get(version.model, {}).get(version.version)
        if now is None or now is version:
            self.metrics.versions.forget(version.model, version.version)
        else:
            now.service.metrics.ready.set(1 if now.service.phase is Phase.READY else 0)

    async def load_model(self, name: str) -> ModelVersion:
        """The repository API's load: (re)reads ``name`` from disk and loads what its policy
        wants, retrying failed versions; the model's serving version, or ``ModelLoadError``
        if a wanted version failed (the version serving before goes on serving)."""
        self._require_one_process()
        try:  # never a path outside the repository ("..") or a name no scan would list
            check_model_name(name)
        except ValueError as e:
            raise ModelNotFoundError(str(e)) from None
        if self.settings.model_repository is None and name != self.default_model:
            raise ModelNotFoundError(f"no model named {name!r}")
        if self.settings.model_repository is not None and not (
                self.settings.model_repository / name).is_dir():
            raise ModelNotFoundError(f"no model named {name!r} in the repository")
        self._held_out.discard(name)
        await self.sync(name, retry_failed=True)
        failed = [v for v in self.models.get(name, {}).values()
                  if v.state is VersionState.FAILED]
        serving = self._serving(name)
        if failed or serving is None:
            reasons = "; ".join(f"{v.label}: {v.reason}" for v in failed)
            kept = f"; {serving.label} keeps serving" if serving is not None else ""
            raise ModelLoadError(f"model {name} failed to load"
                                 + (f" ({reasons})" if reasons else "") + kept)
        return serving

    async def unload_model(self, name: str) -> None:
        """The repository API's unload: every version of ``name`` (never the default)."""
        self._require_one_process()
        if name == self.default_model:
            raise ConflictError(f"{name} is the default model: it cannot be unloaded")
        if name not in self.models:
            raise ModelNotFoundError(f"no model named {name!r} is loaded")
        assert self._lock is not None
        async with self._lock:
            self._held_out.add(name)
            unloading = [self._unload(v) for v in self.models.get(name, {}).values()
                         if v.state is VersionState.AVAILABLE]
            for v in list(self.models.get(name, {}).values()):
                if v.state is VersionState.FAILED:
                    del self.models[name][v.version]
        await asyncio.gather(*unloading)

    def _require_one_process(self) -> None:
        if self.processes > 1:
            raise SeveralWorkersError(
                f"this server runs {self.processes} worker processes (ATROUS_WORKERS) and the "
                "repository API would change only the one that received the request: edit "
                "the repository instead; every worker's poll applies it "
                "(ATROUS_REPOSITORY_POLL_S)")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - a bad scan must not stop later ones
                log.exception("model repository poll failed")

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ModelLoadError(ConflictError):
    """``POST .../load`` of a model none of whose wanted versions loaded."""

    status, code = 400, "model_load_failed"


class SeveralWorkersError(ConflictError):
    """The repository API on a server of several worker processes (``ATROUS_WORKERS``)."""

    code = "several_workers"


def _return_freed_memory() -> None:
    """Asks glibc to give freed heap pages back to the system: an unloaded ONNX Runtime
    session's arena is freed to malloc, whose free lists would otherwise keep it in the
    process's RSS (benchmarks/RESULTS.md, "Hot swaps")."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to ask
        pass


def _freeze() -> None:
    """After a load: garbage collected, then what survives frozen (``gc.freeze``).

    The modules and the loaded models (430,000 objects with TensorFlow imported) so leave
    the collector's generations, whose full collections under load stalled every thread for
    ~240 ms each (benchmarks/RESULTS.md, "The collector and the loaded models")."""
    gc.collect()
    gc.freeze()


def _collect_everything() -> None:
    """After an unload or a failed load: a full collection, frozen objects included (the
    released version's reference cycles may be among them); the rest is frozen again a
    moment later, once the stopped version's last frames (its batcher thread, its watchdog)
    are gone, so that they are not frozen with it."""
    gc.unfreeze()
    gc.collect()
    asyncio.get_running_loop().call_later(_FREEZE_AGAIN_S, _freeze)


def _stamp(source: VersionSource | None) -> tuple[int, int] | None:
    try:
        return source.stamp if source is not None else None
    except OSError:
        return None


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"():,]+)+[/\\]?")


def public_reason(error: BaseException | None) -> str:
    """Why a load failed, for public listings: the message with every path removed."""
    if error is None:
        return "unknown error"
    message = _PATH.sub("<path>", str(error).splitlines()[0] if str(error) else "")
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def fingerprint(loaded: LoadedModel) -> str | None:
    """A short digest of the model files' names and bytes (``formats.fingerprint``): two
    servers (or two versions) that show the same fingerprint run the same model."""
    return formats.fingerprint(loaded.path) if Path(loaded.path).is_dir() else None
