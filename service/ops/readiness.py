"""Readiness: what /readyz answers and the console's overview shows."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.crm.readiness import readiness_problems as crm_problems
from service.crm.tasks import DispatcherTask
from service.migrate import head_revisions
from service.ops.schemas import Readiness
from service.picklist.service import readiness_warnings as picklist_warnings
from service.settings import Settings
from service.transaction import read


@dataclass(frozen=True)
class ReadinessSources:
    """What readiness looks at, in the API process or the standalone worker's."""

    settings: Settings
    engine: AsyncEngine
    # The dispatcher of this process's own worker (None without one): its halt shows at once.
    dispatcher: DispatcherTask | None


async def readiness(sources: ReadinessSources) -> Readiness:
    """Ready when the database answers and migrations are at head; picklist problems, a
    missing webhook secret, CRM reachability, CRM lists that do not page, a failing read-back
    and records it skipped are warnings; a halted CRM dispatcher (refused credentials) is a
    problem."""
    settings = sources.settings
    problems: list[str] = []
    warnings: list[str] = []
    checks: dict[str, str] = {}

    async def check(conn: AsyncConnection) -> None:
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
        warnings.extend(await picklist_warnings(conn, settings.ledger))
        halted_here = sources.dispatcher.halted_reason if sources.dispatcher else None
        crm_fatal, crm_warnings = await crm_problems(conn, settings.crm, halted_here)
        problems.extend(crm_fatal)
        warnings.extend(crm_warnings)

    try:
        await read(sources.engine, check)
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
    return Readiness(
        status="ready" if not problems else "not_ready",
        checks=checks,
        problems=problems,
        warnings=warnings,
    )
