"""Probes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.auth import NO_API_KEY
from service.deps import ReadinessDep
from service.ops.exposition import metrics_response
from service.ops.readiness import readiness
from service.ops.schemas import Health, Readiness

router = APIRouter(tags=["probes"])

# The probes read nothing from the request, so the only client error they can answer is the
# server's own, before any route runs (uvicorn's h11 refuses headers over 64 KiB).
MALFORMED_REQUEST: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Malformed HTTP request (e.g. headers over 64 KiB), refused by the "
        "server before the route runs",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/healthz",
    operation_id="healthz",
    response_model=Health,
    responses=MALFORMED_REQUEST,
    openapi_extra=NO_API_KEY,
)
async def healthz() -> Health:
    """Liveness: the process answers. Touches no dependency."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    responses={
        **MALFORMED_REQUEST,
        503: {"model": Readiness, "description": "Not ready, with reasons"},
    },
    openapi_extra=NO_API_KEY,
)
async def readyz(sources: ReadinessDep) -> Any:
    """Ready when the database answers and migrations are at head.

    Picklist problems, a missing webhook secret and CRM reachability are reported as
    warnings without failing; CRM authentication failures fail readiness.
    """
    body = await readiness(sources)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **MALFORMED_REQUEST,
    },
    openapi_extra=NO_API_KEY,
)
async def metrics(sources: ReadinessDep) -> Response:
    return await metrics_response(sources)
