"""Bad debts: written-off invoices, and which qualify for UK VAT bad debt relief.

HMRC VAT Notice 700/18 ("Relief from VAT on bad debts"), section 2: relief may be claimed when
the VAT was accounted for, the debt has been written off in the VAT account, and it remains
unpaid more than six months after the later of the date of supply and the date payment was
due. Sage's audit trail as sent to us has no due date, so the due date is the invoice date
plus LEDGERLINK_BAD_DEBT_PAYMENT_TERM_DAYS, and "written off" means a write-off credit
allocated to the invoice in Sage (service/ledger/classify.py). The relief is the VAT fraction of the
amount written off (written_off x VAT / gross); the list is evidence for the VAT return,
not the claim itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from service.baddebts import repository as repo
from service.baddebts.schemas import BadDebt, BadDebtPage, BadDebtTotals
from service.cursor import decode_after, encode_after
from service.ledger.settings import LedgerSettings

CSV_FIELDS = tuple(BadDebt.model_fields)


def today() -> date:
    return datetime.now(UTC).date()


async def bad_debts(
    conn: AsyncConnection,
    ledger: LedgerSettings,
    *,
    as_of: date | None,
    account_ref: str | None,
    qualifying: bool | None,
    limit: int,
    cursor: str | None,
) -> BadDebtPage:
    day = as_of or today()
    after = decode_after(cursor, param="cursor")
    rows = await repo.page(
        conn,
        ledger,
        as_of=day,
        account_ref=account_ref,
        qualifying=qualifying,
        after=after,
        limit=limit + 1,
    )
    items = [BadDebt.model_validate(row, from_attributes=True) for row in rows[:limit]]
    total = await repo.totals(
        conn, ledger, as_of=day, account_ref=account_ref, qualifying=qualifying
    )
    return BadDebtPage(
        as_of=day,
        payment_term_days=ledger.bad_debt_payment_term_days,
        totals=BadDebtTotals.model_validate(total, from_attributes=True),
        items=items,
        next_cursor=encode_after(items[-1].invoice_number) if len(rows) > limit else None,
    )


def csv_rows(items: list[BadDebt]) -> Iterator[list[object]]:
    for item in items:
        yield [getattr(item, name) for name in CSV_FIELDS]
