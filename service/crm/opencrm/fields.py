"""Where OpenCRM keeps what ledgerlink reads and writes: the field names of its invoices."""

from __future__ import annotations

from dataclasses import dataclass

from service.crm.errors import CrmMisconfigured
from service.crm.opencrm.client import CrmInvoice
from service.crm.opencrm.settings import OpenCrmSettings


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

    @classmethod
    def from_settings(cls, opencrm: OpenCrmSettings) -> CrmFields:
        return cls(
            status=opencrm.status_field,
            number_query=opencrm.number_field,
            number_record=opencrm.number_record,
            outstanding=opencrm.outstanding_field,
            modified=opencrm.modified_field,
            page_size=opencrm.page_size,
            list_method=opencrm.list_method,
        )

    def number_of(self, invoice: CrmInvoice) -> str | None:
        """The invoice number a record carries; a record without the field is a settings error
        (trusting it would edit whatever invoice an ignored filter put first)."""
        number = invoice.text(self.number_record)
        if number is None:
            shown = ", ".join(sorted(invoice.fields)[:30])
            raise CrmMisconfigured(
                f"OpenCRM invoice records carry no field '{self.number_record}' "
                f"(fields seen: {shown}); set LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD (or "
                "LEDGERLINK_OPENCRM_NUMBER_FIELD) to the field holding the Sage invoice number"
            )
        return number
