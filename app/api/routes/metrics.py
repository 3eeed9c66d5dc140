"""GET /metrics in the Prometheus text format."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ServiceDep

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition"}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics: requests, stage latencies, batch sizes, queue depth, rejections."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
