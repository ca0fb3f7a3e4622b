"""Connectors: how one outbox change reaches the CRM.

`LocalConnector` (LEDGERLINK_CRM_MODE=local) only reports the change delivered, so local mode
runs the very same outbox path. `OpenCrmConnector` finds the invoice, re-reads it, respects a
protected status a person set in OpenCRM, and writes only the fields that differ.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from service.contracts import status_key
from service.crm.client import CrmInvoice, OpenCrmClient
from service.crm.errors import CrmAmbiguous, CrmInvoiceNotFound, CrmMisconfigured, CrmRejected
from service.crm.models import CRM_ID_LENGTH, INVOICE_NUMBER_LENGTH, STATUS_LENGTH
from service.logging import get_logger
from service.schemas import money

log = get_logger(__name__)


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
    name: str
    # How many invoices one dispatcher pass handles.
    batch_size: int
    # True when delivering calls another system: the dispatcher then leases what it claims and
    # holds no transaction while it waits for that system.
    remote: bool

    async def deliver(self, change: Change) -> Outcome: ...

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


@dataclass(frozen=True)
class CrmFields:
    """Where OpenCRM keeps what ledgerlink reads and writes.

    The invoice number has two names: OpenCRM's field reference says the name used in a
    `query_string` can differ from the key of a record read back (see the public client
    Jacobomara901/opencrm_api, README "Field Names": `smownerid` vs `assigned_user_id`).
    """

    status: str
    number_query: str
    number_record: str
    outstanding: str | None = None
    modified: str | None = None
    page_size: int = 100
    list_method: str = "get_invoice_list"


class OpenCrmConnector:
    name = "opencrm"
    remote = True

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
        self._protected = protected_map(protected_statuses)
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

    def protected(self, crm_status: str | None) -> str | None:
        """The configured spelling of a protected status the CRM shows, else None."""
        return self._protected.get(status_key(crm_status)) if crm_status else None

    async def deliver(self, change: Change) -> Outcome:
        invoice = await self.read(change.invoice_number, change.crm_id)
        crm_status = invoice.text(self.fields.status) or None
        if text_problem(invoice.fields.get(self.fields.status), limit=STATUS_LENGTH):
            crm_status = None  # nothing ledgerlink can store, nor a protected status
        if change.source == "sync":
            kept = self.protected(crm_status)
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
            if invoice is not None and self.number_of(invoice) == invoice_number:
                return invoice
        crm_id = await self.resolve(invoice_number)
        invoice = await self.client.get_invoice(crm_id)
        if self.number_of(invoice) != invoice_number:
            raise CrmRejected(
                f"OpenCRM record {crm_id} found for invoice {invoice_number} carries "
                f"{self.fields.number_record}={invoice.text(self.fields.number_record)!r}; "
                "check LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD"
            )
        return invoice

    def number_of(self, invoice: CrmInvoice) -> str | None:
        """The invoice number a record carries; a record without the field is a settings error
        (trusting it would edit whatever invoice an ignored filter put first)."""
        number = invoice.text(self.fields.number_record)
        if number is None:
            shown = ", ".join(sorted(invoice.fields)[:30])
            raise CrmMisconfigured(
                f"OpenCRM invoice records carry no field '{self.fields.number_record}' "
                f"(fields seen: {shown}); set LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD (or "
                "LEDGERLINK_OPENCRM_NUMBER_FIELD) to the field holding the Sage invoice number"
            )
        return number

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
            numbered = [(self.number_of(r), r) for r in page if r.crm_id]
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


def protected_map(statuses: list[str]) -> dict[str, str]:
    return {status_key(s): s for s in statuses if s.strip()}


# An amount as a person types one: optional sign and currency symbol, digits with or without
# thousands separators, optional decimals. No exponent ("1e400" is not 1400), no words.
_AMOUNT = re.compile(r"([-+]?)[£$€]?([-+]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
_CENT = Decimal("0.01")
# The largest amount numeric(14,2) holds.
LARGEST_AMOUNT = Decimal("999999999999.99")


def parse_amount(value: Any) -> Decimal | None:
    """An amount as the CRM gives it: a JSON number, or text like "1,200.50", "£12.00", "12";
    rounded to pence. None when unreadable: anything else (an object, a list, a boolean,
    "1e400", "n/a"), or too large for an amount ledgerlink stores."""
    number: Decimal
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        number = Decimal(repr(value))
    elif isinstance(value, str):
        match = _AMOUNT.fullmatch(value.strip())
        if match is None or (match[1] and match[2]):
            return None
        sign, digits, decimals = match[1] or match[2], match[3], match[4] or ""
        number = Decimal(sign + digits.replace(",", "") + decimals)
    else:
        return None
    if abs(number) > LARGEST_AMOUNT + _CENT:
        return None
    try:
        rounded = number.quantize(_CENT)
    except InvalidOperation:
        return None
    return rounded if abs(rounded) <= LARGEST_AMOUNT else None


# Characters text read from the CRM must not hold: controls (NUL among them, which PostgreSQL
# text cannot store) and lone surrogates (which no UTF-8 can encode).
_UNSTORABLE = ("Cc", "Cs")


def text_problem(value: Any, *, limit: int) -> str | None:
    """Why a field read from the CRM cannot be stored as text of at most `limit` characters;
    None when it can (or is absent). Safe to log: the value itself is not quoted."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"is a JSON {type(value).__name__}, not text"
    text = str(value).strip()
    if len(text) > limit:
        return f"has {len(text)} characters, more than {limit}"
    bad = next((ch for ch in text if unicodedata.category(ch) in _UNSTORABLE), None)
    if bad is not None:
        return f"holds the character {bad!a}"
    return None


def storable_id(invoice_number: str, crm_id: str) -> bool:
    """Whether an invoice number and its CRM record id can be cached (read from the CRM, either
    may be anything)."""
    return (
        text_problem(invoice_number, limit=INVOICE_NUMBER_LENGTH) is None
        and text_problem(crm_id, limit=CRM_ID_LENGTH) is None
    )
