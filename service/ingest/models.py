"""Postings and allocations as Sage sent them, and the webhook inbox."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

MONEY = sa.Numeric(14, 2)
RATE = sa.Numeric(20, 10)


class Posting(SQLModel, table=True):
    __tablename__ = "postings"
    __table_args__ = (
        sa.CheckConstraint("type IN ('SI','SC','SR','SA','SD','SP')", name="ck_postings_type"),
        sa.Index("ix_postings_reference_si", "reference", postgresql_where=sa.text("type = 'SI'")),
    )

    tran_number: int = Field(
        sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False)
    )
    type: str = Field(sa_column=sa.Column(sa.String(2), nullable=False))
    account_ref: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    reference: str = Field(sa_column=sa.Column(sa.String(30), nullable=False, server_default=""))
    date: dt.date = Field(sa_column=sa.Column(sa.Date, nullable=False))
    details: str = Field(sa_column=sa.Column(sa.String(60), nullable=False, server_default=""))
    nominal_code: str = Field(sa_column=sa.Column(sa.String(8), nullable=False, server_default=""))
    net_amount: Decimal = Field(sa_column=sa.Column(MONEY, nullable=False))
    tax_amount: Decimal = Field(sa_column=sa.Column(MONEY, nullable=False))
    gross_amount: Decimal = Field(sa_column=sa.Column(MONEY, nullable=False))
    outstanding: Decimal | None = Field(default=None, sa_column=sa.Column(MONEY, nullable=True))
    # Foreign Trader (docs/CURRENCY.md): NULL currency = the base currency, and then every
    # foreign_* column is NULL too.
    currency: str | None = Field(default=None, sa_column=sa.Column(sa.String(3), nullable=True))
    exchange_rate: Decimal | None = Field(default=None, sa_column=sa.Column(RATE, nullable=True))
    foreign_net_amount: Decimal | None = Field(
        default=None, sa_column=sa.Column(MONEY, nullable=True)
    )
    foreign_tax_amount: Decimal | None = Field(
        default=None, sa_column=sa.Column(MONEY, nullable=True)
    )
    foreign_gross_amount: Decimal | None = Field(
        default=None, sa_column=sa.Column(MONEY, nullable=True)
    )
    foreign_outstanding: Decimal | None = Field(
        default=None, sa_column=sa.Column(MONEY, nullable=True)
    )
    deleted: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false"))
    # Hash of the posting with its allocations: a re-send with the same hash is "unchanged".
    content_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    event_id: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))
    received_at: dt.datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
    updated_at: dt.datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )


class Allocation(SQLModel, table=True):
    """What one settling posting (SR/SA/SC/SD/SP) allocates to one invoice transaction.

    `invoice_tran_number` has no foreign key on purpose: batches arrive out of order, and an
    allocation may name an SI that has not arrived yet. It takes effect once it does.
    """

    __tablename__ = "allocations"
    __table_args__ = (sa.Index("ix_allocations_invoice_tran_number", "invoice_tran_number"),)

    # No foreign key either: the store statement writes a posting and its allocations together
    # and postings are never deleted (only marked), so a per-row check would guard nothing.
    posting_tran_number: int = Field(
        sa_column=sa.Column(
            sa.BigInteger,
            primary_key=True,
        )
    )
    seq: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True))
    invoice_tran_number: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    amount: Decimal = Field(sa_column=sa.Column(MONEY, nullable=False))
    # In the settling posting's currency; NULL when that is the base currency.
    foreign_amount: Decimal | None = Field(default=None, sa_column=sa.Column(MONEY, nullable=True))
    date: dt.date | None = Field(default=None, sa_column=sa.Column(sa.Date, nullable=True))
    deleted: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default="false"))


class WebhookDelivery(SQLModel, table=True):
    """The inbox: one row per webhook-id, with the answer it got."""

    __tablename__ = "webhook_deliveries"

    webhook_id: str = Field(sa_column=sa.Column(sa.String(255), primary_key=True))
    body_sha256: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    source: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    status_code: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    response: dict[str, Any] = Field(sa_column=sa.Column(pg.JSONB, nullable=False))
    postings_received: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    received_at: dt.datetime = Field(
        sa_column=sa.Column(
            sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    )
