"""All SQL of the picklist."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

_TEXT_ARRAY = pg.ARRAY(sa.Text)


def _texts(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=_TEXT_ARRAY)


async def values(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(sa.text("SELECT value FROM picklist_values ORDER BY position, value"))
    return list(rows.scalars())


async def hold_value(conn: AsyncConnection, value: str) -> bool:
    """True when `value` is in the picklist; it then stays there until this transaction ends
    (FOR KEY SHARE: a concurrent PUT that would remove it waits, then sees it in use)."""
    row = await conn.execute(
        sa.text("SELECT 1 FROM picklist_values WHERE value = :v FOR KEY SHARE"), {"v": value}
    )
    return row.first() is not None


async def lock_for_change(conn: AsyncConnection) -> None:
    """Serialise PUT and repair with each other (readers and PATCH are not blocked)."""
    await conn.execute(sa.text("LOCK TABLE picklist_values IN SHARE ROW EXCLUSIVE MODE"))


async def lock_values(conn: AsyncConnection, doomed: list[str]) -> None:
    """Wait for every transaction that holds one of these values (a PATCH or a bulk update in
    flight), so the in-use check that follows sees what they wrote."""
    await conn.execute(
        sa.text("SELECT 1 FROM picklist_values WHERE value = ANY(:v) FOR UPDATE").bindparams(
            _texts("v")
        ),
        {"v": doomed},
    )


async def values_in_use(conn: AsyncConnection, candidates: list[str]) -> list[str]:
    """Which of `candidates` an invoice carries, or a queued/running Global Update targets."""
    rows = await conn.execute(
        sa.text(
            """
            SELECT c.value
              FROM unnest(:c) AS c(value)
             WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.status = c.value)
                OR EXISTS (SELECT 1 FROM jobs j
                            WHERE j.status IN ('queued', 'running')
                              AND j.request ->> 'status' = c.value)
             ORDER BY c.value
            """
        ).bindparams(_texts("c")),
        {"c": candidates},
    )
    return list(rows.scalars())


async def replace(conn: AsyncConnection, new_values: list[str]) -> None:
    # Kept values are updated in place (their position only), so a transaction holding one
    # with FOR KEY SHARE never blocks the PUT.
    await conn.execute(
        sa.text("DELETE FROM picklist_values WHERE value <> ALL(:v)").bindparams(_texts("v")),
        {"v": new_values},
    )
    await conn.execute(
        sa.text(
            """
            INSERT INTO picklist_values (value, position)
            SELECT v, (ord - 1)::int FROM unnest(:v) WITH ORDINALITY AS t(v, ord)
            ON CONFLICT (value) DO UPDATE SET position = EXCLUDED.position
            WHERE picklist_values.position IS DISTINCT FROM EXCLUDED.position
            """
        ).bindparams(_texts("v")),
        {"v": new_values},
    )


async def append(conn: AsyncConnection, extra: list[str]) -> list[str]:
    """Add `extra` at the end of the list (in order); return what was actually added."""
    rows = await conn.execute(
        sa.text(
            """
            INSERT INTO picklist_values (value, position)
            SELECT v, (SELECT coalesce(max(position), -1) FROM picklist_values) + ord::int
              FROM unnest(:v) WITH ORDINALITY AS t(v, ord)
            ON CONFLICT (value) DO NOTHING
            RETURNING value, position
            """
        ).bindparams(_texts("v")),
        {"v": extra},
    )
    return [r.value for r in sorted(rows, key=lambda r: r.position)]


async def observed_in_crm(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(sa.text("SELECT value FROM crm_observed_statuses ORDER BY value"))
    return list(rows.scalars())
