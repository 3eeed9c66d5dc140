"""GET /metrics in the Prometheus text format."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ManagerDep
from app.repository.metrics import ServerMetrics

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition"}})
async def metrics(manager: ManagerDep) -> Response:
    """Prometheus metrics: requests, stage latencies, batch sizes, queue depth, rejections
    (per model version: `model` and `version` labels)."""
    view = ServerMetrics(manager.metrics, manager.registries)
    return Response(generate_latest(view), media_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]
