"""Liveness and readiness probes."""

from fastapi import APIRouter

from app.api.deps import ManagerDep
from app.api.schemas import ErrorEnvelope, Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """Liveness: 200 while the process runs."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status,
            responses={503: {"model": ErrorEnvelope,
                             "description": "loading, warming up or shutting down"}})
async def readyz(manager: ManagerDep) -> Status:
    """Readiness: 200 once the default model is loaded and warmed (and through swaps),
    503 before and while draining."""
    manager.require_ready()
    return Status(status="ready")
