"""The supervisor: binds the port once, runs N worker processes on it, keeps them running.

    supervise(settings)  ->  exit status

* **Start.**  The port is reserved here, before any worker exists (a port in use fails at
  once), and each worker, *spawned* (a fresh interpreter: TensorFlow and OpenVINO do not
  survive a fork), listens on it with a socket of its own (``app.workers.sockets``: the
  kernel spreads the connections).  Every worker runs the whole app with its share of
  the node (``worker_settings``): ``ATROUS_THREADS`` (unset: the CPUs this process may use,
  its affinity or its cgroup's CPU quota, / N, at least 1) and ``ATROUS_MEMORY_BUDGET_MB``
  / N; each bounds its own queue, so the node queues at most N x ``ATROUS_MAX_QUEUE``.
* **A checkpoint to export** (or the default network): worker 0 exports it into the cache;
  the others start with it but load only once it is ready, from its export.
* **Readiness** is the node's (``app.workers.node``): any worker answers ``/readyz`` with
  200 only when every worker is ready and no drain is under way.
* **A worker that fails at start** (it exits before it was ever ready: its model did not
  load) stops the server, status 1: never a silent half-server.
* **A worker that dies after it was ready** (killed, or ``EXIT_WORKER_LOST`` from its
  watchdog) is replaced at once; ``/readyz`` is 503 until the new one is ready.  More than
  ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW_S`` is a crash loop: the server stops,
  status 1, for its own supervisor (Docker, Kubernetes) to see.
* **SIGTERM / SIGINT**: ``/readyz`` turns 503 on every worker at once (the node state),
  each worker gets SIGTERM and drains as one process does (in-flight requests get
  ``ATROUS_SHUTDOWN_GRACE_S``), and the supervisor exits 0 once all have exited.
* **Metrics**: ``PROMETHEUS_MULTIPROC_DIR`` is a fresh private directory for the workers
  (removed at exit), and a worker that exits is marked dead there, so that ``/metrics``
  from any worker can speak for the node.

The design is uvicorn's ``--workers`` (spawned children, each a whole server), with
``SO_REUSEPORT`` sockets instead of one shared socket, and a gunicorn-style arbiter that
watches the children's sentinels and restarts the ones that die.
"""

import collections
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType

from app.metrics import MULTIPROC_DIR_VARIABLE
from app.settings import Settings
from app.workers import sockets, worker
from app.workers.node import NodeState, WorkerSlot

log = logging.getLogger("app.workers")

#: A crash loop: more deaths than this within the window stops the server.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: Seconds a worker may take to drain beyond twice the grace (uvicorn's, then the
#: batcher's) before it is killed.
STOP_MARGIN_S = 10.0


def supervise(settings: Settings) -> int:
    """Runs ``settings.workers`` workers until SIGTERM/SIGINT; the exit status."""
    return Supervisor(settings).run()


#: Where a container's CPU quota is: cgroup v2 ("max 100000" or "800000 100000"), then v1.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity (a container's cpuset), or fewer if its
    cgroup has a CPU quota (``docker --cpus``, a Kubernetes CPU limit), rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return min(cpus, math.ceil(quota)) if quota is not None else cpus


