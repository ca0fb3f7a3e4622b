"""What the dispatchers learnt about the CRM (one row, id 1), shared by every process: a halt,
the last error and success, lists that do not page. Read by /readyz in the API processes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class DispatcherState:
    halted_reason: str | None = None
    halted_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    paging_problem: str | None = None
    paging_problem_at: datetime | None = None


async def record_halt(conn: AsyncConnection, reason: str) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, halted_reason, halted_at, last_error,
              last_error_at, updated_at)
            VALUES (1, :reason, now(), :reason, now(), now())
            ON CONFLICT (id) DO UPDATE SET
              halted_reason = EXCLUDED.halted_reason,
              halted_at = coalesce(s.halted_at, EXCLUDED.halted_at),
              last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at,
              updated_at = now()
            """
        ),
        {"reason": reason},
    )


async def record_failure(conn: AsyncConnection, error: str) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, last_error, last_error_at, updated_at)
            VALUES (1, :error, now(), now())
            ON CONFLICT (id) DO UPDATE SET last_error = EXCLUDED.last_error,
              last_error_at = EXCLUDED.last_error_at, updated_at = now()
            """
        ),
        {"error": error},
    )


async def record_success(conn: AsyncConnection) -> None:
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, last_success_at, updated_at)
            VALUES (1, now(), now())
            ON CONFLICT (id) DO UPDATE SET halted_reason = NULL, halted_at = NULL,
              last_success_at = EXCLUDED.last_success_at, updated_at = now()
            """
        )
    )


async def record_paging(conn: AsyncConnection, problem: str | None) -> None:
    """Remember that the CRM ignores paging (a page answered twice, a list that does not end),
    or, with None, that it was seen paging properly again."""
    if problem is None:
        await conn.execute(
            sa.text(
                "UPDATE crm_dispatcher_state SET paging_problem = NULL, paging_problem_at = NULL, "
                "updated_at = now() WHERE id = 1 AND paging_problem IS NOT NULL"
            )
        )
        return
    await conn.execute(
        sa.text(
            """
            INSERT INTO crm_dispatcher_state AS s (id, paging_problem, paging_problem_at,
              updated_at)
            VALUES (1, :problem, now(), now())
            ON CONFLICT (id) DO UPDATE SET paging_problem = EXCLUDED.paging_problem,
              paging_problem_at = coalesce(s.paging_problem_at, EXCLUDED.paging_problem_at),
              updated_at = now()
            """
        ),
        {"problem": problem},
    )


async def read_state(conn: AsyncConnection) -> tuple[DispatcherState, int]:
    """The dispatcher state and the number of dead letters."""
    row = (
        await conn.execute(
            sa.text(
                """
                SELECT s.halted_reason, s.halted_at, s.last_error, s.last_error_at,
                       s.last_success_at, s.paging_problem, s.paging_problem_at,
                       (SELECT count(*) FROM outbox WHERE state = 'dead') AS dead
                FROM (SELECT 1) AS one
                LEFT JOIN crm_dispatcher_state AS s ON s.id = 1
                """
            )
        )
    ).one()
    state = DispatcherState(
        halted_reason=row.halted_reason,
        halted_at=row.halted_at,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        last_success_at=row.last_success_at,
        paging_problem=row.paging_problem,
        paging_problem_at=row.paging_problem_at,
    )
    return state, int(row.dead)
