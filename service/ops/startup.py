"""Checks run once at start-up; failures are logged clearly, never fatal."""

from __future__ import annotations

from fastapi import FastAPI

from service.logging import get_logger

log = get_logger(__name__)


async def startup_checks(app: FastAPI) -> None:
    from service.picklist.service import readiness_warnings

    try:
        async with app.state.engine.connect() as conn:
            warnings = await readiness_warnings(conn, app.state.settings)
    except Exception as exc:
        log.warning("startup.checks.skipped", error=f"{type(exc).__name__}: {exc}")
        return
    for warning in warnings:
        log.warning("picklist.verification.failed", detail=warning)
