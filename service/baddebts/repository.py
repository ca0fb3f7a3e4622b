"""All SQL of the bad-debt list."""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.classify import credit_kind_sql
from service.ledger.settings import LedgerSettings
from service.ledger.vocabulary import sql_literal


def _base(ledger: LedgerSettings) -> tuple[str, dict[str, Any]]:
    """Written-off invoices with their dates and VAT; `q` is one row per invoice."""
    # Counted as the reconcile counts it (a revaluation is never a write-off).
    credit_kind, params = credit_kind_sql("p", ledger)
    sql = f"""
        SELECT i.invoice_number, i.account_ref, i.status, i.invoice_date, i.gross,
               s.net_amount AS net, s.tax_amount AS vat, i.written_off,
               wo.written_off_on, d.due_date,
               CAST(:as_of AS date) - i.invoice_date AS days_since_invoice,
               CAST(:as_of AS date) - d.due_date AS days_overdue,
               CAST(d.due_date + interval '6 months' AS date) AS relief_from,
               CAST(d.due_date + interval '6 months' AS date) <= CAST(:as_of AS date)
                   AS qualifies,
               round(i.written_off * s.tax_amount / nullif(s.gross_amount, 0), 2) AS vat_relief
          FROM invoices AS i
          CROSS JOIN LATERAL (SELECT i.invoice_date + CAST(:term AS integer) AS due_date) AS d
          LEFT JOIN postings AS s ON s.tran_number = i.sage_tran_number
          LEFT JOIN LATERAL (
              SELECT max(p.date) AS written_off_on
                FROM allocations AS a
                JOIN postings AS p ON p.tran_number = a.posting_tran_number AND NOT p.deleted
               WHERE a.invoice_tran_number = i.sage_tran_number AND NOT a.deleted
                 AND p.type = 'SC' AND {credit_kind} = {sql_literal("written_off")}
          ) AS wo ON true
         WHERE i.written_off > 0 AND NOT i.deleted
    """
    return sql, params


def _params(ledger: LedgerSettings, as_of: date, account_ref: str | None) -> dict[str, Any]:
    return {
        "as_of": as_of,
        "term": ledger.bad_debt_payment_term_days,
        "account": account_ref,
    }


def _narrow(account_ref: str | None, qualifying: bool | None) -> str:
    where = " WHERE true"
    if account_ref is not None:
        where += " AND q.account_ref = CAST(:account AS text)"
    if qualifying is not None:
        where += " AND q.qualifies" if qualifying else " AND NOT q.qualifies"
    return where


async def page(
    conn: AsyncConnection,
    ledger: LedgerSettings,
    *,
    as_of: date,
    account_ref: str | None,
    qualifying: bool | None,
    after: str | None,
    limit: int,
) -> list[Row[Any]]:
    base, params = _base(ledger)
    keyset = "" if after is None else " AND q.invoice_number > CAST(:after AS text)"
    sql = (
        f"SELECT q.* FROM ({base}) AS q{_narrow(account_ref, qualifying)}{keyset} "
        "ORDER BY q.invoice_number LIMIT :limit"
    )
    params.update(_params(ledger, as_of, account_ref), after=after, limit=limit)
    return list(await conn.execute(sa.text(sql), params))


async def totals(
    conn: AsyncConnection,
    ledger: LedgerSettings,
    *,
    as_of: date,
    account_ref: str | None,
    qualifying: bool | None,
) -> Row[Any]:
    base, params = _base(ledger)
    sql = f"""
        SELECT count(*) AS invoices,
               coalesce(sum(q.written_off), 0) AS written_off,
               count(*) FILTER (WHERE q.qualifies) AS qualifying_invoices,
               coalesce(sum(q.written_off) FILTER (WHERE q.qualifies), 0)
                   AS qualifying_written_off,
               coalesce(sum(q.vat_relief) FILTER (WHERE q.qualifies), 0)
                   AS qualifying_vat_relief
          FROM ({base}) AS q{_narrow(account_ref, qualifying)}
    """
    params.update(_params(ledger, as_of, account_ref))
    return (await conn.execute(sa.text(sql), params)).one()
