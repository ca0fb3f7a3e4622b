"""A small plain-Python model of the reconciliation rules, written from docs/FINANCE.md
("How the figures are worked out") and docs/CURRENCY.md, independent of the SQL engine.

The property test feeds both the same postings and compares every figure: this is our guard
for money. Keep it naive and obviously right; speed does not matter here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from service.ingest.schemas import PostingIn
from service.ledger.classify import REVALUATION_DETAILS, REVALUATION_REFERENCE
from service.ledger.settings import WriteOffMode
from service.ledger.vocabulary import SAGELINK_FALLBACK
from service.settings import Settings

ZERO = Decimal("0.00")
WRITE_OFF_STATES = {"written_off", "paid_written_off"}


def nominal_in_ranges(nominal_code: str, ranges: list[tuple[str, str]]) -> bool:
    # ASCII digits and spaces only, exactly like the SQL side (str.isdigit() and str.strip()
    # would accept other scripts' digits and Unicode spaces that PostgreSQL does not).
    code = nominal_code.strip(" ")
    if not re.fullmatch(r"[0-9]{1,9}", code):
        return False
    value = int(code)
    return any(int(low) <= value <= int(high) for low, high in ranges)


def is_write_off(nominal_code: str, details: str, reference: str, settings: Settings) -> bool:
    if nominal_in_ranges(nominal_code, settings.nominal_ranges):
        return True
    pattern = re.compile(settings.write_off_pattern, re.IGNORECASE)
    return bool(pattern.search(details) or pattern.search(reference))


def is_revaluation(nominal_code: str, details: str, reference: str, settings: Settings) -> bool:
    """Sage's automatic exchange revaluation: the variance nominal, REVAL, or its details."""
    if nominal_in_ranges(nominal_code, settings.exchange_variance_ranges):
        return True
    if reference.strip(" ").upper() == REVALUATION_REFERENCE:
        return True
    return bool(re.search(REVALUATION_DETAILS, details, re.IGNORECASE))


@dataclass(frozen=True)
class BaseFigures:
    """What reconciliation writes in the base currency (beside the invoice-currency figures)."""

    outstanding_base: Decimal
    computed_outstanding_base: Decimal | None
    paid_base: Decimal
    discounted_base: Decimal
    written_off_base: Decimal
    credited_base: Decimal
    exchange_adjustment: Decimal


BASE_FIGURES = tuple(BaseFigures.__dataclass_fields__)


@dataclass(frozen=True)
class Before(BaseFigures):
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
    currency: str | None
    gross_base: Decimal
    sage_outstanding_base: Decimal | None


@dataclass(frozen=True)
class Expected(BaseFigures):
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


def figures(
    tran_number: int, postings: list[PostingIn], settings: Settings
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """paid / discounted / written_off / credited from the live allocations to one SI: in the
    invoice's currency (each allocation's foreign amount, or its amount when the settling
    posting is in the base currency), and in the base currency with the exchange adjustment
    (Sage's revaluations, which count in the base currency only)."""
    names = ("paid", "discounted", "written_off", "credited")
    fx = dict.fromkeys(names, ZERO)
    base = dict.fromkeys((*names, "exchange_adjustment"), ZERO)
    for posting in postings:
        if posting.deleted:
            continue
        for allocation in posting.allocations:
            if allocation.deleted or allocation.invoice_tran_number != tran_number:
                continue
            figure, sign = _kind(posting, settings)
            if figure is None:
                continue
            base[figure] += sign * allocation.amount
            if figure != "exchange_adjustment":
                foreign = allocation.foreign_amount
                fx[figure] += sign * (allocation.amount if foreign is None else foreign)
    return fx, base


def _kind(posting: PostingIn, settings: Settings) -> tuple[str | None, int]:
    """Which figure an allocation from this posting counts in, and with which sign."""
    texts = (posting.nominal_code, posting.details, posting.reference, settings)
    if posting.type in ("SR", "SA"):
        return "paid", 1
    if posting.type == "SP":
        return "paid", -1
    if posting.type == "SD":
        return "discounted", 1
    if posting.type == "SC":
        if is_revaluation(*texts):
            return "exchange_adjustment", 1
        return ("written_off" if is_write_off(*texts) else "credited"), 1
    return None, 0


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
    f, b = figures(before.sage_tran_number, postings, settings)
    computed = before.gross - f["paid"] - f["discounted"] - f["written_off"] - f["credited"]
    balance = before.sage_outstanding if before.sage_outstanding is not None else computed
    computed_base = before.gross_base - sum(b.values(), ZERO)
    balance_base = (
        before.sage_outstanding_base if before.sage_outstanding_base is not None else computed_base
    )
    mismatch = (before.sage_outstanding is not None and before.sage_outstanding != computed) or (
        before.sage_outstanding_base is not None and before.sage_outstanding_base != computed_base
    )
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
                "computed_outstanding_base": computed_base,
                "mismatch": mismatch,
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
        mismatch=mismatch,
        outstanding_base=balance_base,
        computed_outstanding_base=computed_base,
        paid_base=b["paid"],
        discounted_base=b["discounted"],
        written_off_base=b["written_off"],
        credited_base=b["credited"],
        exchange_adjustment=b["exchange_adjustment"],
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
        **{name: getattr(before, name) for name in BASE_FIGURES},
        has_conflict=has_conflict,
        has_warning=has_warning,
        status_changed=False,
        sent_to_crm=False,
    )
