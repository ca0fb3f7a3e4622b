"""The settings a company's ledger is read with: how write-offs and exchange revaluations are
recognised, which statuses are protected, the label of each derived state, the base currency
and the bad-debt payment term.

`service.settings.Settings` declares them by deriving from `LedgerSettings`, so each is still
read from its own environment variable (LEDGERLINK_WRITE_OFF_MODE and the rest), and hands them
on as `settings.ledger`. Ledger code (classification, reconciliation, invoices, the picklist,
bad debts) takes a `LedgerSettings`, never the whole `Settings`: this is where a company's own
ledger settings can come from somewhere else than the process's environment.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

from service.ledger.vocabulary import (
    DEFAULT_STATUS_LABELS,
    DERIVED_STATES,
    SAGELINK_FALLBACK,
)


class WriteOffMode(StrEnum):
    # Write-offs are told from payments and credits, and shown as written off.
    classify = "classify"
    # Shown as SageLink shows them (service.ledger.vocabulary.SAGELINK_FALLBACK): paid.
    sagelink = "sagelink"


def comma_separated(value: Any) -> Any:
    """A list setting given as text: `a, b,c` is ["a", "b", "c"]."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class LedgerSettings(BaseModel):
    model_config = ConfigDict(validate_default=True)

    write_off_mode: WriteOffMode = WriteOffMode.classify
    write_off_nominals: Annotated[list[str], NoDecode] = Field(default=["8100-8199"])
    write_off_pattern: str = r"bad\s*debt|write[\s-]*off|baddbt"
    # Foreign Trader: the company's base currency, and the nominal codes Sage posts its
    # automatic exchange revaluations to ("Revaluation N/C", 7906 by default).
    base_currency: str = "GBP"
    exchange_variance_nominals: Annotated[list[str], NoDecode] = Field(default=["7906"])
    protected_statuses: Annotated[list[str], NoDecode] = Field(
        default=["Written Off", "Paid/Written Off"]
    )
    status_labels: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_LABELS))
    # Sage's postings carry no due date: bad debt relief counts six months from the invoice
    # date plus this term.
    bad_debt_payment_term_days: int = Field(default=30, ge=0, le=366)

    @field_validator(
        "write_off_nominals", "exchange_variance_nominals", "protected_statuses", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return comma_separated(value)

    @field_validator("write_off_nominals", "exchange_variance_nominals")
    @classmethod
    def _nominal_ranges(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"\d{1,8}(-\d{1,8})?", item):
                raise ValueError(f"'{item}' is not a nominal code or range like 8100-8199")
            low, _, high = item.partition("-")
            if high and int(high) < int(low):
                raise ValueError(f"range '{item}' ends before it starts")
        return value

    @field_validator("base_currency")
    @classmethod
    def _currency_code(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"'{value}' is not an ISO 4217 code of 3 capital letters, like GBP")
        return value

    @field_validator("write_off_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("status_labels", mode="before")
    @classmethod
    def _labels_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of derived state to label")
        unknown = set(value) - set(DERIVED_STATES)
        if unknown:
            raise ValueError(
                f"unknown derived states {sorted(unknown)}; use {list(DERIVED_STATES)}"
            )
        merged = dict(DEFAULT_STATUS_LABELS)
        merged.update({k: str(v) for k, v in value.items()})
        return merged

    @cached_property
    def nominal_ranges(self) -> list[tuple[str, str]]:
        """The write-off nominals as inclusive (low, high) pairs."""
        return _ranges(self.write_off_nominals)

    @cached_property
    def exchange_variance_ranges(self) -> list[tuple[str, str]]:
        """The exchange-variance nominals as inclusive (low, high) pairs."""
        return _ranges(self.exchange_variance_nominals)

    def label_for(self, state: str) -> str:
        return self.status_labels[state]

    def fallback_label_for(self, state: str) -> str:
        """The label SageLink would write for `state`."""
        return self.status_labels[SAGELINK_FALLBACK[state]]

    def writable_labels(self) -> list[str]:
        """Every label a sync may write, in either write-off mode."""
        labels = [self.status_labels[s] for s in DERIVED_STATES]
        return list(dict.fromkeys(labels))


def _ranges(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        low, _, high = item.partition("-")
        pairs.append((low, high or low))
    return pairs
