"""initial: the whole schema, and the seed of the picklist

No foreign keys on the child rows the set-based statements write (allocations, job_results,
status_history, sync_run_changes): each is written only by the statement that writes or locks
its parent, and no parent is ever deleted, so a per-row trigger would check nothing the
statement has not already guaranteed (docs/BENCHMARKS.md measures what the triggers cost).

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-29 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Frozen here: the seed must not change when the code's default list does.
SEED_PICKLIST = (
    "Created",
    "Approved",
    "Sent",
    "Unpaid",
    "Part Paid",
    "Paid",
    "Credit Invoice",
    "Written Off",
    "Paid/Written Off",
    "Cancelled",
)

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money(name: str, *, nullable: bool = False, zero: bool = False) -> sa.Column[object]:
    """A `numeric(14,2)` column; `zero` gives it a server default of 0."""
    return sa.Column(
        name,
        sa.Numeric(precision=14, scale=2),
        server_default=sa.text("0") if zero else None,
        nullable=nullable,
    )


def _at(name: str, *, now: bool = False) -> sa.Column[object]:
    """A timestamptz column: NOT NULL DEFAULT now() with `now`, else nullable."""
    if now:
        return sa.Column(
            name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        )
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _count(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def _flag(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Boolean(), server_default="false", nullable=False)


def upgrade() -> None:
    op.create_table(
        "crm_observed_statuses",
        sa.Column("value", sa.String(length=64), nullable=False),
        _at("first_seen", now=True),
        _at("last_seen", now=True),
        sa.Column("times_seen", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("value"),
    )
    op.create_table(
        "invoices",
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        sa.Column("account_ref", sa.String(length=32), nullable=False),
        sa.Column("sage_tran_number", sa.BigInteger(), nullable=False),
        sa.Column("invoice_date", sa.Date(), nullable=False),
        _money("gross", zero=True),
        _money("sage_outstanding", nullable=True),
        sa.Column("status", sa.String(length=64), server_default="Unpaid", nullable=False),
        sa.Column("derived_state", sa.String(length=20), nullable=True),
        _money("outstanding", zero=True),
        _money("computed_outstanding", nullable=True),
        _money("paid", zero=True),
        _money("discounted", zero=True),
        _money("written_off", zero=True),
        _money("credited", zero=True),
        sa.Column("conflict", sa.Text(), nullable=True),
        _flag("mismatch"),
        sa.Column("duplicate_of", sa.BigInteger(), nullable=True),
        sa.Column("warning", sa.Text(), nullable=True),
        _flag("deleted"),
        sa.Column("crm_id", sa.String(length=64), nullable=True),
        _at("dirty_since"),
        _at("reconciled_at"),
        _at("created_at", now=True),
        _at("updated_at", now=True),
        # The figures above are in the invoice's currency (NULL = the base currency); these
        # are the same figures in the base currency.
        sa.Column("currency", sa.String(length=3), nullable=True),
        _money("gross_base", zero=True),
        _money("sage_outstanding_base", nullable=True),
        _money("outstanding_base", zero=True),
        _money("computed_outstanding_base", nullable=True),
        _money("paid_base", zero=True),
        _money("discounted_base", zero=True),
        _money("written_off_base", zero=True),
        _money("credited_base", zero=True),
        _money("exchange_adjustment", zero=True),
        sa.PrimaryKeyConstraint("invoice_number"),
    )
    op.create_index(
        "ix_invoices_account_ref", "invoices", ["account_ref", "invoice_number"], unique=False
    )
    op.create_index(
        "ix_invoices_dirty",
        "invoices",
        ["dirty_since"],
        unique=False,
        postgresql_where=sa.text("dirty_since IS NOT NULL"),
    )
    # An SI whose reference is edited moves to another invoice number; the invoice it leaves
    # is kept, deleted, with its history: only live invoices are unique per SI.
    op.create_index(
        "ix_invoices_sage_tran_number",
        "invoices",
        ["sage_tran_number"],
        unique=True,
        postgresql_where=sa.text("NOT deleted"),
    )
    op.create_index("ix_invoices_status", "invoices", ["status", "invoice_number"], unique=False)
    op.create_index(
        "ix_invoices_updated_at", "invoices", ["updated_at", "invoice_number"], unique=False
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("request_sha256", sa.LargeBinary(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        _flag("dry_run"),
        _count("total"),
        _count("processed"),
        _count("matched"),
        _count("updated"),
        _count("unchanged"),
        _count("not_found"),
        sa.Column("error", sa.Text(), nullable=True),
        _at("created_at", now=True),
        _at("started_at"),
        _at("finished_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _count("skipped"),
        _count("skipped_protected"),
        _count("attempts"),
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed')", name="ck_jobs_status"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    # Idempotency keys are scoped by the API key (the actor) that sent them.
    op.create_index("ix_jobs_idempotency_key", "jobs", ["actor", "idempotency_key"], unique=True)
    op.create_index(
        "ix_jobs_queued",
        "jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=12), server_default="pending", nullable=False),
        _count("attempts"),
        _at("next_attempt_at", now=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("created_at", now=True),
        _at("delivered_at"),
        sa.CheckConstraint(
            "state IN ('pending','delivered','superseded','skipped','dead')", name="ck_outbox_state"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_outbox_invoice", "outbox", ["invoice_number", "id"], unique=False)
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["next_attempt_at", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_outbox_dead",
        "outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("state = 'dead'"),
    )
    op.create_table(
        "picklist_values",
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("value"),
    )
    op.create_table(
        "postings",
        sa.Column("tran_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=2), nullable=False),
        sa.Column("account_ref", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=30), server_default="", nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("details", sa.String(length=60), server_default="", nullable=False),
        sa.Column("nominal_code", sa.String(length=8), server_default="", nullable=False),
        _money("net_amount"),
        _money("tax_amount"),
        _money("gross_amount"),
        _money("outstanding", nullable=True),
        _flag("deleted"),
        sa.Column("content_hash", sa.LargeBinary(), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        _at("received_at", now=True),
        _at("updated_at", now=True),
        # NULL = the base currency.
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("exchange_rate", sa.Numeric(20, 10), nullable=True),
        _money("foreign_net_amount", nullable=True),
        _money("foreign_tax_amount", nullable=True),
        _money("foreign_gross_amount", nullable=True),
        _money("foreign_outstanding", nullable=True),
        sa.CheckConstraint("type IN ('SI','SC','SR','SA','SD','SP')", name="ck_postings_type"),
        sa.PrimaryKeyConstraint("tran_number"),
    )
    op.create_index(
        "ix_postings_reference_si",
        "postings",
        ["reference"],
        unique=False,
        postgresql_where=sa.text("type = 'SI'"),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("scope", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _flag("dry_run"),
        sa.Column("actor", sa.String(length=100), nullable=True),
        _at("requested_at", now=True),
        _at("started_at"),
        _at("finished_at"),
        _count("examined"),
        _count("changed"),
        _count("unchanged"),
        _count("skipped_protected"),
        _count("conflicts"),
        sa.Column("error", sa.Text(), nullable=True),
        # Where a requested run resumes, and when its worker last showed it was alive.
        sa.Column("cursor", sa.String(length=30), nullable=True),
        _at("heartbeat_at"),
        sa.CheckConstraint(
            "status IN ('queued','running','succeeded','failed')", name="ck_sync_runs_status"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_sync_runs_queued",
        "sync_runs",
        ["requested_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_sync_runs_running",
        "sync_runs",
        ["heartbeat_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("webhook_id", sa.String(length=255), nullable=False),
        sa.Column("body_sha256", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("postings_received", sa.Integer(), nullable=False),
        _at("received_at", now=True),
        sa.PrimaryKeyConstraint("webhook_id"),
    )
    op.create_table(
        "allocations",
        sa.Column("posting_tran_number", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("invoice_tran_number", sa.BigInteger(), nullable=False),
        _money("amount"),
        sa.Column("date", sa.Date(), nullable=True),
        _flag("deleted"),
        _money("foreign_amount", nullable=True),
        sa.PrimaryKeyConstraint("posting_tran_number", "seq"),
    )
    op.create_index(
        "ix_allocations_invoice_tran_number", "allocations", ["invoice_tran_number"], unique=False
    )
    op.create_table(
        "job_results",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        sa.Column("from_status", sa.String(length=64), nullable=True),
        sa.Column("to_status", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "seq"),
    )
    op.create_table(
        "status_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        _at("at", now=True),
        sa.Column("from_status", sa.String(length=64), nullable=True),
        sa.Column("to_status", sa.String(length=64), nullable=False),
        _money("from_outstanding", nullable=True),
        _money("to_outstanding", nullable=True),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("run_id", sa.UUID(), nullable=True),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.CheckConstraint(
            "source IN ('sync','manual','bulk','crm')", name="ck_status_history_source"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_status_history_invoice", "status_history", ["invoice_number", "id"], unique=False
    )
    op.create_table(
        "sync_run_changes",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        sa.Column("from_status", sa.String(length=64), nullable=True),
        sa.Column("to_status", sa.String(length=64), nullable=False),
        _money("from_outstanding", nullable=True),
        _money("to_outstanding", nullable=True),
        sa.PrimaryKeyConstraint("run_id", "invoice_number"),
    )
    # One row, shared by the workers (which call OpenCRM) and the API processes (whose
    # /readyz reports a dispatcher halted on refused credentials).
    op.create_table(
        "crm_dispatcher_state",
        sa.Column(
            "id",
            sa.SmallInteger(),
            server_default=sa.text("1"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("halted_reason", sa.Text(), nullable=True),
        _at("halted_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("last_error_at"),
        _at("last_success_at"),
        _at("updated_at", now=True),
        sa.CheckConstraint("id = 1", name="ck_crm_dispatcher_state_single_row"),
        sa.PrimaryKeyConstraint("id"),
    )
    # What OpenCRM last showed per invoice, and the read-back's cursor (one row).
    op.create_table(
        "crm_invoices",
        sa.Column("invoice_number", sa.String(length=30), nullable=False),
        sa.Column("crm_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=64), nullable=True),
        _money("outstanding", nullable=True),
        sa.Column("modified", sa.String(length=32), nullable=True),
        _at("seen_at", now=True),
        sa.PrimaryKeyConstraint("invoice_number"),
    )
    op.create_table(
        "crm_readback_state",
        sa.Column(
            "id",
            sa.SmallInteger(),
            server_default=sa.text("1"),
            autoincrement=False,
            nullable=False,
        ),
        _at("next_run_at", now=True),
        _at("scan_started_at"),
        sa.Column("scan_day", sa.Date(), nullable=True),
        _count("page_start"),
        sa.Column("last_modified", sa.String(length=32), nullable=True),
        _count("failures"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _at("last_error_at"),
        _at("last_completed_at"),
        sa.CheckConstraint("id = 1", name="ck_crm_readback_state_single_row"),
        sa.PrimaryKeyConstraint("id"),
    )
    picklist = sa.table(
        "picklist_values", sa.column("value", sa.String), sa.column("position", sa.Integer)
    )
    op.bulk_insert(picklist, [{"value": v, "position": i} for i, v in enumerate(SEED_PICKLIST)])


def downgrade() -> None:
    # A dropped table takes its indexes and constraints with it; children before parents.
    for table in (
        "crm_readback_state",
        "crm_invoices",
        "crm_dispatcher_state",
        "sync_run_changes",
        "status_history",
        "job_results",
        "allocations",
        "webhook_deliveries",
        "sync_runs",
        "postings",
        "picklist_values",
        "outbox",
        "jobs",
        "invoices",
        "crm_observed_statuses",
    ):
        op.drop_table(table)
