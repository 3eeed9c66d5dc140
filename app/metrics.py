"""Prometheus metrics, one registry per app (so that several apps in one process, as in
tests, never share or double-register collectors)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; spans a 1 ms decode of a thumbnail to a multi-second CPU ResNet-101 batch.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)


class Metrics:
    """The server's collectors; ``registry`` is what ``GET /metrics`` renders."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("atrous_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_latency = Histogram("atrous_request_duration_seconds",
                                         "Time from request start to response start, by route",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("atrous_stage_duration_seconds",
                                       "Time per /segment stage: decode, queue, inference, encode",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram("atrous_batch_size", "Images per model call",
                                    buckets=[b for b in batch_buckets if b <= max_batch_size],
                                    registry=r)
        self.model_inputs = Counter("atrous_model_inputs", "S x S model inputs run (images "
                                    "and tiles), by output: labels or probabilities",
                                    ["output"], registry=r)
        self.queue_depth = Gauge("atrous_queue_depth", "Images waiting for the model",
                                 registry=r)
        self.in_flight = Gauge("atrous_requests_in_flight", "HTTP requests being served",
                               registry=r)
        self.rejections = Counter("atrous_rejections", "Requests refused or dropped, by reason",
                                  ["reason"], registry=r)
        self.ready = Gauge("atrous_ready", "1 when the model is loaded and warmed", registry=r)
        self.model_loads = Counter("atrous_model_loads", "Model version loads by model and "
                                   "outcome: available or failed", ["model", "outcome"],
                                   registry=r)
        self.memory_budget = Gauge("atrous_memory_budget_bytes", "Estimated bytes of work the "
                                   "server admits at once (ATROUS_MEMORY_BUDGET_MB)", registry=r)
        self.memory_in_use = Gauge("atrous_memory_budget_in_use_bytes", "Estimated bytes of "
                                   "work admitted now (requests decoding, queued or running)",
                                   registry=r)
