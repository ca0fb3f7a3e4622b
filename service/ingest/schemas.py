"""The webhook's wire format (docs/API.md, "The webhook"): what the Sage exporter sends."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.ingest.amounts import Money, PositiveMoney, SignedMoney
from service.ledger.vocabulary import PostingType

MAX_POSTINGS = 5000
TranNumber = Annotated[int, Field(gt=0, le=2**63 - 1)]
# A calendar date a Sage company can hold. The bounds keep out 0001-01-01 and 9999-12-31,
# which asyncpg sends to PostgreSQL as -infinity and infinity (date.min, date.max): stored,
# they would break every date difference later (a 500 on the bad-debt report).
FIRST_DATE = dt.date(1900, 1, 1)
LAST_DATE = dt.date(9998, 12, 31)
SageDate = Annotated[
    dt.date,
    Field(
        ge=FIRST_DATE,
        le=LAST_DATE,
        description=f"YYYY-MM-DD, from {FIRST_DATE.isoformat()} to {LAST_DATE.isoformat()}",
    ),
]
# ISO 4217, as Sage's CURRENCY table holds it (CODE).
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Sage's FOREIGN_RATE: currency units per one unit of the base currency. Stored as
# numeric(20,10); the bounds keep a rate from rounding to 0 or overflowing there.
ExchangeRate = Annotated[
    Decimal,
    Field(ge=Decimal("0.0000000001"), le=Decimal("9999999999"), allow_inf_nan=False),
]

# Sage's column widths. Control characters (C0, DEL, C1) and the Unicode line and paragraph
# separators are refused by a pattern, checked in pydantic-core (a Python validator for them
# ran once per text field of every posting); pydantic-core refuses lone surrogates itself.
# One rule with the exporter, which cleans these characters to spaces before it sends
# (ledgerlink_exporter.text; tests/exporter/test_text.py checks every code point): change both.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
AccountRef = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROL_CHARACTERS)
]
Reference = Annotated[str, StringConstraints(max_length=30, pattern=NO_CONTROL_CHARACTERS)]
Details = Annotated[str, StringConstraints(max_length=60, pattern=NO_CONTROL_CHARACTERS)]
NominalCode = Annotated[str, StringConstraints(max_length=8, pattern=NO_CONTROL_CHARACTERS)]
Source = Annotated[str, StringConstraints(max_length=100, pattern=NO_CONTROL_CHARACTERS)]


class AllocationIn(BaseModel):
    """What a settling posting (SR/SA/SC/SD/SP) allocates to one invoice transaction."""

    model_config = ConfigDict(extra="forbid")

    invoice_tran_number: TranNumber
    amount: PositiveMoney
    # AUDIT_USAGE.FOREIGN_AMOUNT: the same allocation in the currency of the posting. Zero
    # for Sage's revaluations, which move pounds only.
    foreign_amount: Money | None = None
    date: SageDate | None = None
    deleted: StrictBool = False


class PostingIn(BaseModel):
    """One Sage audit-trail transaction; sent again with the same tran_number, it replaces the
    earlier version and its allocations as a set."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    tran_number: TranNumber
    type: PostingType
    account_ref: AccountRef
    reference: Reference = ""
    date: SageDate
    details: Details = ""
    nominal_code: NominalCode = ""
    net_amount: Money
    tax_amount: Money
    gross_amount: Money
    outstanding: SignedMoney | None = None
    # Foreign Trader. Absent: the posting is in the base currency. Present: the amounts
    # above are in the base currency and these in `currency`: AUDIT_HEADER's CURRENCY (as
    # CURRENCY.CODE), FOREIGN_RATE and FOREIGN_* columns, per Zynk's published Sage 50 UK
    # schema (zynksoftware/Zynk-Workflow, _docs/Sage-50-UK-Connector/Schema/
    # Sage-50-UK-AUDIT_HEADER-Columns.md, ...-AUDIT_USAGE-... and ...-CURRENCY-...).
    currency: CurrencyCode | None = None
    exchange_rate: ExchangeRate | None = None
    foreign_net_amount: Money | None = None
    foreign_tax_amount: Money | None = None
    foreign_gross_amount: Money | None = None
    foreign_outstanding: SignedMoney | None = None
    deleted: StrictBool = False
    allocations: Annotated[list[AllocationIn], Field(max_length=MAX_POSTINGS)] = []

    @model_validator(mode="after")
    def _currency_complete(self) -> PostingIn:
        problem = currency_problem(self)
        if problem is not None:
            loc, message = problem
            raise PydanticCustomError(
                "currency", "{field}: " + message, {"field": loc_text(loc), "loc": loc}
            )
        return self


FOREIGN_FIELDS = (
    "exchange_rate",
    "foreign_net_amount",
    "foreign_tax_amount",
    "foreign_gross_amount",
    "foreign_outstanding",
)


FOREIGN_FIELDS_SET = frozenset(FOREIGN_FIELDS)
Loc = tuple[str | int, ...]


def currency_problem(posting: PostingIn) -> tuple[Loc, str] | None:
    """The first field that makes a posting's currency figures unreadable (its location
    within the posting), and why.

    Foreign figures mean nothing without their currency; a foreign posting needs its gross,
    and the foreign side of every figure the service computes with (Sage's outstanding, each
    allocation).
    """
    if posting.currency is None:
        # Run for every posting of every batch: today's senders take the quickest way out.
        if not FOREIGN_FIELDS_SET.isdisjoint(posting.model_fields_set):
            for name in FOREIGN_FIELDS:
                if getattr(posting, name) is not None:
                    return (name,), "given without currency; send the posting's currency too"
        for i, allocation in enumerate(posting.allocations):
            if allocation.foreign_amount is not None:
                return (
                    ("allocations", i, "foreign_amount"),
                    "given on a posting without currency; send the posting's currency too",
                )
        return None
    if posting.foreign_gross_amount is None:
        return ("foreign_gross_amount",), f"required with currency {posting.currency}"
    if posting.outstanding is not None and posting.foreign_outstanding is None:
        return (
            ("foreign_outstanding",),
            f"required with currency {posting.currency} when outstanding is given",
        )
    for i, allocation in enumerate(posting.allocations):
        if allocation.foreign_amount is None:
            return (
                ("allocations", i, "foreign_amount"),
                f"required with currency {posting.currency}",
            )
    return None


def loc_text(loc: Loc) -> str:
    """("postings", 3, "allocations", 0, "amount") -> "postings[3].allocations[0].amount"."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".")


class PostingBatch(BaseModel):
    """A delivery: stored whole or not at all.

    The webhook validates it in strict JSON mode: integers are JSON integers, dates are
    "YYYY-MM-DD" strings (a lax date would read a number, a spreadsheet serial say, as a Unix
    timestamp), amounts are JSON numbers or strings of ASCII digits, read exactly (a number is
    never rounded through a binary float): one that is not a whole number of cents is refused.
    """

    model_config = ConfigDict(extra="forbid")

    source: Source | None = None
    postings: Annotated[list[PostingIn], Field(min_length=1, max_length=MAX_POSTINGS)]


class IngestResult(BaseModel):
    """The answer to a delivery; the same webhook-id again gets it back verbatim (200)."""

    event_id: str
    postings_received: int
    postings_applied: int
    postings_unchanged: int
    invoices_affected: int