def cgroup_cpu_quota(v2: Path = CGROUP_CPU_MAX, v1: Path = CGROUP_V1_CPU) -> float | None:
    """CPUs' worth of time the cgroup may use per period, or None without a quota."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def worker_settings(settings: Settings, cpus: int) -> Settings:
    """One worker's settings: its share of the CPU threads and of the memory budget."""
    from app.budget import MB

    workers = settings.workers
    update: dict[str, object] = {
        "memory_budget_mb": max(1, settings.memory_budget_bytes // MB // workers)}
    if settings.threads is None:
        update["threads"] = max(1, cpus // workers)
    return settings.model_copy(update=update)


class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds: beyond, a crash loop."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._deaths: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        """Records a death at ``now``; whether it may still be restarted."""
        self._deaths.append(now)
        while self._deaths and self._deaths[0] <= now - self.window_s:
            self._deaths.popleft()
        return len(self._deaths) <= self.limit


class Supervisor:
    """Owns the socket, the node state, the metrics directory and the worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = settings.workers
        self._context = multiprocessing.get_context("spawn")
        self.node = NodeState(self._context, self.workers)
        self._processes: dict[int, SpawnProcess] = {}
        self._restarts = RestartBudget(MAX_RESTARTS, RESTART_WINDOW_S)
        self._signalled: int | None = None
        self._wake_read, self._wake_write = os.pipe()
        self._all_ready_logged = False

    def run(self) -> int:
        _configure_logging()
        share = worker_settings(self.settings, usable_cpus())
        try:  # a port in use: status 1 now, before anything else
            reserved = sockets.reserve(self.settings.host, self.settings.port)
        except OSError as e:
            log.critical("cannot bind %s:%d: %s", self.settings.host, self.settings.port, e)
            os.close(self._wake_read)
            os.close(self._wake_write)
            return 1
        endpoint = sockets.endpoint_of(reserved)
        metrics_dir = tempfile.mkdtemp(prefix="atrous-metrics-")
        os.environ[MULTIPROC_DIR_VARIABLE] = metrics_dir  # the spawned workers inherit it
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        log.info("supervisor (pid %d): %d workers on %s:%d; each: %s CPU threads%s, memory "
                 "budget %d MB (ATROUS_MEMORY_BUDGET_MB / %d), its own queue of %d (the node "
                 "queues up to %d)", os.getpid(), self.workers, self.settings.host,
                 endpoint.port, share.threads,
                 f" ({usable_cpus()} CPUs / {self.workers})" if self.settings.threads is None
                 else " (ATROUS_THREADS)", share.memory_budget_mb, self.workers,
                 share.max_queue, share.max_queue * self.workers)
        if self.settings.model is None and self.settings.model_repository is None:
            log.info("worker 0 exports the model first; the others load it once worker 0 "
                     "is ready (app.workers.worker)")
        try:
            for slot in range(self.workers):
                self._start(slot, share, endpoint)
            status = self._watch(share, endpoint)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            reserved.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
            os.close(self._wake_read)
            os.close(self._wake_write)
        log.info("supervisor: stopped (status %d)", status)
        return status

    # --- the workers --------------------------------------------------------------------
    def _start(self, slot: int, share: Settings, endpoint: sockets.Endpoint) -> None:
        self.node.starting(slot)
        process = self._context.Process(
            target=worker.run, args=(share, endpoint, WorkerSlot(self.node, slot)),
            name=f"atrous-worker-{slot}")
        process.start()
        self._processes[slot] = process
        log.info("worker %d: started (pid %s)", slot, process.pid)

    def _watch(self, share: Settings, endpoint: sockets.Endpoint) -> int:
        """Waits for signals and deaths; the exit status."""
        while True:
            if self._signalled is not None:
                log.info("signal %d: draining every worker", self._signalled)
                return 0
            self._log_readiness()
            waitables: list[object] = [self._wake_read]
            waitables += [p.sentinel for p in self._processes.values()]
            multiprocessing.connection.wait(waitables, timeout=0.5)  # type: ignore[arg-type]
            self._drain_wake_pipe()
            for slot, process in list(self._processes.items()):
                if process.is_alive() or self._signalled is not None:
                    continue
                status = self._on_death(slot, process)
                if status is not None:
                    return status
                self._start(slot, share, endpoint)

    def _on_death(self, slot: int, process: SpawnProcess) -> int | None:
        """A worker exited on its own: None (restart it) or the server's exit status."""
        was_ready = self.node.was_ready(slot)
        self.node.starting(slot)  # /readyz: 503 until its replacement is ready
        self._forget(process)
        how = exit_description(process.exitcode)
        if not was_ready:
            log.critical("worker %d (pid %s) %s before it was ready: stopping the server",
                         slot, process.pid, how)
            return 1
        if not self._restarts.allow(time.monotonic()):
            log.critical("worker %d (pid %s) %s: more than %d worker deaths in %.0f s, "
                         "stopping the server", slot, process.pid, how, MAX_RESTARTS,
                         RESTART_WINDOW_S)
            return 1
        log.error("worker %d (pid %s) %s after it was ready: restarting it", slot,
                  process.pid, how)
        self._all_ready_logged = False
        return None

    def _log_readiness(self) -> None:
        if not self._all_ready_logged and all(self.node.was_ready(slot)
                                              for slot in range(self.workers)):
            self._all_ready_logged = True
            log.info("all %d workers ready", self.workers)

    def _stop_all(self) -> None:
        """Drain: 503 on every worker now, SIGTERM to each, wait, kill what overstays."""
        self.node.start_draining()
        alive = [p for p in self._processes.values() if p.is_alive()]
        for process in alive:
            assert process.pid is not None
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2 * self.settings.shutdown_grace_s + STOP_MARGIN_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s still running after the grace: killing it",
                          process.pid)
                process.kill()
                process.join()
        for process in self._processes.values():
            self._forget(process)
        self._processes.clear()

    def _forget(self, process: SpawnProcess) -> None:
        """An exited worker: its live gauges leave the node's metrics."""
        if process.pid is None or not os.environ.get(MULTIPROC_DIR_VARIABLE):
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid)

    # --- signals ------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Readiness first, from the handler itself: no worker may answer 200 from now on.
        self.node.start_draining()
        if self._signalled is None:
            self._signalled = signum
        os.write(self._wake_write, b"!")

    def _drain_wake_pipe(self) -> None:
        if self._signalled is not None:
            os.set_blocking(self._wake_read, False)
            try:
                os.read(self._wake_read, 64)
            except BlockingIOError:
                pass


def exit_description(exitcode: int | None) -> str:
    from app.service import EXIT_WORKER_LOST

    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    if exitcode == EXIT_WORKER_LOST:
        return f"lost its inference thread (status {exitcode})"
    return f"exited with status {exitcode}"


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s [supervisor] %(name)s: "
                                   "%(message)s")
