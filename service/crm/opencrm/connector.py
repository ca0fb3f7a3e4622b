"""OpenCRM behind the `Connector` protocol: how one outbox change reaches OpenCRM."""

from __future__ import annotations

from decimal import Decimal

import httpx

from service.crm.connector import Change, KeptCrmStatus, Outcome, ProtectedStatuses, Pushed
from service.crm.errors import CrmAmbiguous, CrmInvoiceNotFound, CrmRejected
from service.crm.models import STATUS_LENGTH
from service.crm.opencrm.client import CrmInvoice, OpenCrmClient
from service.crm.opencrm.fields import CrmFields
from service.crm.opencrm.settings import OpenCrmSettings
from service.crm.values import parse_amount, storable_id, text_problem
from service.logging import get_logger
from service.schemas import money

log = get_logger(__name__)


class OpenCrmConnector:
    """Finds the invoice, re-reads it, respects a protected status a person set in OpenCRM,
    and writes only the fields that differ."""

    name = "opencrm"
    remote = True

    @classmethod
    def from_settings(
        cls, opencrm: OpenCrmSettings, http: httpx.AsyncClient, *, protected_statuses: list[str]
    ) -> OpenCrmConnector:
        return cls(
            OpenCrmClient.from_settings(opencrm, http),
            CrmFields.from_settings(opencrm),
            protected_statuses=protected_statuses,
        )

    def __init__(
        self,
        client: OpenCrmClient,
        fields: CrmFields,
        *,
        protected_statuses: list[str],
        batch_size: int = 20,
    ) -> None:
        self.client = client
        self.fields = fields
        self.batch_size = batch_size
        self.protected_statuses = ProtectedStatuses(protected_statuses)
        # Record ids learnt while paging through lists, by invoice number: cached by the
        # dispatcher so that no invoice is searched for twice.
        self.seen_ids: dict[str, str] = {}
        self._warned_unfiltered = False
        self._paging_confirmed = False

    def take_seen_ids(self) -> dict[str, str]:
        ids, self.seen_ids = self.seen_ids, {}
        return ids

    def take_paging_confirmed(self) -> bool:
        confirmed, self._paging_confirmed = self._paging_confirmed, False
        return confirmed

    async def deliver(self, change: Change) -> Outcome:
        invoice = await self.read(change.invoice_number, change.crm_id)
        crm_status = invoice.text(self.fields.status) or None
        if text_problem(invoice.fields.get(self.fields.status), limit=STATUS_LENGTH):
            crm_status = None  # nothing ledgerlink can store, nor a protected status
        if change.source == "sync":
            kept = self.protected_statuses.match(crm_status)
            if kept is not None and kept != change.status:
                # A person decided this in OpenCRM's own screens; a sync never overrides it.
                return KeptCrmStatus(crm_status=kept, crm_id=invoice.crm_id)
        fields = self.changed_fields(change, invoice)
        if fields:
            await self.client.edit_invoice(invoice.crm_id, fields)
        shown = change.outstanding if self.fields.outstanding else None
        return Pushed(
            sent=fields, crm_id=invoice.crm_id, crm_status=crm_status, crm_outstanding=shown
        )

    def changed_fields(self, change: Change, invoice: CrmInvoice) -> dict[str, str]:
        """Only what differs from the CRM, and never an empty value (OpenCRM would blank it)."""
        fields: dict[str, str] = {}
        status = (change.status or "").strip()
        if status and invoice.text(self.fields.status) != status:
            fields[self.fields.status] = status
        outstanding_field = self.fields.outstanding
        if outstanding_field and change.outstanding is not None:
            wanted = money(change.outstanding)
            if parse_amount(invoice.fields.get(outstanding_field)) != Decimal(wanted):
                fields[outstanding_field] = wanted
        return fields

    async def read(self, invoice_number: str, cached_id: str | None) -> CrmInvoice:
        """The CRM invoice, by its cached record id when it still fits, else found by number."""
        if cached_id:
            try:
                invoice = await self.client.get_invoice(cached_id)
            except CrmRejected:
                invoice = None  # deleted or merged in the CRM: find it again by number
            if invoice is not None and self.fields.number_of(invoice) == invoice_number:
                return invoice
        crm_id = await self.resolve(invoice_number)
        invoice = await self.client.get_invoice(crm_id)
        if self.fields.number_of(invoice) != invoice_number:
            raise CrmRejected(
                f"OpenCRM record {crm_id} found for invoice {invoice_number} carries "
                f"{self.fields.number_record}={invoice.text(self.fields.number_record)!r}; "
                "check LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD"
            )
        return invoice

    async def resolve(self, invoice_number: str) -> str:
        """The record id of the one CRM invoice with this number.

        The API validates almost nothing: a filter on a field it does not know comes back as
        the unfiltered list, 100 at a time. So only records carrying the number are trusted,
        and the list is paged until the invoice is found or the list ends (or turns out not
        to end: the client's CrmPagingBroken).
        """
        query = f"{self.fields.number_query}|=|{invoice_number}"
        size, method = self.fields.page_size, self.fields.list_method
        found: list[CrmInvoice] = []
        pages = 0
        async for page in self.client.pages(query, size=size, method=method):
            pages += 1
            if pages == 2:
                self._paging_confirmed = True
            numbered = [(self.fields.number_of(r), r) for r in page if r.crm_id]
            self.seen_ids.update(
                (n, r.crm_id) for n, r in numbered if n and storable_id(n, r.crm_id)
            )
            found = [r for n, r in numbered if n == invoice_number]
            if len(found) < len(numbered):
                self._warn_unfiltered(invoice_number)
            if found:
                break
        if not found:
            raise CrmInvoiceNotFound(
                f"no OpenCRM invoice has {self.fields.number_record}={invoice_number} (not "
                "created in the CRM yet, or LEDGERLINK_OPENCRM_NUMBER_FIELD / "
                "LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD do not name the field that holds the "
                "Sage invoice number)"
            )
        ids = sorted({r.crm_id for r in found})
        if len(ids) > 1:
            raise CrmAmbiguous(
                f"{len(ids)} OpenCRM invoices have {self.fields.number_record}={invoice_number} "
                f"(crmid {', '.join(ids[:5])}); none was changed"
            )
        return ids[0]

    def _warn_unfiltered(self, invoice_number: str) -> None:
        if not self._warned_unfiltered:
            self._warned_unfiltered = True
            log.warning(
                "crm.query_field.ignored",
                query_field=self.fields.number_query,
                invoice_number=invoice_number,
                hint="OpenCRM ignored the query_string: every lookup pages through all "
                "invoices; set LEDGERLINK_OPENCRM_NUMBER_FIELD to the field's query name",
            )
