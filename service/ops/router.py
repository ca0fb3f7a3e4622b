"""Probes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.auth import NO_API_KEY
from service.migrate import head_revisions
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
async def readyz(request: Request) -> Any:
    """Ready when the database answers and migrations are at head.

    Picklist problems, a missing webhook secret and CRM reachability are reported as
    warnings without failing; CRM authentication failures fail readiness.
    """
    from service.crm.service import readiness_problems as crm_problems
    from service.picklist.service import readiness_warnings as picklist_warnings

    settings = request.app.state.settings
    problems: list[str] = []
    warnings: list[str] = []
    checks: dict[str, str] = {}
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
            rows = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            current = {r[0] for r in rows}
            if current == set(head_revisions()):
                checks["migrations"] = "ok"
            else:
                checks["migrations"] = "behind"
                problems.append(
                    f"migrations not at head (database {sorted(current)}, "
                    f"code {sorted(head_revisions())})"
                )
            warnings.extend(await picklist_warnings(conn, settings))
            crm_fatal, crm_warnings = await crm_problems(conn, request.app.state)
            problems.extend(crm_fatal)
            warnings.extend(crm_warnings)
    except Exception as exc:  # readiness must answer, whatever the database does
        checks.setdefault("database", "unreachable")
        if checks["database"] == "ok":
            checks["migrations"] = "unknown"
            problems.append(f"schema check failed: {type(exc).__name__}")
        else:
            problems.append(f"database unreachable: {type(exc).__name__}")
    if not settings.webhook_secrets:
        warnings.append(
            "no webhook secret configured (LEDGERLINK_WEBHOOK_SECRETS): "
            "the ingest webhook refuses all deliveries"
        )
    ready = not problems
    body = Readiness(
        status="ready" if ready else "not_ready",
        checks=checks,
        problems=problems,
        warnings=warnings,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


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
async def metrics(request: Request) -> Response:
    from service.ops.exposition import metrics_response

    return await metrics_response(request.app.state.engine)
