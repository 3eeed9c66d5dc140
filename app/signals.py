"""SIGTERM / SIGINT: turn ``/readyz`` to 503 at once, then let uvicorn's own handler drain.

uvicorn installs its handler before the lifespan runs; ``DrainOnSignal`` chains in front of
it, so that a load balancer stops sending new work before uvicorn stops accepting it, and
restores it on shutdown.  The server's ``Service`` (one model) and ``ModelManager`` (a
repository) use it alike.
"""

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class DrainOnSignal:
    """Chains ``on_signal`` in front of the current SIGTERM and SIGINT handlers.

    Args:
        on_signal: called first on either signal (e.g. ``mark_draining``).
        enabled: False for in-process test clients, which have no signals to take.
    """

    def __init__(self, on_signal: Callable[[], None], *, enabled: bool = True) -> None:
        self._on_signal = on_signal
        self._enabled = enabled
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if not self._enabled or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            self._previous[sig] = previous

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                log.info("signal %d: draining", signum)
                self._on_signal()
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) is not previous and previous is not None:
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, previous)
        self._previous.clear()

    def stop_process(self) -> None:
        """Asks the server to shut down, as a SIGTERM would (after a failed start, ``serve``
        then exits 1)."""
        previous = self._previous.get(signal.SIGTERM)
        if callable(previous):
            previous(signal.SIGTERM, None)
