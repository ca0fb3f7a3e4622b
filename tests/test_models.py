"""The tables the models declare are the tables the migrations build.

`make migrations-check` runs `alembic check`, which compares what autogenerate understands
(columns, types, nullability, server defaults, indexes and foreign keys by their columns); it
does not look at a CHECK constraint's condition or a table's storage parameters. Here both
schemas are read back from PostgreSQL's catalog, so any difference PostgreSQL records counts.
Columns are compared by name, not position: the initial migration lists some columns in
another order than the models (the order shows only in `SELECT *`, which nothing uses).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import create_engine
from service.migrate import upgrade_to_head
from service.models import metadata
from tests.support.database import database_beside

PUBLIC = "c.relnamespace = 'public'::regnamespace AND c.relname <> 'alembic_version'"
CATALOG = {
    "tables": f"""
        SELECT c.relname, c.relkind::text, c.relpersistence::text, c.reloptions::text
          FROM pg_class AS c WHERE {PUBLIC} AND c.relkind IN ('r', 'p', 'v', 'm', 'S')""",
    "columns": f"""
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text,
               a.attcollation::regcollation::text
          FROM pg_attribute AS a
          JOIN pg_class AS c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE {PUBLIC} AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": f"""
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid),
               k.condeferrable, k.condeferred
          FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid WHERE {PUBLIC}""",
    "indexes": f"""
        SELECT c.relname, i.relname, pg_get_indexdef(i.oid), i.reloptions::text
          FROM pg_index AS x
          JOIN pg_class AS c ON c.oid = x.indrelid
          JOIN pg_class AS i ON i.oid = x.indexrelid
         WHERE {PUBLIC}""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, min_value, max_value,
               cycle, cache_size
          FROM pg_sequences WHERE schemaname = 'public'""",
    "triggers": f"""
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
         WHERE {PUBLIC} AND NOT t.tgisinternal""",
}


async def catalog(conn: AsyncConnection) -> dict[str, set[tuple[Any, ...]]]:
    """What PostgreSQL records of the public schema, kind by kind, without alembic_version."""
    return {
        kind: {tuple(row) for row in await conn.execute(sa.text(query))}
        for kind, query in CATALOG.items()
    }


async def read_catalog(url: str) -> dict[str, set[tuple[Any, ...]]]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await catalog(conn)
    finally:
        await engine.dispose()


def differences(
    migrated: dict[str, set[tuple[Any, ...]]], built: dict[str, set[tuple[Any, ...]]]
) -> list[str]:
    lines: list[str] = []
    for kind in CATALOG:
        lines += [
            f"{kind}: only the migration has {row}"
            for row in sorted(migrated[kind] - built[kind], key=repr)
        ]
        lines += [
            f"{kind}: only the models have {row}"
            for row in sorted(built[kind] - migrated[kind], key=repr)
        ]
    return lines


async def test_create_all_builds_the_schema_the_migrations_build(database_url: str) -> None:
    # Fresh databases on the tests' server: the session's own may hold a test's scratch table.
    async with database_beside(database_url) as url:
        await asyncio.to_thread(upgrade_to_head, url)
        migrated = await read_catalog(url)
    async with database_beside(database_url) as url:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        finally:
            await engine.dispose()
        built = await read_catalog(url)

    assert {row[0] for row in built["tables"] if row[1] == "r"} == set(metadata.tables)
    found = differences(migrated, built)
    assert found == [], "\n".join(found)


def test_differences_names_what_only_one_side_has() -> None:
    """The comparison itself: a row on one side only is reported, with its side."""
    same = {kind: {("t", "x")} for kind in CATALOG}
    other = {**same, "indexes": {("t", "x"), ("t", "ix_t_extra")}}
    assert differences(same, same) == []
    assert differences(same, other) == ["indexes: only the models have ('t', 'ix_t_extra')"]
