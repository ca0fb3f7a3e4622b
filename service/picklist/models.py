"""The invoice status picklist, mirroring OpenCRM's Settings (OpenCRM has no picklist API)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class PicklistValue(SQLModel, table=True):
    __tablename__ = "picklist_values"

    value: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    position: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
