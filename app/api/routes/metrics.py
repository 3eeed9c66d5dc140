"""GET /metrics in the Prometheus text format: this process's series, or the whole node's
(every worker's) when ``PROMETHEUS_MULTIPROC_DIR`` is set (``app.metrics``)."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ManagerDep

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition"}})
async def metrics(manager: ManagerDep) -> Response:
    """Prometheus metrics: requests, stage latencies, batch sizes, queue depth, rejections
    (per model version: `model` and `version` labels)."""
    return Response(manager.metrics.render(), media_type=CONTENT_TYPE_LATEST)
