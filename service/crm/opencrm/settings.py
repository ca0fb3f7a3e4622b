"""OpenCRM's settings, as one model: from the LEDGERLINK_OPENCRM_* variables today
(`service.settings.Settings.crm`), and valid as a JSON object too, so that each company can
carry its own (docs/CRM.md, "Settings")."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr


def _path_has_method(value: str) -> str:
    if "{method}" not in value or not value.startswith("/"):
        raise ValueError("must start with / and contain {method}, like /api/rest/{method}")
    return value


def _agent_not_blocked(value: str | None) -> str | None:
    if value is not None and re.search(r"python|curl", value, re.IGNORECASE):
        raise ValueError("OpenCRM's firewall rejects user agents containing python or curl")
    return value or None


def _blank_is_unset(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


ListMethod = Literal["get_invoice_list", "get_invoice_list_full"]


class OpenCrmSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(min_length=1)
    key: SecretStr
    passkey: SecretStr
    # Where an API method is posted, relative to base_url (from an unofficial client: check it
    # on your system).
    path_template: Annotated[str, AfterValidator(_path_has_method)] = "/api/rest/{method}"
    # One deadline per CRM call: connecting, sending and receiving the whole answer.
    timeout_seconds: float = Field(default=10.0, gt=0)
    # A CRM answer larger than this is refused as it streams in (memory stays bounded).
    max_answer_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # List pages one lookup, or one read-back scan, may read: a list that does not end (a CRM
    # ignoring limit_start that a repeated page does not give away) fails instead.
    max_pages: int = Field(default=1000, ge=2)
    # OpenCRM's firewall rejects some user agents (those containing "python" or "curl"); unset:
    # ledgerlink/<version>.
    user_agent: Annotated[str | None, AfterValidator(_agent_not_blocked)] = None
    status_field: str = "invoicestatus"
    # OpenCRM's field reference gives a field one name in a `query_string` and another as the
    # key of a record read back; the record name defaults to the query name.
    number_field: str = Field(default="invoice_no", min_length=1)
    number_record_field: Annotated[str | None, AfterValidator(_blank_is_unset)] = None
    # Unset: balances are neither sent nor compared.
    outstanding_field: str | None = None
    # Query (and record) name of the modification time; unset: every read-back reads every
    # invoice (no public source confirms the field's name or that it filters).
    modified_field: Annotated[str | None, AfterValidator(_blank_is_unset)] = None
    list_method: ListMethod = "get_invoice_list"
    # Records asked for per list call; OpenCRM answers at most 100.
    page_size: int = Field(default=100, ge=1, le=100)

    @property
    def number_record(self) -> str:
        """The invoice number's name as the key of a record read back."""
        return self.number_record_field or self.number_field
