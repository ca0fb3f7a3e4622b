"""Connectors: how one outbox change reaches a CRM, whichever CRM it is.

The dispatcher knows a CRM only through `Connector`. `LocalConnector`
(LEDGERLINK_CRM_MODE=local) only reports the change delivered, so local mode runs the very same
outbox path; each CRM's connector lives in its own folder (service/crm/opencrm/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from service.contracts import status_key
from service.schemas import money


@dataclass(frozen=True)
class Change:
    """What one outbox message asks the CRM to show."""

    message_id: int
    invoice_number: str
    source: str
    status: str | None
    outstanding: Decimal | None
    # The CRM record id cached on the invoice, if any.
    crm_id: str | None = None


@dataclass(frozen=True)
class Pushed:
    """The CRM shows the change now. `sent` is empty when it already did (nothing written)."""

    sent: dict[str, str] = field(default_factory=dict)
    crm_id: str | None = None
    crm_status: str | None = None
    # The outstanding amount the CRM shows now, when ledgerlink keeps it there.
    crm_outstanding: Decimal | None = None


@dataclass(frozen=True)
class KeptCrmStatus:
    """A sync change was not written: a person set this protected status in the CRM."""

    crm_status: str
    crm_id: str


Outcome = Pushed | KeptCrmStatus


class Connector(Protocol):
    """Delivers changes to one CRM. A connector raises the errors of service/crm/errors.py, by
    which the dispatcher decides: halt, back off, retry the message or count an attempt."""

    name: str
    # How many invoices one dispatcher pass handles.
    batch_size: int
    # True when delivering calls another system: the dispatcher then leases what it claims,
    # holds no transaction while it waits for that system, and keeps that system's health
    # (halts, failures, paging) where /readyz reads it.
    remote: bool

    async def deliver(self, change: Change) -> Outcome:
        """Make the CRM show the change. A sync's change must not replace a protected status a
        person set in the CRM: the connector answers KeptCrmStatus instead."""
        ...

    def take_seen_ids(self) -> dict[str, str]:
        """CRM record ids seen since the last call, by invoice number (then forgotten)."""
        ...

    def take_paging_confirmed(self) -> bool:
        """Whether a lookup since the last call paged past a first page, the CRM answering
        each page anew (then forgotten): it does not ignore paging (any more)."""
        ...


class LocalConnector:
    """No CRM: every change counts as delivered."""

    name = "local"
    remote = False

    def __init__(self, batch_size: int = 500) -> None:
        self.batch_size = batch_size

    async def deliver(self, change: Change) -> Outcome:
        sent = {"status": change.status} if change.status else {}
        if change.outstanding is not None:
            sent["outstanding"] = money(change.outstanding)
        return Pushed(sent=sent, crm_id=change.crm_id)

    def take_seen_ids(self) -> dict[str, str]:
        return {}

    def take_paging_confirmed(self) -> bool:
        return False


class ProtectedStatuses:
    """The protected statuses (LEDGERLINK_PROTECTED_STATUSES), recognised in a CRM however it
    spells them: a person who sets one there has decided, and ledgerlink follows."""

    def __init__(self, statuses: list[str]) -> None:
        self._by_key = {status_key(s): s for s in statuses if s.strip()}

    def match(self, crm_status: str | None) -> str | None:
        """The configured spelling of a protected status the CRM shows, else None."""
        return self._by_key.get(status_key(crm_status)) if crm_status else None
