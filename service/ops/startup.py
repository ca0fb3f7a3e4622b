"""Checks run once at start-up; failures are logged clearly, never fatal."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from service.logging import get_logger
from service.picklist.service import readiness_warnings
from service.settings import Settings

log = get_logger(__name__)


async def startup_checks(engine: AsyncEngine, settings: Settings) -> None:
    try:
        async with engine.connect() as conn:
            warnings = await readiness_warnings(conn, settings.ledger)
    except Exception as exc:
        log.warning("startup.checks.skipped", error=f"{type(exc).__name__}: {exc}")
        return
    for warning in warnings:
        log.warning("picklist.verification.failed", detail=warning)
