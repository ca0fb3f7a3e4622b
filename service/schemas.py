"""What every feature's responses share: money on the wire, and models read from rows."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer


def money(value: Decimal) -> str:
    """An amount as it leaves the service, to a client or to OpenCRM: a string with two
    decimals ("120.00"), never a float."""
    return f"{value:.2f}"


# A Decimal inside the service, money() on the wire (JSON schema: a string).
Money = Annotated[Decimal, PlainSerializer(money, return_type=str)]


class RowModel(BaseModel):
    """A response read from a database row by attribute name: `Model.model_validate(row)`."""

    model_config = ConfigDict(from_attributes=True)
