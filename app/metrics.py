"""Prometheus metrics: the server's own series and each model version's, one registry per app
(so that several apps in one process, as in tests, never share or double-register collectors).

Two classes of families:

* ``Metrics``, the server-wide ones: HTTP requests, latencies and requests in flight,
  refusals before a version is chosen, readiness, model loads, the memory budget.
* ``VersionMetrics``, the per-version ones (stage latencies, batch sizes, model inputs, queue
  depth, readiness, dropped requests), whose families carry ``model`` and ``version`` labels
  natively: one family object per app, and each version's service gets a ``VersionSeries``,
  those families' children with its own two labels filled in.

``atrous_ready`` and ``atrous_rejections`` exist in both (unlabelled: the server's; labelled:
a version's), so ``GET /metrics`` shows one family of each with both kinds of series.

**The node's view.** With ``PROMETHEUS_MULTIPROC_DIR`` set in its environment (as ``atrous
serve --workers N`` does for its workers), prometheus-client's multiprocess mode is on: every
process writes its values to files of its own in that directory, and ``render`` merges the
whole directory (``MultiProcessCollector``), so that any worker's ``/metrics`` shows the node:
counters and histograms summed over every worker that ever ran (the dead ones included, so
that they never go backwards), gauges merged by their ``multiprocess_mode`` over the live
ones (a worker's live gauges go when its supervisor calls ``mark_process_dead``).  Files
cannot forget: an unloaded version's values stay in them (its live gauges zeroed), and the
worker that answers leaves the series of the versions it has unloaded out of its answer, as
one process does (a version unloaded in one worker and not yet in another, during a swap,
may be missing from that one answer).  The mode is chosen when prometheus-client is
imported: the variable must be set before the process starts.  Values are keyed there by
process, name and labels, not by registry: one app per process in that mode.
"""

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["MULTIPROC_DIR_VARIABLE", "Metrics", "VersionMetrics", "VersionSeries",
           "multiprocess_dir"]

#: prometheus-client's switch for its multiprocess mode (read when it is imported).
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Seconds; spans a 1 ms decode of a thumbnail to a multi-second CPU ResNet-101 batch.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
_VERSION_LABELS = ("model", "version")
# Shared by the server's and the versions' families of the same name, shown as one family
# with one help text (in multiprocess mode it is stored with every value; the first read wins).
_READY_HELP = "1 when the model is loaded and warmed"
_REJECTIONS_HELP = "Requests refused or dropped, by reason"
# Readiness is merged with the *least* value over the live workers ("livemin"): the node
# shows 1 only while every worker is ready, as /readyz means; one series, with no `pid`
# label ("liveall" would add one), so dashboards and alerts read as for one process.
_READY_MODE: Final = "livemin"

Family = Counter | Gauge | Histogram
M = TypeVar("M", Counter, Gauge, Histogram)


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, or None when it is off."""
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


class Metrics:
    """The server-wide collectors and the app's ``VersionMetrics``; ``render`` is what ``GET
    /metrics`` answers, ``registry`` this process's own view (both in single-process mode).

    Raises:
        ValueError: ``PROMETHEUS_MULTIPROC_DIR`` names no directory (a start-up error, not
            one at the first scrape).
    """

    def __init__(self, max_batch_size: int) -> None:
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None and not os.path.isdir(self.multiprocess_dir):
            raise ValueError(f"{MULTIPROC_DIR_VARIABLE}={self.multiprocess_dir} is not a "
                             "directory")
        self.requests = Counter("atrous_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=None)
        self.request_latency = Histogram("atrous_request_duration_seconds",
                                         "Time from request start to response start, by route",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=None)
        self.in_flight = Gauge("atrous_requests_in_flight", "HTTP requests being served",
                               registry=None, multiprocess_mode="livesum")
        self.rejections = Counter("atrous_rejections", _REJECTIONS_HELP, ["reason"],
                                  registry=None)
        self.ready = Gauge("atrous_ready", _READY_HELP, registry=None,
                           multiprocess_mode=_READY_MODE)
        self.model_loads = Counter("atrous_model_loads", "Model version loads by model and "
                                   "outcome: available or failed", ["model", "outcome"],
                                   registry=None)
        # Each worker admits its own budget's worth: the node admits their sum.
        self.memory_budget = Gauge("atrous_memory_budget_bytes", "Estimated bytes of work the "
                                   "server admits at once (ATROUS_MEMORY_BUDGET_MB)",
                                   registry=None, multiprocess_mode="livesum")
        self.memory_in_use = Gauge("atrous_memory_budget_in_use_bytes", "Estimated bytes of "
                                   "work admitted now (requests decoding, queued or running)",
                                   registry=None, multiprocess_mode="livesum")
        self.versions = VersionMetrics(max_batch_size)
        server: list[Family] = [self.requests, self.request_latency, self.in_flight,
                                self.rejections, self.ready, self.model_loads,
                                self.memory_budget, self.memory_in_use]
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_SameNameMerged([*server, *self.versions.families]))
        self._node: CollectorRegistry | None = None
        if self.multiprocess_dir is not None:
            self._node = CollectorRegistry()
            MultiProcessCollector(self._node, self.multiprocess_dir)

    def render(self) -> bytes:
        """The Prometheus text exposition: the node's (every worker's) in multiprocess mode,
        without the versions this process has unloaded, else this process's."""
        if self._node is None:
            return generate_latest(self.registry)
        return generate_latest(_Without(self._node, self.versions.forgotten))


