"""The reconcile queue's one statement: marking invoices dirty (contract 1 in
docs/ARCHITECTURE.md).

Every statement that marks an invoice dirty holds a lock on the invoice row first (ingest's
store statement FOR KEY SHARE, the mirror and a person's edit by updating the row). That lock
waits for a worker holding the invoice (FOR UPDATE), keeps any worker from claiming it until
the marking transaction commits (the claim skips locked invoices), and FOR KEY SHARE does not
block other ingest transactions. The mark itself is an insert that does nothing when the
invoice is queued already: the oldest mark keeps its place, and the invoice row is never
rewritten to say it is dirty. A worker cannot remove a queued row under the marking
transaction: it deletes only rows of invoices it has claimed, and it cannot claim one while
the row is locked. When anything was newly queued, the caller notifies
`service.contracts.DIRTY_CHANNEL`.
"""

from __future__ import annotations


def mark_dirty(
    *,
    from_: str,
    invoice_number: str = "invoice_number",
    where: str | None = None,
    order_by: str | None = None,
    returning: str | None = None,
) -> str:
    """`INSERT INTO dirty_invoices ...`: every `invoice_number` (an SQL expression over
    `from_`) queued for reconciliation, unless queued already. Put `order_by` the invoice
    number when several rows may be marked, so concurrent markers insert in one order."""
    parts = [
        "INSERT INTO dirty_invoices (invoice_number)",
        f"SELECT {invoice_number} FROM {from_}",
        f"WHERE {where}" if where else "",
        f"ORDER BY {order_by}" if order_by else "",
        "ON CONFLICT (invoice_number) DO NOTHING",
        f"RETURNING {returning}" if returning else "",
    ]
    return "\n    ".join(part for part in parts if part)
