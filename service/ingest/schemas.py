"""The webhook's wire format (DESIGN.md "Ingest"): what the Sage exporter sends."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
)

PostingType = Literal["SI", "SC", "SR", "SA", "SD", "SP"]
MAX_POSTINGS = 5000
# Sage's numeric(14,2) ceiling: anything larger cannot be a real amount and would overflow.
MAX_AMOUNT = Decimal("999999999999.99")
# "At most 2 decimal places" as multiple_of: pydantic-core checks decimal_places through
# Decimal.as_tuple(), a Python namedtuple per amount, a fifth of the validation time.
CENT = Decimal("0.01")

Money = Annotated[
    Decimal,
    Field(ge=0, le=MAX_AMOUNT, multiple_of=CENT, allow_inf_nan=False),
]
PositiveMoney = Annotated[
    Decimal,
    Field(gt=0, le=MAX_AMOUNT, multiple_of=CENT, allow_inf_nan=False),
]
SignedMoney = Annotated[
    Decimal,
    Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, multiple_of=CENT, allow_inf_nan=False),
]
TranNumber = Annotated[int, Field(gt=0, le=2**63 - 1)]

# Sage's column widths. Control characters are refused by a pattern, checked in pydantic-core
# (a Python validator for them cost a third of the validation time of a batch).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
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
    date: dt.date | None = None
    deleted: StrictBool = False


class PostingIn(BaseModel):
    """One Sage audit-trail transaction; sent again with the same tran_number, it replaces the
    earlier version and its allocations as a set."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    tran_number: TranNumber
    type: PostingType
    account_ref: AccountRef
    reference: Reference = ""
    date: dt.date
    details: Details = ""
    nominal_code: NominalCode = ""
    net_amount: Money
    tax_amount: Money
    gross_amount: Money
    outstanding: SignedMoney | None = None
    deleted: StrictBool = False
    allocations: Annotated[list[AllocationIn], Field(max_length=MAX_POSTINGS)] = []


class PostingBatch(BaseModel):
    """A delivery: stored whole or not at all.

    The webhook validates it in strict JSON mode: integers are JSON integers, dates are
    "YYYY-MM-DD" strings (a lax date would read a number, a spreadsheet serial say, as a Unix
    timestamp), amounts are JSON numbers or strings.
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
