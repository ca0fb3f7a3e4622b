"""A posting and its allocations as they go on the wire (docs/API.md, "The webhook")."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Allocation:
    invoice_tran_number: int
    amount: Decimal
    date: dt.date
    # In the settling posting's currency; None when that posting is in the base currency.
    foreign_amount: Decimal | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "invoice_tran_number": self.invoice_tran_number,
            "amount": money_text(self.amount),
            "date": self.date.isoformat(),
        }
        if self.foreign_amount is not None:
            wire["foreign_amount"] = money_text(self.foreign_amount)
        return wire


@dataclass(frozen=True)
class ForeignFigures:
    """A posting's currency and its amounts in it, beside the base amounts."""

    currency: str
    exchange_rate: Decimal | None
    net_amount: Decimal | None
    tax_amount: Decimal | None
    gross_amount: Decimal
    outstanding: Decimal | None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"currency": self.currency}
        if self.exchange_rate is not None:
            wire["exchange_rate"] = f"{self.exchange_rate.normalize():f}"
        for name in ("net_amount", "tax_amount", "gross_amount", "outstanding"):
            value = getattr(self, name)
            if value is not None:
                wire[f"foreign_{name}"] = money_text(value)
        return wire


@dataclass(frozen=True)
class Posting:
    tran_number: int
    type: str
    account_ref: str
    reference: str
    date: dt.date
    details: str
    nominal_code: str
    net_amount: Decimal
    tax_amount: Decimal
    gross_amount: Decimal
    outstanding: Decimal | None
    deleted: bool
    allocations: tuple[Allocation, ...] = ()
    # None: the base currency, and nothing about currencies goes on the wire.
    foreign: ForeignFigures | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "tran_number": self.tran_number,
            "type": self.type,
            "account_ref": self.account_ref,
            "reference": self.reference,
            "date": self.date.isoformat(),
            "details": self.details,
            "nominal_code": self.nominal_code,
            "net_amount": money_text(self.net_amount),
            "tax_amount": money_text(self.tax_amount),
            "gross_amount": money_text(self.gross_amount),
            "deleted": self.deleted,
            "allocations": [allocation.to_wire() for allocation in self.allocations],
        }
        if self.outstanding is not None:
            wire["outstanding"] = money_text(self.outstanding)
        if self.foreign is not None:
            wire.update(self.foreign.to_wire())
        return wire


def money_text(value: Decimal) -> str:
    rounded = value.quantize(_CENT, rounding=ROUND_HALF_UP)
    return f"{abs(rounded) if rounded.is_zero() else rounded:f}"
