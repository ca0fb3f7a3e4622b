"""Console sessions and failed sign-ins, kept in PostgreSQL: every API replica sees the same
ones, and a restart neither ends a session nor forgets a run of wrong keys."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.columns import defaults_to_now


class ConsoleSessionRow(SQLModel, table=True):
    """A signed-in console session. The cookie carries the session id; the row holds only its
    SHA-256, so a copy of the table opens no session, and a fingerprint of the key (an HMAC
    under the session secret), never the key."""

    __tablename__ = "console_sessions"
    __table_args__ = (sa.Index("ix_console_sessions_expires_at", "expires_at"),)

    id_hash: str = Field(primary_key=True, max_length=64)
    key_fingerprint: str = Field(max_length=64)
    # The key's name at sign-in, for an operator reading the table (the fingerprint decides).
    key_name: str = Field(max_length=100)
    created_at: datetime = defaults_to_now()
    expires_at: datetime
    # Set at sign-out; the row stays until it expires, then the next sign-in deletes it.
    revoked_at: datetime | None = None


class SignInFailures(SQLModel, table=True):
    """Wrong keys sent to the console's sign-in from one client address (an IPv6 client's /64)
    since its last quiet hour: the back-off's state."""

    __tablename__ = "console_sign_in_failures"
    __table_args__ = (sa.Index("ix_console_sign_in_failures_last_failed_at", "last_failed_at"),)

    client: str = Field(primary_key=True, max_length=64)
    failures: int
    last_failed_at: datetime
