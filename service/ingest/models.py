"""Postings and allocations as Sage sent them, and the webhook inbox."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlmodel import Field, SQLModel

from service.columns import defaults_to_false, defaults_to_now, money
from service.ledger.vocabulary import POSTING_TYPES, sql_in

# Sage's own text fields: NOT NULL, empty when Sage sends nothing.
EMPTY_BY_DEFAULT = {"server_default": ""}


class Posting(SQLModel, table=True):
    __tablename__ = "postings"
    __table_args__ = (
        sa.CheckConstraint(sql_in("type", POSTING_TYPES), name="ck_postings_type"),
        sa.Index("ix_postings_reference_si", "reference", postgresql_where=sa.text("type = 'SI'")),
    )

    # Sage's transaction number, not one of ours: no sequence.
    tran_number: int = Field(
        primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    type: str = Field(max_length=2)
    account_ref: str = Field(max_length=32)
    reference: str = Field(max_length=30, sa_column_kwargs=EMPTY_BY_DEFAULT)
    date: dt.date
    details: str = Field(max_length=60, sa_column_kwargs=EMPTY_BY_DEFAULT)
    nominal_code: str = Field(max_length=8, sa_column_kwargs=EMPTY_BY_DEFAULT)
    net_amount: Decimal = money()
    tax_amount: Decimal = money()
    gross_amount: Decimal = money()
    outstanding: Decimal | None = money(None)
    # Foreign Trader (docs/CURRENCY.md): NULL currency = the base currency, and then every
    # foreign_* column is NULL too.
    currency: str | None = Field(default=None, max_length=3)
    exchange_rate: Decimal | None = Field(default=None, max_digits=20, decimal_places=10)
    foreign_net_amount: Decimal | None = money(None)
    foreign_tax_amount: Decimal | None = money(None)
    foreign_gross_amount: Decimal | None = money(None)
    foreign_outstanding: Decimal | None = money(None)
    deleted: bool = defaults_to_false()
    # Hash of the posting with its allocations: a re-send with the same hash is "unchanged".
    content_hash: bytes
    event_id: str = Field(max_length=255)
    received_at: dt.datetime = defaults_to_now()
    updated_at: dt.datetime = defaults_to_now()


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
        primary_key=True,
        sa_type=sa.BigInteger,
    )
    seq: int = Field(primary_key=True)
    invoice_tran_number: int = Field(sa_type=sa.BigInteger)
    amount: Decimal = money()
    # In the settling posting's currency; NULL when that is the base currency.
    foreign_amount: Decimal | None = money(None)
    date: dt.date | None = None
    deleted: bool = defaults_to_false()
    # The settling posting's type and deleted flag, copied by the statement that stores the
    # posting: a posting that changes in any way has all its allocations written again, so the
    # copies cannot drift. Reconciliation reads them here instead of looking up the posting of
    # every allocation; it still reads the posting of a credit (SC), to classify it.
    posting_type: str = Field(max_length=2)
    posting_deleted: bool = defaults_to_false()


class WebhookDelivery(SQLModel, table=True):
    """The inbox: one row per webhook-id, with the answer it got."""

    __tablename__ = "webhook_deliveries"

    webhook_id: str = Field(primary_key=True, max_length=255)
    body_sha256: bytes
    source: str | None = Field(default=None, max_length=100)
    status_code: int = Field(sa_type=sa.SmallInteger)
    response: dict[str, Any] = Field(sa_type=pg.JSONB)
    postings_received: int
    received_at: dt.datetime = defaults_to_now()
