"""lean schema: no foreign-key triggers on the rows the set-based statements write

Each of these child rows is written only by a statement that takes its parent from the same
statement or from a row it holds locked, and no parent is ever deleted (jobs and runs expire by
releasing their keys, invoices and postings are marked deleted), so the per-row trigger checked
nothing the statement had not already guaranteed. Measured on the embedded PostgreSQL: the
status_history and sync_run_changes checks were ~8% of a reconcile batch, the status_history and
job_results checks ~0.9 s of a Global Update of 100,000 invoices, the allocations check 1.9 ms
of the 12 ms store statement per batch of 500 receipts (docs/BENCHMARKS.md).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (child table, constraint, column, parent table, parent column)
FOREIGN_KEYS = (
    (
        "allocations",
        "allocations_posting_tran_number_fkey",
        "posting_tran_number",
        "postings",
        "tran_number",
    ),
    ("job_results", "job_results_job_id_fkey", "job_id", "jobs", "id"),
    (
        "status_history",
        "status_history_invoice_number_fkey",
        "invoice_number",
        "invoices",
        "invoice_number",
    ),
    ("sync_run_changes", "sync_run_changes_run_id_fkey", "run_id", "sync_runs", "id"),
)


def upgrade() -> None:
    for table, name, _column, _parent, _parent_column in FOREIGN_KEYS:
        op.drop_constraint(name, table, type_="foreignkey")


def downgrade() -> None:
    for table, name, column, parent, parent_column in FOREIGN_KEYS:
        op.create_foreign_key(name, table, parent, [column], [parent_column], ondelete="CASCADE")