class VersionMetrics:
    """The per-version families, labelled ``model`` and ``version``; one object per app."""

    def __init__(self, max_batch_size: int) -> None:
        labels = list(_VERSION_LABELS)
        self.stage_latency = Histogram("atrous_stage_duration_seconds",
                                       "Time per /segment stage: decode, queue, inference, encode",
                                       [*labels, "stage"], buckets=_LATENCY_BUCKETS,
                                       registry=None)
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram("atrous_batch_size", "Images per model call", labels,
                                    buckets=[b for b in batch_buckets if b <= max_batch_size],
                                    registry=None)
        self.model_inputs = Counter("atrous_model_inputs", "S x S model inputs run (images "
                                    "and tiles), by output: labels or probabilities",
                                    [*labels, "output"], registry=None)
        self.queue_depth = Gauge("atrous_queue_depth", "Images waiting for the model", labels,
                                 registry=None, multiprocess_mode="livesum")
        self.rejections = Counter("atrous_rejections", _REJECTIONS_HELP, [*labels, "reason"],
                                  registry=None)
        self.ready = Gauge("atrous_ready", _READY_HELP, labels, registry=None,
                           multiprocess_mode=_READY_MODE)
        self.families: tuple[Family, ...] = (self.stage_latency, self.batch_size,
                                             self.model_inputs, self.queue_depth,
                                             self.rejections, self.ready)
        #: (model, version) pairs unloaded here, which multiprocess mode's files still hold.
        self.forgotten: set[tuple[str, str]] = set()

    def of(self, model: str, version: int) -> "VersionSeries":
        """The series of one version (created now: its readiness reads 0 until it is set)."""
        self.forgotten.discard((model, str(version)))
        return VersionSeries(self, model, str(version))

    def forget(self, model: str, version: int) -> None:
        """After a version is unloaded (or failed to load): its series leave ``/metrics``.

        In multiprocess mode the files cannot forget a series: its live gauges (queue depth,
        readiness) are zeroed, for the other workers' answers, and this one's leaves it out.
        """
        if multiprocess_dir() is not None:
            self.queue_depth.labels(model, str(version)).set(0)
            self.ready.labels(model, str(version)).set(0)
            self.forgotten.add((model, str(version)))
            return
        for family in self.families:
            family.remove_by_labels({"model": model, "version": str(version)})


class _Bound(Generic[M]):
    """A family whose ``model`` and ``version`` labels are filled in: ``labels`` takes the
    others (``stage``, ``output``, ``reason``)."""

    def __init__(self, family: M, model: str, version: str) -> None:
        self._family: M = family
        self._fixed = {"model": model, "version": version}

    def labels(self, **labels: str) -> M:
        return self._family.labels(**self._fixed, **labels)


class VersionSeries:
    """What one version's service and batcher report to: children of ``VersionMetrics``."""

    def __init__(self, families: VersionMetrics, model: str, version: str) -> None:
        self.model, self.version = model, version
        self.stage_latency = _Bound(families.stage_latency, model, version)
        self.model_inputs = _Bound(families.model_inputs, model, version)
        self.rejections = _Bound(families.rejections, model, version)
        self.batch_size = families.batch_size.labels(model, version)
        self.queue_depth = families.queue_depth.labels(model, version)
        self.ready = families.ready.labels(model, version)


class _SameNameMerged:
    """A collector of several families that shows those of one name as one family (the
    server's ``atrous_ready`` beside the versions'): a registry refuses two of a name."""

    def __init__(self, families: Sequence[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for family in _collected(self._families):
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = family
            elif into.type != family.type:
                raise TypeError(f"{family.name} is both a {into.type} and a {family.type}")
            else:
                into.samples.extend(family.samples)
        return iter(merged.values())


class _Without:
    """A registry's families without the series of some (model, version) pairs."""

    def __init__(self, registry: CollectorRegistry, left_out: set[tuple[str, str]]) -> None:
        self._registry, self._left_out = registry, left_out

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if self._left_out:
                family.samples = [s for s in family.samples if (
                    s.labels.get("model"), s.labels.get("version")) not in self._left_out]
            yield family


def _collected(families: Iterable[Family]) -> Iterator[Metric]:
    for family in families:
        yield from family.collect()
