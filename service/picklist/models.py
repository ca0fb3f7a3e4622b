"""The invoice status picklist, mirroring OpenCRM's Settings (OpenCRM has no picklist API)."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class PicklistValue(SQLModel, table=True):
    __tablename__ = "picklist_values"

    value: str = Field(primary_key=True, max_length=64)
    position: int
