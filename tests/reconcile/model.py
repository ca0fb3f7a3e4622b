"""A small plain-Python model of the reconciliation rules, written from DESIGN.md
("Reconciliation rules") and docs/readme/reconcile.md, independent of the SQL engine.

The property test feeds both the same postings and compares every figure: this is our guard
for money. Keep it naive and obviously right; speed does not matter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from service.ingest.schemas import PostingIn
from service.rules import is_write_off
from service.settings import SAGELINK_FALLBACK, Settings, WriteOffMode

ZERO = Decimal("0.00")
WRITE_OFF_STATES = {"written_off", "paid_written_off"}


@dataclass(frozen=True)
class Before:
    """The invoice row as ingestion mirrored it and the last reconcile (or a person) left it."""

    invoice_number: str
    sage_tran_number: int
    gross: Decimal
    sage_outstanding: Decimal | None
    deleted: bool
    status: str
    derived_state: str | None
    outstanding: Decimal
    paid: Decimal
    discounted: Decimal
    written_off: Decimal
    credited: Decimal
    computed_outstanding: Decimal | None
    mismatch: bool


@dataclass(frozen=True)
class Expected:
    status: str
    outstanding: Decimal
    paid: Decimal
    discounted: Decimal
    written_off: Decimal
    credited: Decimal
    derived_state: str | None
    computed_outstanding: Decimal | None
    mismatch: bool
    has_conflict: bool
    has_warning: bool
    status_changed: bool
    sent_to_crm: bool  # an outbox row


def figures(tran_number: int, postings: list[PostingIn], settings: Settings) -> dict[str, Decimal]:
    """paid / discounted / written_off / credited from the live allocations to one SI."""
    out = {"paid": ZERO, "discounted": ZERO, "written_off": ZERO, "credited": ZERO}
    for posting in postings:
        if posting.deleted:
            continue
        for allocation in posting.allocations:
            if allocation.deleted or allocation.invoice_tran_number != tran_number:
                continue
            amount = allocation.amount
            if posting.type in ("SR", "SA"):
                out["paid"] += amount
            elif posting.type == "SP":
                out["paid"] -= amount
            elif posting.type == "SD":
                out["discounted"] += amount
            elif posting.type == "SC":
                wo = is_write_off(
                    posting.nominal_code, posting.details, posting.reference, settings
                )
                out["written_off" if wo else "credited"] += amount
    return out


def state_of(balance: Decimal, gross: Decimal, f: dict[str, Decimal]) -> str:
    if balance <= 0:
        if f["written_off"] <= 0:
            return "paid"
        if f["paid"] > 0 or f["discounted"] > 0 or f["credited"] > 0:
            return "paid_written_off"
        return "written_off"
    if balance < gross:
        return "part_paid"
    return "unpaid"


def expected(
    before: Before, postings: list[PostingIn], settings: Settings, picklist: set[str]
) -> Expected:
    labels = settings.status_labels
    f = figures(before.sage_tran_number, postings, settings)
    computed = before.gross - f["paid"] - f["discounted"] - f["written_off"] - f["credited"]
    balance = before.sage_outstanding if before.sage_outstanding is not None else computed
    true_state = state_of(balance, before.gross, f)
    state = true_state
    if settings.write_off_mode is WriteOffMode.sagelink and state in WRITE_OFF_STATES:
        state = "paid"
    protected = before.status in settings.protected_statuses

    if before.deleted:
        return _unchanged(before, has_warning=True, has_conflict=False)
    if protected:
        conflict = before.status in labels.values() and (
            labels[true_state] != before.status or (balance < 0 and true_state in WRITE_OFF_STATES)
        )
        frozen = _unchanged(before, has_warning=False, has_conflict=conflict)
        return Expected(
            **{
                **frozen.__dict__,
                "derived_state": state,
                "computed_outstanding": computed,
                "mismatch": before.sage_outstanding is not None
                and before.sage_outstanding != computed,
            }
        )

    want, fallback = labels[state], labels[SAGELINK_FALLBACK[state]]
    if want in picklist:
        status, warning = want, False
    elif fallback in picklist:
        status, warning = fallback, True
    else:
        status, warning = before.status, True
    status_changed = status != before.status
    return Expected(
        status=status,
        outstanding=balance,
        paid=f["paid"],
        discounted=f["discounted"],
        written_off=f["written_off"],
        credited=f["credited"],
        derived_state=state,
        computed_outstanding=computed,
        mismatch=before.sage_outstanding is not None and before.sage_outstanding != computed,
        has_conflict=False,
        has_warning=warning,
        status_changed=status_changed,
        sent_to_crm=status_changed or balance != before.outstanding or before.derived_state is None,
    )


def _unchanged(before: Before, *, has_warning: bool, has_conflict: bool) -> Expected:
    return Expected(
        status=before.status,
        outstanding=before.outstanding,
        paid=before.paid,
        discounted=before.discounted,
        written_off=before.written_off,
        credited=before.credited,
        derived_state=before.derived_state,
        computed_outstanding=before.computed_outstanding,
        mismatch=before.mismatch,
        has_conflict=has_conflict,
        has_warning=has_warning,
        status_changed=False,
        sent_to_crm=False,
    )
