"""console sessions and failed sign-ins move to PostgreSQL

A console session was only a signed cookie: signing out deleted the browser's copy, and any
other copy kept working until it expired. `console_sessions` holds every signed-in session
(the SHA-256 of its id, the fingerprint of the key it was made with, its expiry, and when it
was signed out), checked on every request, on every replica. `console_sign_in_failures`
counts wrong keys per client address, so the sign-in backs off on every replica alike.

Sessions started before this revision have no row: they end at the upgrade (people sign in
again); nothing else is carried, as nothing was stored before. A downgrade drops both tables
(sessions signed in after the upgrade keep working on the older code until they expire: it
checks only the cookie).

Revision ID: 0004_console_sessions
Revises: 0003_allocation_posting_kind
Create Date: 2026-12-08 10:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_console_sessions"
down_revision: str | None = "0003_allocation_posting_kind"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("key_name", sa.String(length=100), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index(
        "ix_console_sessions_expires_at", "console_sessions", ["expires_at"], unique=False
    )
    op.create_table(
        "console_sign_in_failures",
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client"),
    )
    op.create_index(
        "ix_console_sign_in_failures_last_failed_at",
        "console_sign_in_failures",
        ["last_failed_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("console_sign_in_failures")
    op.drop_table("console_sessions")
