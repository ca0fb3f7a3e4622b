"""The reconciliation reports: invoices a person should look at (divergent, conflicts,
mismatches, CRM drift), paged by invoice number, and how many each lists."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service import contracts
from service.ledger.settings import LedgerSettings
from service.reconcile.compute import label_params

_REPORT_COLUMNS = """
    i.invoice_number, i.account_ref, i.status, i.derived_state,
    coalesce(i.currency, CAST(:base_currency AS text)) AS currency, i.gross, i.outstanding,
    i.computed_outstanding, i.sage_outstanding, i.paid, i.discounted, i.written_off,
    i.credited, i.gross_base, i.outstanding_base, i.computed_outstanding_base,
    i.sage_outstanding_base, i.paid_base, i.discounted_base, i.written_off_base,
    i.credited_base, i.exchange_adjustment, i.conflict, i.mismatch, i.warning,
    i.duplicate_of, i.deleted,
    i.status = ANY(CAST(:protected AS text[])) AS protected,
    m.label AS expected_status,
    c.status AS crm_status, c.outstanding AS crm_outstanding, c.seen_at AS crm_seen_at
"""

_EXPECTED = """
    LEFT JOIN unnest(CAST(:states AS text[]), CAST(:labels AS text[])) AS m(state, label)
        ON m.state = i.derived_state
    LEFT JOIN crm_invoices AS c ON c.invoice_number = i.invoice_number
"""

# The CRM shows another status (case aside: contracts.status_key) or balance than ours, and no
# change of ours is on its way to it: someone edited the invoice in OpenCRM (or a delivery
# ended as a dead letter).
CRM_DRIFT = f"""
    ({contracts.status_key_sql("c.status")} IS DISTINCT FROM {contracts.status_key_sql("i.status")}
     OR (c.outstanding IS NOT NULL AND c.outstanding <> i.outstanding))
    AND c.invoice_number IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM outbox AS o
                    WHERE o.invoice_number = i.invoice_number AND o.state = 'pending')
"""

# Why an invoice is divergent: anything a person should look at that is neither a conflict
# (protected and disagreeing) nor a Sage mismatch.
_DIVERGENT_REASONS = """
    array_remove(ARRAY[
        CASE WHEN NOT i.status = ANY(CAST(:protected AS text[])) AND m.label IS NOT NULL
                  AND i.status <> m.label THEN 'status_differs' END,
        CASE WHEN i.outstanding < 0 THEN 'overpaid' END,
        CASE WHEN i.duplicate_of IS NOT NULL THEN 'duplicate' END,
        CASE WHEN i.deleted THEN 'deleted' END,
        CASE WHEN i.warning IS NOT NULL THEN 'warning' END
    ], NULL)
"""

_REPORT_FILTERS = {
    "divergent": f"cardinality({_DIVERGENT_REASONS}) > 0",
    "conflicts": "i.conflict IS NOT NULL AND i.status = ANY(CAST(:protected AS text[]))",
    "mismatches": "i.mismatch",
    "crm_drift": CRM_DRIFT,
}


async def report_count(
    conn: AsyncConnection, kind: str, ledger: LedgerSettings, *, cap: int
) -> int:
    """How many invoices the report lists, counting no further than `cap`."""
    labels = label_params(ledger)
    sql = f"""
        SELECT count(*) FROM (
            SELECT 1 FROM invoices AS i {_EXPECTED} WHERE {_REPORT_FILTERS[kind]} LIMIT :cap
        ) AS listed
    """
    count = await conn.scalar(
        sa.text(sql),
        {
            "states": labels["states"],
            "labels": labels["labels"],
            "protected": labels["protected"],
            "cap": cap,
        },
    )
    return int(count or 0)


async def report(
    conn: AsyncConnection, kind: str, ledger: LedgerSettings, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    labels = label_params(ledger)
    keyset = "" if after is None else "AND i.invoice_number > :after"
    sql = f"""
        SELECT {_REPORT_COLUMNS}, {_DIVERGENT_REASONS} AS divergent_reasons,
               {CRM_DRIFT} AS crm_drift
        FROM invoices AS i {_EXPECTED}
        WHERE {_REPORT_FILTERS[kind]} {keyset}
        ORDER BY i.invoice_number
        LIMIT :limit
    """
    rows = await conn.execute(
        sa.text(sql),
        {
            "states": labels["states"],
            "labels": labels["labels"],
            "protected": labels["protected"],
            "base_currency": ledger.base_currency,
            "after": after,
            "limit": limit,
        },
    )
    return [dict(r._mapping) for r in rows]
