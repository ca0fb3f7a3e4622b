"""The ledger's words, each defined once: Sage's posting types and what each does to an
invoice, the kinds an allocation counts as, the states an invoice is derived into with their
default labels, and who writes a status change.

The CHECK constraints of the table models, the `Literal`s of the schemas (and so the enums of
openapi.yaml) and the SQL CASE fragments are produced from these. A text that cannot be
produced, such as a released migration's CHECK, is held against them by
tests/ledger/test_vocabulary.py, and so is the exporter's own list of types (a separate
distribution, it cannot import the service). Adding a posting type is this file plus a
migration that widens `ck_postings_type`.
"""

from __future__ import annotations

from typing import Literal, get_args

# --- Sage's customer transaction types (a posting's `type`) ------------------------------------

# In the order of the released CHECK constraint, so a model built from it matches the database.
PostingType = Literal["SI", "SC", "SR", "SA", "SD", "SP"]
POSTING_TYPES: tuple[PostingType, ...] = get_args(PostingType)
# The sales invoice: mirrored as an invoice (unless classify.py says it is not one), and
# allocated to, never allocating.
INVOICE: PostingType = "SI"
# A sales credit note: a credit, a write-off or one of Sage's exchange revaluations, told
# apart by classify.py.
CREDIT: PostingType = "SC"

# --- what an allocation counts as on the invoice it settles --------------------------------

AllocationKind = Literal[
    "paid", "refund", "discounted", "exchange_adjustment", "written_off", "credited", "other"
]
ALLOCATION_KINDS: tuple[AllocationKind, ...] = get_args(AllocationKind)
# Settled by type alone: receipts and payments on account pay, a refund takes a payment back,
# a discount discounts. A credit (SC) is classified instead, in this order (classify.py):
# an exchange revaluation moves only base-currency money, a write-off, else a credit. An
# allocation from any other type (an SI) counts for nothing: `other`.
COUNTS_AS: dict[PostingType, AllocationKind] = {
    "SR": "paid",
    "SA": "paid",
    "SP": "refund",
    "SD": "discounted",
}
CREDIT_KINDS: tuple[AllocationKind, ...] = ("exchange_adjustment", "written_off", "credited")
UNCOUNTED: AllocationKind = "other"

# --- what reconciliation derives an invoice's state to be -----------------------------------

DerivedState = Literal["unpaid", "part_paid", "paid", "written_off", "paid_written_off"]
DERIVED_STATES: tuple[DerivedState, ...] = get_args(DerivedState)
DEFAULT_STATUS_LABELS: dict[str, str] = {
    "unpaid": "Unpaid",
    "part_paid": "Part Paid",
    "paid": "Paid",
    "written_off": "Written Off",
    "paid_written_off": "Paid/Written Off",
}
# What SageLink itself would write: it knows nothing of write-offs. The state shown in the
# `sagelink` write-off mode, and the label written when a state's own is not in the picklist.
SAGELINK_FALLBACK: dict[str, str] = {
    "unpaid": "unpaid",
    "part_paid": "part_paid",
    "paid": "paid",
    "written_off": "paid",
    "paid_written_off": "paid",
}

# --- who changed a status (status_history.source) and what the CRM hears of (outbox.source) ---

# Reconciliation, a person's edit, the Global Update, or the CRM read-back adopting what
# someone set in OpenCRM.
HistorySource = Literal["sync", "manual", "bulk", "crm"]
HISTORY_SOURCES: tuple[HistorySource, ...] = get_args(HistorySource)
# Everything but what came from the CRM itself.
OutboxSource = Literal["sync", "manual", "bulk"]
OUTBOX_SOURCES: tuple[OutboxSource, ...] = get_args(OutboxSource)
# A person's decisions (an edit, a Global Update): until the CRM has them, what it shows is
# not adopted over them.
PERSON_SOURCES: tuple[OutboxSource, ...] = ("manual", "bulk")


# --- in SQL ---------------------------------------------------------------------------------


def sql_literal(word: str) -> str:
    """A word of this module as an SQL string literal (the words hold no quote)."""
    if "'" in word or "\\" in word:
        raise ValueError(f"not a vocabulary word: {word!r}")
    return f"'{word}'"


def sql_in(column: str, words: tuple[str, ...]) -> str:
    """`column IN ('a','b')`: a CHECK constraint's condition, written as the migrations wrote it."""
    return f"{column} IN ({','.join(sql_literal(word) for word in words)})"
