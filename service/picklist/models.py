"""The invoice status picklist, mirroring OpenCRM's Settings (OpenCRM has no picklist API)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

# Seeded by the first migration: an OpenCRM-like list that already holds both write-off values.
DEFAULT_PICKLIST: tuple[str, ...] = (
    "Created",
    "Approved",
    "Sent",
    "Unpaid",
    "Part Paid",
    "Paid",
    "Credit Invoice",
    "Written Off",
    "Paid/Written Off",
    "Cancelled",
)


class PicklistValue(SQLModel, table=True):
    __tablename__ = "picklist_values"

    value: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    position: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
