"""Request and response bodies of the invoice status picklist."""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_VALUES = 500


def _clean_label(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in value):
        raise ValueError("must not contain control characters, line separators or lone surrogates")
    return value


PicklistLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_clean_label)
]


def _no_duplicates(values: list[str]) -> list[str]:
    duplicates = sorted(v for v, n in Counter(values).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate values: {duplicates}")
    return values


class PicklistIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: Annotated[
        list[PicklistLabel],
        Field(min_length=1, max_length=MAX_VALUES),
        AfterValidator(_no_duplicates),
    ] = Field(description="The whole list, in display order; replaces the current one.")


class PicklistOut(BaseModel):
    values: list[str] = Field(description="The invoice status picklist, in display order.")


class VerificationOut(BaseModel):
    ok: bool = Field(description="True when every required value is in the picklist.")
    required: list[str] = Field(
        description="The protected statuses plus every label the sync may write."
    )
    missing: list[str] = Field(description="Required values the picklist lacks.")
    observed_in_crm: list[str] = Field(
        description="Status values seen on CRM invoices (filled by the CRM connector)."
    )
    observed_not_in_picklist: list[str] = Field(
        description="Values seen in the CRM that this picklist does not hold."
    )


class RepairOut(BaseModel):
    added: list[str] = Field(description="Values appended to the picklist by this call.")
    ok: bool
