"""Checks run once at start-up; failures are logged clearly, never fatal."""

from __future__ import annotations

from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from service.logging import get_logger
from service.picklist.service import readiness_warnings
from service.settings import Settings
from service.transaction import read

log = get_logger(__name__)


async def startup_checks(engine: AsyncEngine, settings: Settings) -> None:
    try:
        warnings = await read(engine, partial(readiness_warnings, ledger=settings.ledger))
    except Exception as exc:
        log.warning("startup.checks.skipped", error=f"{type(exc).__name__}: {exc}")
        return
    for warning in warnings:
        log.warning("picklist.verification.failed", detail=warning)
