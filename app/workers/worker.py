"""A worker process: the whole app (its own runtime, batcher and model manager) served on
the supervisor's port, on a socket of its own.  ``run`` is the spawned process's target."""

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.loader import load_segmenter
from app.service import Loader
from app.settings import Settings
from app.workers.node import WorkerSlot
from app.workers.sockets import Endpoint, listen_on


def run(settings: Settings, endpoint: Endpoint, slot: WorkerSlot) -> None:
    """Serves until SIGTERM; exits 1 if the default model failed to load (as one process
    does), so that the supervisor can tell a failed start from a death."""
    from app.main import create_app, run_app

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [worker {slot.slot} pid {os.getpid()}] "
               "%(name)s: %(message)s")
    # The supervisor stops workers with SIGTERM; a terminal's Ctrl-C reaches them too, and
    # uvicorn re-raises the signal it caught once it has drained: ignored, not a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = create_app(settings, loader=_loader_for(settings, slot), node=slot)
    run_app(app, settings, sockets=[listen_on(endpoint)])


def _loader_for(settings: Settings, slot: WorkerSlot) -> Loader:
    """The model loader, with the waits a worker may need before it loads:

    * a checkpoint (or the default network) to export: every worker but 0 waits until
      worker 0 has been ready once, then finds the export in the cache (N exports of one
      network at once would cost N times the CPU and memory for one result);
    * ``ATROUS_TEST_WORKER_START_GATE=SLOT:FILE`` (tests): worker SLOT waits for the file.
    """
    waits: list[Callable[[], bool]] = []
    if settings.model is None and settings.model_repository is None and slot.slot != 0:
        waits.append(lambda: slot.node.was_ready(0))
    if settings.test_worker_start_gate is not None:
        held, _, gate = settings.test_worker_start_gate.partition(":")
        if int(held) == slot.slot:
            waits.append(Path(gate).exists)
    if not waits:
        return load_segmenter

    def waiting_loader(settings: Settings) -> Any:
        for done in waits:
            while not done():
                time.sleep(0.05)
        return load_segmenter(settings)

    return waiting_loader
