"""Probes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.ops.readiness import readiness
from service.ops.schemas import Health, Readiness

router = APIRouter(tags=["probes"])


@router.get("/healthz", operation_id="healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers. Touches no dependency."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready, with reasons"}},
)
async def readyz(request: Request) -> Any:
    """Ready when the database answers and migrations are at head.

    Picklist problems, a missing webhook secret and CRM reachability are reported as
    warnings without failing; CRM authentication failures fail readiness.
    """
    body = await readiness(request.app.state)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    from service.ops.gauges import refresh_gauges

    await refresh_gauges(request.app.state.engine)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
