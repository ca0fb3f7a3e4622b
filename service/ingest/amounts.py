"""The webhook's amounts: a Decimal read exactly from a JSON string or number, at most
MAX_AMOUNT and a whole number of cents.

Two paths in pydantic-core: text that is plainly a whole number of cents within the bounds
(what the exporter sends) is taken by its pattern alone; anything else takes the checked path,
which accepts it or words the error. `service.ingest.parsing` reads the raw body again for
amounts sent as JSON numbers, which reach pydantic-core as binary floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, get_args

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationInfo
from pydantic_core import ErrorDetails
from pydantic_core import core_schema as cs

# Sage's numeric(14,2) ceiling: anything larger cannot be a real amount and would overflow.
MAX_AMOUNT = Decimal("999999999999.99")
# "At most 2 decimal places" as multiple_of: pydantic-core checks decimal_places through
# Decimal.as_tuple(), a Python namedtuple per amount (docs/BENCHMARKS.md has the cost).
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
# decimal checks (a division and a remainder per amount, the larger part of a batch's
# validation; docs/BENCHMARKS.md); anything else takes the checked path, which accepts it or
# words the error.
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
    again for their exactness (`service.ingest.parsing.inexact_numbers`); a body of string
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
    body (`service.ingest.parsing.inexact_numbers`), which also accepts only 2 decimals.
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
