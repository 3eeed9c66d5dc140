"""What ``GET /metrics`` renders: the server-wide series plus each loaded version's own,
labelled ``model`` and ``version``.

Each version's service keeps its collectors in its own registry (batch sizes, queue
depth, stage latencies, readiness), so an unloaded version's series disappear with it:
no stale label sets are left behind, and nothing has to remember to remove them.
"""

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Metric

from app.metrics import Metrics

#: Families only the versions fill: the server-wide registry's copies stay empty, unshown.
PER_VERSION = frozenset({"atrous_batch_size", "atrous_queue_depth", "atrous_model_inputs",
                         "atrous_stage_duration_seconds"})
#: Families only the HTTP middleware fills: the versions' copies stay empty, unshown.
SERVER_WIDE = frozenset({"atrous_requests", "atrous_request_duration_seconds",
                         "atrous_requests_in_flight", "atrous_model_loads",
                         "atrous_memory_budget_bytes", "atrous_memory_budget_in_use_bytes"})

Registries = Callable[[], Iterable[tuple[str, int, CollectorRegistry]]]


class ServerMetrics:
    """A collector view (``prometheus_client.generate_latest`` takes it as a registry)."""

    def __init__(self, server: Metrics, versions: Registries) -> None:
        self.server = server
        self.versions = versions

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for family in self.server.registry.collect():
            if family.name not in PER_VERSION:
                families[family.name] = family
        for model, version, registry in self.versions():
            for family in registry.collect():
                if family.name in SERVER_WIDE:
                    continue
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit)
                extra = {"model": model, "version": str(version)}
                merged.samples.extend(sample._replace(labels={**sample.labels, **extra})
                                      for sample in family.samples)
        return iter(families.values())
