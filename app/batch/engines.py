"""The engines that schedule the per-batch function (``rows``): a local loop, or Ray Data.

Both run ``PartWorker`` -- read a batch, segment it, write it as one part -- so they write
the same rows.  Ray is imported only inside ``run_ray`` (``pip install 'atrous[ray]'``).

Around Ray Data's known pitfalls: its output order is not kept (every row carries its key,
and the driver only counts them); an actor pool retries a dead actor's tasks forever by
default (``max_restarts`` bounds the restarts, so a task is retried only while its actor
can come back, and the crash quarantine in ``rows`` marks the image that keeps killing
workers); ``max_errored_blocks`` would drop
whole blocks, so it stays 0 and bad images are rows, not block errors; and workers write
their own uniquely named parts instead of ``write_parquet(mode="overwrite")``.
"""

import dataclasses
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

from app.batch.rows import BatchSegmenter, ModelSpec, read_rows
from app.batch.sources import Item
from app.batch.store import Store

__all__ = ["ENGINES", "PartWorker", "RayOptions", "RaySession", "run_local", "run_ray"]

ENGINES = ("ray", "local")
log = logging.getLogger(__name__)


class PartWorker:
    """The model loaded once; each call reads, segments and writes one batch as a part,
    and returns each row's key, status and error code."""

    def __init__(self, spec: ModelSpec, store: Store, max_bytes: int) -> None:
        self.segment = BatchSegmenter(spec, store.claims())
        self.store, self.max_bytes = store, max_bytes

    def __call__(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = self.segment(read_rows(items, max_bytes=self.max_bytes))
        self.store.write(rows)
        return [{"key": r["key"], "status": r["status"], "error_code": r["error_code"] or ""}
                for r in rows]


def run_local(items: Sequence[Item], spec: ModelSpec, store: Store, *, batch_size: int,
              max_bytes: int, progress: bool) -> None:
    """The batches one after another in this process, with a tqdm bar."""
    from tqdm import tqdm

    if not items:
        return
    worker = PartWorker(spec, store, max_bytes)
    with tqdm(total=len(items), unit="image", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = [{"key": i.key, "uri": i.uri} for i in items[start:start + batch_size]]
            bar.update(len(worker(batch)))


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs."""

    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray started for the job
    workers: int = 1  # actors, each with the model loaded once
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # None: one node's CPUs shared out, else 1
    max_restarts: int = 3  # per actor: never forever (tasks are retried while it restarts)


class _RayWorker:
    """``PartWorker`` as a Ray Data callable class (numpy batches in and out)."""

    def __init__(self, spec: ModelSpec, store: Store, max_bytes: int) -> None:
        self.worker = PartWorker(spec, store, max_bytes)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        items = [{"key": str(k), "uri": str(u)} for k, u in zip(batch["key"], batch["uri"],
                                                                 strict=True)]
        out = self.worker(items)
        return {column: [row[column] for row in out] for column in ("key", "status",
                                                                     "error_code")}


class RaySession:
    """This job's connection to Ray, opened before the job lists SRC and closed after it.

    ``start`` joins ``--address`` / ``$RAY_ADDRESS``, or starts a local Ray for the job; the
    job calls it first and lists SRC, reads DST and fingerprints the model in a thread
    meanwhile, so that Ray's start-up (seconds, most of its fixed cost on a small machine)
    overlaps them.  It must run on the main thread: Ray's processes die with the thread that
    started them, and only there can the caller's SIGTERM handler be put back (``ray.init``
    replaces it with one that exits 15, skipping the job's own clean-up).  A process that is
    already connected (a notebook, the tests) is used as it is, and left connected.
    """

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        self.started = False  # by this job: it shuts Ray down at the end
        self.local = False  # ... and its processes are this machine's
        self.startup_seconds = 0.0

    def start(self) -> None:
        """Connects.

        Raises:
            ValueError: Ray is not installed.
            Exception: whatever ``ray.init`` raises (no cluster at the address, ...).
        """
        import signal
        import threading

        try:
            import ray
            import ray.data  # noqa: F401 - imported now, not when the first batch is due
        except ImportError:
            raise ValueError("--engine ray needs Ray: pip install 'atrous[ray]' "
                             "(or use --engine local)") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            return
        start = time.monotonic()
        joining = self.options.address or os.environ.get("RAY_ADDRESS")
        # A Ray started for this job needs no dashboard; a cluster keeps its own settings.
        local: dict[str, Any] = {} if joining else {"include_dashboard": False}
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if main else None
        self.started, self.local = True, not joining  # a half-started Ray is shut down too
        ray.init(address=self.options.address, log_to_driver=log.isEnabledFor(logging.DEBUG),
                 **local)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
        self.startup_seconds = time.monotonic() - start
        log.info("ray: %s in %.1f s", "joined " + joining if joining else "started locally",
                 self.startup_seconds)

    def stop(self) -> None:
        """Shuts down the Ray this job started (its actors with it)."""
        if not self.started:
            return
        import ray

        start = time.monotonic()
        if self.local:
            _stop_autoscaler_monitor()
        ray.shutdown()
        self.started = False
        log.info("ray: shut down in %.1f s", time.monotonic() - start)


def run_ray(items: Sequence[Item], spec: ModelSpec, store: Store, *, batch_size: int,
            max_bytes: int, progress: bool, options: RayOptions) -> None:
    """The batches on a Ray actor pool, on the cluster a started ``RaySession`` joined.

    Raises:
        Exception: whatever Ray raises when the job itself fails (the driver exits 2).
    """
    import ray
    import ray.data

    if not items:  # all done already (--resume)
        return
    start = time.monotonic()
    cpus = options.cpus_per_worker or _default_cpus(ray, options)
    if spec.threads is None:  # the runtime uses the actor's share, not every core
        spec = dataclasses.replace(spec, threads=max(1, int(cpus)))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.max_errored_blocks = 0  # a lost block is a failed job, never silent
    dataset = ray.data.from_items([{"key": i.key, "uri": i.uri} for i in items],
                                  override_num_blocks=math.ceil(len(items) / batch_size))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for an actor's restarts and task retries (its
        # default is forever) and deprecates the remote args that bound them, for 2.64.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        results = dataset.map_batches(
            _RayWorker, fn_constructor_kwargs={"spec": spec, "store": store,
                                               "max_bytes": max_bytes},
            batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=cpus, num_gpus=options.gpus_per_worker or None,
            # Task retries are not what bounds a crash loop: Ray spends them while the actor
            # is still restarting (loading its model), so a count as small as the restarts
            # ran out before the retry could run (ray-project/ray#44719).  The restarts
            # bound it: once they are spent the actor is dead and its tasks fail.
            max_restarts=options.max_restarts, max_task_retries=-1)
    first = None
    for _ in results.iter_batches(batch_size=None, batch_format="numpy"):
        # The rows are in DST already; Ray's bar shows the progress.
        if first is None:
            first = time.monotonic() - start
            log.info("ray: first batch back %.1f s after the pipeline started (actors "
                     "started, model loaded)", first)
    log.info("ray: %d images in %.1f s", len(items), time.monotonic() - start)


def _stop_autoscaler_monitor() -> None:
    """Kills a local Ray's autoscaler monitor before ``ray.shutdown`` does.

    ``ray.shutdown`` stops the raylet and the GCS first and then sends the monitor SIGTERM,
    whose handler tries to tell the (gone) GCS that the autoscaler failed and hangs until
    SIGKILL comes a second later: a second of every local job, for a process that has
    nothing to scale here.  Ray has no public call for it, so a Ray without this private one
    just shuts down the slow way.
    """
    try:
        from ray._private import worker

        node = worker._global_node
        if node is not None and node.head:
            node.kill_monitor(check_alive=False)
    except Exception:  # noqa: BLE001 - an optimisation only: never fail the job for it
        log.debug("ray: could not stop the autoscaler monitor early", exc_info=True)


def _default_cpus(ray: Any, options: RayOptions) -> float:
    """On one machine the actors share its CPUs; across nodes (or with GPUs) each takes 1,
    so that an actor always fits on a node."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if options.gpus_per_worker or len(nodes) != 1:
        return 1.0
    return max(1.0, float(int(nodes[0]["Resources"].get("CPU", 1)) // options.workers))
