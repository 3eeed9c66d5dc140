"""The node state: what every worker process of one server knows about all of them.

A few bytes of shared memory, created by the supervisor before it spawns the workers and
handed to each one (``multiprocessing`` passes it through the spawn)::

    [draining] [state of worker 0 .. N-1] [ready once, worker 0 .. N-1]

A worker publishes its own state (``WorkerSlot.publish``); the supervisor sets
``draining`` the moment it is told to stop and marks a worker ``STARTING`` again when it
dies, before it is replaced.  Any worker can then answer ``/readyz`` for the whole server:
200 only while no drain is under way and every worker is ready.  Single bytes are written
and read whole, so no lock is needed: a reader sees the old value or the new one.
"""

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from multiprocessing.context import SpawnContext
from typing import Any

from app.api.errors import NotReadyError

log = logging.getLogger(__name__)

#: A worker's states.
STARTING, READY, NOT_READY = 0, 1, 2
_STATE_NAMES = {STARTING: "starting", READY: "ready", NOT_READY: "not ready"}

#: Seconds between two publications of a worker's own readiness.
PUBLISH_INTERVAL_S = 0.1

#: The response header naming the worker that answered: ``<slot>; pid=<pid>``.
WORKER_HEADER = "X-Atrous-Worker"


class NodeState:
    """The shared bytes; created by the supervisor for ``workers`` processes."""

    def __init__(self, context: SpawnContext, workers: int) -> None:
        self.workers = workers
        self._bytes: Any = context.RawArray("b", 1 + 2 * workers)

    @property
    def draining(self) -> bool:
        return bool(self._bytes[0])

    def start_draining(self) -> None:
        self._bytes[0] = 1

    def state(self, slot: int) -> int:
        return int(self._bytes[1 + slot])

    def set_state(self, slot: int, state: int) -> None:
        self._bytes[1 + slot] = state

    def was_ready(self, slot: int) -> bool:
        """Whether this slot's current process has been ready at least once."""
        return bool(self._bytes[1 + self.workers + slot])

    def starting(self, slot: int) -> None:
        """A new process takes the slot (the supervisor, before it spawns one)."""
        self._bytes[1 + self.workers + slot] = 0
        self._bytes[1 + slot] = STARTING

    def became_ready(self, slot: int) -> None:
        self._bytes[1 + self.workers + slot] = 1


class WorkerSlot:
    """One worker's view of the node: its slot number and the shared state."""

    def __init__(self, node: NodeState, slot: int) -> None:
        self.node = node
        self.slot = slot

    @property
    def workers(self) -> int:
        return self.node.workers

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """What every response of this worker carries: its name (``WORKER_HEADER``)."""
        return ((WORKER_HEADER, f"{self.slot}; pid={os.getpid()}"),)

    def require_all_ready(self, retry_after: int) -> None:
        """``/readyz``'s node half: ``NotReadyError`` while draining or while another worker
        is not ready (this worker's own readiness is its manager's, checked first)."""
        if self.node.draining:
            raise NotReadyError("the server is shutting down", retry_after=retry_after)
        for other in range(self.workers):
            state = self.node.state(other)
            if other != self.slot and state != READY:
                raise NotReadyError(f"worker {other} of {self.workers} is "
                                    f"{_STATE_NAMES.get(state, 'not ready')}",
                                    retry_after=retry_after)

    async def publish(self, is_ready: Callable[[], bool]) -> None:
        """Runs for the worker's life: writes its readiness into the node state, and stops
        the worker (SIGTERM: it drains) if the supervisor has gone, so that no orphan keeps
        serving on the socket."""
        parent = os.getppid()
        try:
            while True:
                ready = is_ready()
                if ready and not self.node.was_ready(self.slot):
                    self.node.became_ready(self.slot)
                self.node.set_state(self.slot, READY if ready else NOT_READY
                                    if self.node.was_ready(self.slot) else STARTING)
                if os.getppid() != parent:
                    log.critical("the supervisor (pid %d) has gone: stopping", parent)
                    os.kill(os.getpid(), signal.SIGTERM)
                    parent = os.getppid()
                await asyncio.sleep(PUBLISH_INTERVAL_S)
        finally:
            self.node.set_state(self.slot, NOT_READY)
