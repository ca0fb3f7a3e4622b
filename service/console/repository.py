"""All SQL of the console's sessions and sign-in back-off (the pages themselves call the
features' services)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.locks import SIGN_IN


async def insert_session(
    conn: AsyncConnection, *, id_hash: str, key_fingerprint: str, key_name: str, minutes: int
) -> None:
    await conn.execute(
        sa.text(
            "INSERT INTO console_sessions (id_hash, key_fingerprint, key_name, expires_at) "
            "VALUES (:h, :f, :n, now() + make_interval(mins => :m))"
        ),
        {"h": id_hash, "f": key_fingerprint, "n": key_name, "m": minutes},
    )


async def live_session_key(conn: AsyncConnection, id_hash: str) -> str | None:
    """The key fingerprint of the session, if it is neither signed out nor expired."""
    found: str | None = await conn.scalar(
        sa.text(
            "SELECT key_fingerprint FROM console_sessions "
            "WHERE id_hash = :h AND revoked_at IS NULL AND expires_at > now()"
        ),
        {"h": id_hash},
    )
    return found


async def revoke_session(conn: AsyncConnection, id_hash: str) -> None:
    await conn.execute(
        sa.text(
            "UPDATE console_sessions SET revoked_at = now() "
            "WHERE id_hash = :h AND revoked_at IS NULL"
        ),
        {"h": id_hash},
    )


async def delete_ended_sessions(conn: AsyncConnection, *, limit: int) -> int:
    """Delete up to `limit` sessions past their expiry (signed out or not)."""
    result = await conn.execute(
        sa.text(
            "DELETE FROM console_sessions WHERE id_hash IN ("
            " SELECT id_hash FROM console_sessions WHERE expires_at <= now()"
            " LIMIT :limit FOR UPDATE SKIP LOCKED)"
        ),
        {"limit": limit},
    )
    return result.rowcount


async def lock_client(conn: AsyncConnection, client: str) -> None:
    """One sign-in at a time per client, on every replica, until this transaction ends: a
    burst of parallel guesses is counted one by one, not all against the same count."""
    await conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:c))"),
        {"k": SIGN_IN, "c": client},
    )


@dataclass(frozen=True)
class Failures:
    failures: int
    seconds_since_last: float


async def failures(conn: AsyncConnection, client: str) -> Failures | None:
    row = (
        await conn.execute(
            sa.text(
                "SELECT failures, extract(epoch FROM now() - last_failed_at)::float8 AS since "
                "FROM console_sign_in_failures WHERE client = :c"
            ),
            {"c": client},
        )
    ).first()
    return None if row is None else Failures(row.failures, row.since)


async def record_failure(conn: AsyncConnection, client: str, *, forget_seconds: int) -> int:
    """Count one more wrong key from `client` (from one, after a quiet `forget_seconds`)."""
    count: int = await conn.scalar(
        sa.text(
            """
            INSERT INTO console_sign_in_failures AS f (client, failures, last_failed_at)
            VALUES (:c, 1, now())
            ON CONFLICT (client) DO UPDATE SET
                failures = CASE WHEN f.last_failed_at <= now() - make_interval(secs => :forget)
                                THEN 1 ELSE f.failures + 1 END,
                last_failed_at = now()
            RETURNING failures
            """
        ),
        {"c": client, "forget": forget_seconds},
    )
    return count


async def delete_forgotten_failures(
    conn: AsyncConnection, *, forget_seconds: int, limit: int
) -> int:
    result = await conn.execute(
        sa.text(
            "DELETE FROM console_sign_in_failures WHERE client IN ("
            " SELECT client FROM console_sign_in_failures"
            " WHERE last_failed_at <= now() - make_interval(secs => :forget)"
            " LIMIT :limit FOR UPDATE SKIP LOCKED)"
        ),
        {"forget": forget_seconds, "limit": limit},
    )
    return result.rowcount
