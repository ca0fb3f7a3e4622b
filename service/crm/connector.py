"""Connectors: how one outbox change reaches the CRM.

`LocalConnector` (LEDGERLINK_CRM_MODE=local) only reports the change delivered, so local mode
runs the very same outbox path. `OpenCrmConnector` finds the invoice, re-reads it, respects a
protected status a person set in OpenCRM, and writes only the fields that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Protocol

from service.crm.client import (
    CrmAmbiguous,
    CrmInvoice,
    CrmInvoiceNotFound,
    CrmRejected,
    OpenCrmClient,
)


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


@dataclass(frozen=True)
class KeptCrmStatus:
    """A sync change was not written: a person set this protected status in the CRM."""

    crm_status: str
    crm_id: str


Outcome = Pushed | KeptCrmStatus


class Connector(Protocol):
    name: str
    # How many invoices one dispatcher transaction handles.
    batch_size: int

    async def deliver(self, change: Change) -> Outcome: ...


def format_amount(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01')):.2f}"


class LocalConnector:
    """No CRM: every change counts as delivered."""

    name = "local"

    def __init__(self, batch_size: int = 500) -> None:
        self.batch_size = batch_size

    async def deliver(self, change: Change) -> Outcome:
        sent = {"status": change.status} if change.status else {}
        if change.outstanding is not None:
            sent["outstanding"] = format_amount(change.outstanding)
        return Pushed(sent=sent, crm_id=change.crm_id)


class OpenCrmConnector:
    name = "opencrm"

    def __init__(
        self,
        client: OpenCrmClient,
        *,
        status_field: str,
        number_field: str,
        outstanding_field: str | None,
        protected_statuses: list[str],
        batch_size: int = 20,
    ) -> None:
        self.client = client
        self.batch_size = batch_size
        self._status_field = status_field
        self._number_field = number_field
        self._outstanding_field = outstanding_field or None
        self._protected = {s.strip().casefold(): s for s in protected_statuses if s.strip()}

    async def deliver(self, change: Change) -> Outcome:
        invoice = await self.read(change.invoice_number, change.crm_id)
        crm_status = invoice.text(self._status_field) or None
        if change.source == "sync" and crm_status is not None:
            kept = self._protected.get(crm_status.casefold())
            if kept is not None and kept != change.status:
                # A person decided this in OpenCRM's own screens; a sync never overrides it.
                return KeptCrmStatus(crm_status=kept, crm_id=invoice.crm_id)
        fields = self.changed_fields(change, invoice)
        if fields:
            await self.client.edit_invoice(invoice.crm_id, fields)
        return Pushed(sent=fields, crm_id=invoice.crm_id, crm_status=crm_status)

    def changed_fields(self, change: Change, invoice: CrmInvoice) -> dict[str, str]:
        """Only what differs from the CRM, and never an empty value (OpenCRM would blank it)."""
        fields: dict[str, str] = {}
        status = (change.status or "").strip()
        if status and invoice.text(self._status_field) != status:
            fields[self._status_field] = status
        if self._outstanding_field and change.outstanding is not None:
            wanted = format_amount(change.outstanding)
            if _amount(invoice.text(self._outstanding_field)) != Decimal(wanted):
                fields[self._outstanding_field] = wanted
        return fields

    async def read(self, invoice_number: str, cached_id: str | None) -> CrmInvoice:
        """The CRM invoice, by its cached record id when it still fits, else found by number."""
        if cached_id:
            try:
                invoice = await self.client.get_invoice(cached_id)
            except CrmRejected:
                invoice = None  # deleted or merged in the CRM: find it again by number
            if invoice is not None and self._is_invoice(invoice, invoice_number):
                return invoice
        crm_id = await self.resolve(invoice_number)
        invoice = await self.client.get_invoice(crm_id)
        if not self._is_invoice(invoice, invoice_number):
            raise CrmRejected(
                f"OpenCRM record {crm_id} found for invoice {invoice_number} carries "
                f"{self._number_field}={invoice.text(self._number_field)!r}; check "
                "LEDGERLINK_OPENCRM_NUMBER_FIELD"
            )
        return invoice

    async def resolve(self, invoice_number: str) -> str:
        """The record id of the one CRM invoice with this number (list call, query filter).

        The API validates almost nothing, so a filter on a field it does not know may come back
        as an unfiltered list: only records that carry the number are trusted.
        """
        found = await self.client.find_invoices(self._number_field, invoice_number)
        carrying = [r for r in found if r.text(self._number_field) is not None]
        if carrying:
            found = [r for r in carrying if r.text(self._number_field) == invoice_number]
        elif len(found) > 1:
            raise CrmAmbiguous(
                f"OpenCRM returned {len(found)} invoices for {self._number_field}="
                f"{invoice_number} without that field in them; check "
                "LEDGERLINK_OPENCRM_NUMBER_FIELD"
            )
        if not found:
            raise CrmInvoiceNotFound(
                f"no OpenCRM invoice has {self._number_field}={invoice_number} (not created in "
                "the CRM yet, or LEDGERLINK_OPENCRM_NUMBER_FIELD is not the field that holds "
                "the Sage invoice number)"
            )
        ids = sorted({r.crm_id for r in found})
        if len(ids) > 1:
            raise CrmAmbiguous(
                f"{len(ids)} OpenCRM invoices have {self._number_field}={invoice_number} "
                f"(crmid {', '.join(ids[:5])}); none was changed"
            )
        return ids[0]

    def _is_invoice(self, invoice: CrmInvoice, invoice_number: str) -> bool:
        number = invoice.text(self._number_field)
        return number is None or number == invoice_number


def _amount(text: str | None) -> Decimal | None:
    """An amount as the CRM shows it ("1,200.50", "£12.00", "12"); None when unreadable."""
    if text is None:
        return None
    cleaned = "".join(ch for ch in text if ch.isdigit() or ch in ".-")
    if not cleaned:
        return None
    try:
        return Decimal(cleaned).quantize(Decimal("0.01"))
    except InvalidOperation:
        return None
