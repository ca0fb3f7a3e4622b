"""The webhook's wire format (docs/API.md, "The webhook"): what the Sage exporter sends."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_core import core_schema as cs

from service.ledger.vocabulary import PostingType

MAX_POSTINGS = 5000
# Sage's numeric(14,2) ceiling: anything larger cannot be a real amount and would overflow.
MAX_AMOUNT = Decimal("999999999999.99")
# "At most 2 decimal places" as multiple_of: pydantic-core checks decimal_places through
# Decimal.as_tuple(), a Python namedtuple per amount, a fifth of the validation time.
CENT = Decimal("0.01")
# An amount as text: ASCII digits, an optional sign and fraction, nothing else. Python's
# Decimal() alone would also read "1_000", " 100.00" and digits of other scripts. More than two
# decimals pass here so that the error says what is wrong with them (multiple_of).
AMOUNT_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"
AMOUNT_SHAPE = (
    'must be a JSON number or a string of ASCII digits with up to 2 decimals, like "12.30"'
)
# The usual amount text, right by its text alone: at most 12 integer digits (leading zeros
# aside) and 2 decimals is a whole number of cents within MAX_AMOUNT. It skips pydantic-core's
# decimal checks (a division and a remainder per amount: a third of a batch's validation);
# anything else takes the checked path, which accepts it or words the error.
CENTS = r"^(?:0*[1-9][0-9]{0,11}|0+)(?:\.[0-9]{1,2})?$"
NONZERO_CENTS = r"^(?:0*[1-9][0-9]{0,11}(?:\.[0-9]{1,2})?|0+\.(?:0[1-9]|[1-9][0-9]?))$"
SIGNED_CENTS = r"^-?(?:0*[1-9][0-9]{0,11}|0+)(?:\.[0-9]{1,2})?$"
# How the two paths of an amount in JSON are labelled in pydantic's error locations; the
# errors of a refused amount are its checked path's (`without_plain_path`).
PLAIN_PATH = "amount:plain"
CHECKED_PATH = "amount:checked"


class AmountsRead:
    """The validation context of a webhook body: whether any amount came as a JSON number.

    Only those reach pydantic-core as binary floats, so only then must the raw body be read
    again for their exactness (`service.ingest.service.inexact_numbers`); a body of string
    amounts, what the exporter sends, skips that second read.
    """

    __slots__ = ("as_numbers",)

    def __init__(self) -> None:
        self.as_numbers = False


def _from_float(value: float, info: ValidationInfo) -> Decimal:
    if isinstance(info.context, AmountsRead):
        info.context.as_numbers = True
    # repr() is the shortest text that reads back as the same float: what the sender wrote
    # whenever it had at most 15 digits, which every amount below MAX_AMOUNT has.
    return Decimal(repr(value))


@dataclass(frozen=True)
class _Amount:
    """A Decimal read exactly from a JSON string or number, checked in pydantic-core.

    JSON numbers reach pydantic-core as binary floats; their exactness is checked on the raw
    body (`service.ingest.service.inexact_numbers`), which also accepts only 2 decimals.
    """

    # CENTS, NONZERO_CENTS or SIGNED_CENTS: text that needs no check within these bounds.
    plain: str
    ge: Decimal | None = None
    gt: Decimal | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        plain = cs.chain_schema(
            [
                cs.str_schema(pattern=self.plain, strict=True),
                cs.no_info_plain_validator_function(Decimal),
            ]
        )
        from_text = cs.chain_schema(
            [
                cs.str_schema(pattern=AMOUNT_TEXT, strict=True),
                cs.no_info_plain_validator_function(Decimal),
            ]
        )
        from_number = cs.chain_schema(
            [
                cs.float_schema(strict=True, allow_inf_nan=False),
                cs.with_info_plain_validator_function(_from_float),
            ]
        )
        shape = cs.union_schema(
            [from_text, from_number],
            custom_error_type="amount_type",
            custom_error_message=AMOUNT_SHAPE,
        )
        checked = cs.decimal_schema(
            ge=self.ge, gt=self.gt, le=MAX_AMOUNT, multiple_of=CENT, allow_inf_nan=False
        )
        return cs.json_or_python_schema(
            json_schema=cs.union_schema(
                [(plain, PLAIN_PATH), (cs.chain_schema([shape, checked]), CHECKED_PATH)],
                mode="left_to_right",
            ),
            # Built in Python (tests, tools): already typed, no JSON to be exact about.
            python_schema=cs.chain_schema([cs.decimal_schema(strict=False), checked]),
        )

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> Any:
        number: dict[str, Any] = {
            "type": "number",
            "maximum": float(MAX_AMOUNT),
            "multipleOf": 0.01,
        }
        if self.ge is not None:
            number["minimum"] = float(self.ge)
        if self.gt is not None:
            number["exclusiveMinimum"] = float(self.gt)
        text = {"type": "string", "pattern": AMOUNT_TEXT}
        return {"anyOf": [number, text]}


def without_plain_path(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """pydantic's errors of a JSON body as if each amount had one path: a refused amount's
    are its checked path's, located at the field."""
    return [
        {**error, "loc": tuple(part for part in error["loc"] if part != CHECKED_PATH)}
        for error in errors
        if PLAIN_PATH not in error["loc"]
    ]


def amount_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` that hold an amount (Money, PositiveMoney, SignedMoney, optional or
    not): what the raw-body exactness check reads, so a new amount field is never missed."""

    def holds_amount(annotation: Any, metadata: list[Any]) -> bool:
        if any(isinstance(m, _Amount) for m in metadata):
            return True
        return any(
            holds_amount(arg, list(getattr(arg, "__metadata__", ())))
            for arg in get_args(annotation)
        )

    return tuple(
        name
        for name, field in model.model_fields.items()
        if holds_amount(field.annotation, field.metadata)
    )


Money = Annotated[Decimal, _Amount(CENTS, ge=Decimal(0))]
PositiveMoney = Annotated[Decimal, _Amount(NONZERO_CENTS, gt=Decimal(0))]
SignedMoney = Annotated[Decimal, _Amount(SIGNED_CENTS, ge=-MAX_AMOUNT)]
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
# cost a third of the validation time of a batch); pydantic-core refuses lone surrogates itself.
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
