"""What /readyz says about the CRM: a halt fails readiness; failing calls, lists that do not
page, a failing read-back, records it skipped and dead letters are warnings."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from service.crm.repository import cursor, health
from service.crm.settings import CrmMode, CrmSettings


async def readiness_problems(
    conn: AsyncConnection, crm: CrmSettings, halted_here: str | None
) -> tuple[list[str], list[str]]:
    """(problems that fail readiness, warnings that do not) about the CRM connection.

    Workers usually run in other processes, so their findings are read from the shared
    `crm_dispatcher_state` row on every probe; an in-process worker's halt (`halted_here`)
    shows at once.
    """
    state, dead = await health.read_state(conn)
    fatal: list[str] = []
    warnings: list[str] = []
    if dead:
        warnings.append(
            f"{dead} CRM outbox message(s) are dead letters: "
            "GET /v1/crm/outbox?state=dead, then POST /v1/crm/outbox/{id}/retry"
        )
    if crm.mode is CrmMode.local:
        return fatal, warnings
    halted = halted_here
    if halted is None and state.halted_reason:
        since = state.halted_at.isoformat() if state.halted_at else "recently"
        halted = f"{state.halted_reason} (since {since})"
    if halted is not None:
        fatal.append(f"CRM deliveries halted, nothing is lost meanwhile: {halted}")
    elif _failing(state):
        warnings.append(f"OpenCRM calls failing: {state.last_error}")
    if state.paging_problem:
        since = state.paging_problem_at.isoformat() if state.paging_problem_at else "recently"
        warnings.append(
            f"OpenCRM lists do not page properly (since {since}): lookups of invoices past "
            f"the first page and read-back scans fail until they do: {state.paging_problem}"
        )
    if crm.readback_seconds > 0:
        warnings.extend(_readback_warnings(await cursor.read_readback_state(conn)))
    return fatal, warnings


def _readback_warnings(state: cursor.ReadbackState | None) -> list[str]:
    if state is None:
        return []
    warnings = []
    skipped = max(state.skipped, state.scan_skipped)
    if skipped:
        warnings.append(
            f"CRM read-back skipped {skipped} record(s) it cannot store, so neither adopted "
            f"nor compared (fix them in OpenCRM); the last: {state.last_skipped}"
        )
    if state.last_error_at is None:
        return warnings
    if state.last_completed_at is not None and state.last_completed_at > state.last_error_at:
        return warnings
    warnings.append(
        f"CRM read-back failing ({state.failures} attempt(s) since "
        f"{state.last_error_at.isoformat()}; statuses set in OpenCRM are not seen): "
        f"{state.last_error}"
    )
    return warnings


def _failing(state: health.DispatcherState) -> bool:
    if state.last_error_at is None:
        return False
    return state.last_success_at is None or state.last_error_at > state.last_success_at
