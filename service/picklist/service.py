"""Picklist rules: verification against what the sync may write, and repair."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from service.settings import Settings


async def readiness_warnings(conn: AsyncConnection, settings: Settings) -> list[str]:
    """Problems with the picklist worth reporting on /readyz (never fatal)."""
    return []
