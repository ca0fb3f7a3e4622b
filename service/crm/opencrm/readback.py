"""OpenCRM's invoice list, a page at a time, as the read-back stores it (the `ReadBackSource`
of service/crm/readback.py).

With `LEDGERLINK_OPENCRM_MODIFIED_FIELD` set, a page asks only for invoices modified on one
day (`FIELD|BEGINS|YYYY-MM-DD`: OpenCRM's filters know `=`, `LIKE`, `BEGINS`, `ENDS` and
`CONTAINS`, no comparison; Jacobomara901/opencrm_api, `src/opencrm/utils/query.py`). A page
holding records of other days tells the read-back that OpenCRM ignored the filter.

A record that cannot be stored (a status longer than the column, a NUL, a lone surrogate, an
object where text belongs) is left out with the reason; an unreadable balance becomes unknown.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any

import httpx

from service.crm.errors import CrmPagingBroken
from service.crm.models import CRM_ID_LENGTH, INVOICE_NUMBER_LENGTH, MODIFIED_LENGTH, STATUS_LENGTH
from service.crm.opencrm.client import (
    CrmInvoice,
    OpenCrmClient,
    page_ids,
    paging_ignored,
    too_many_pages,
)
from service.crm.opencrm.fields import CrmFields
from service.crm.opencrm.settings import OpenCrmSettings
from service.crm.readback import Page
from service.crm.repository.views import CrmView
from service.crm.values import parse_amount, text_problem
from service.logging import get_logger

log = get_logger(__name__)

_MAX_REASON = 200


class OpenCrmReadBackSource:
    def __init__(self, client: OpenCrmClient, fields: CrmFields) -> None:
        self.client = client
        self.fields = fields

    @classmethod
    def from_settings(
        cls, opencrm: OpenCrmSettings, http: httpx.AsyncClient
    ) -> OpenCrmReadBackSource:
        return cls(OpenCrmClient.from_settings(opencrm, http), CrmFields.from_settings(opencrm))

    @property
    def page_size(self) -> int:
        return self.fields.page_size

    @property
    def max_pages(self) -> int:
        return self.client.max_pages

    @property
    def day_field(self) -> str | None:
        return self.fields.modified

    def first_day(self, last_modified: str | None) -> date | None:
        """The day of the last modification seen (None: read everything)."""
        if not self.fields.modified or not last_modified:
            return None
        try:
            return date.fromisoformat(last_modified[:10])
        except ValueError:
            return None

    async def read_page(self, day: date | None, start: int) -> Page:
        fields = self.fields
        query = f"{fields.modified}|BEGINS|{day.isoformat()}" if day and fields.modified else None
        records = await self.client.list_page(
            start=start, size=fields.page_size, query=query, method=fields.list_method
        )
        page = self._read(records)
        page.records = len(records)
        page.digest = _digest(records)
        page.day_filter_ignored = day is not None and any(not self._on_day(r, day) for r in records)
        return page

    def too_many_pages(self, pages: int) -> CrmPagingBroken:
        return too_many_pages(self.fields.list_method, pages)

    def paging_ignored(self, start: int) -> CrmPagingBroken:
        return paging_ignored(self.fields.list_method, start)

    def _on_day(self, record: CrmInvoice, day: date) -> bool:
        modified = self._modified(record)
        return modified is not None and modified.startswith(day.isoformat())

    def _modified(self, record: CrmInvoice) -> str | None:
        name = self.fields.modified
        return record.text(name) or None if name else None

    def _read(self, records: list[CrmInvoice]) -> Page:
        """One view per invoice number. A record that cannot be stored is skipped; a number
        on two CRM records is ambiguous and skipped (the dispatcher edits neither)."""
        fields = self.fields
        page = Page()
        by_number: dict[str, list[CrmInvoice]] = {}
        for record in records:
            number = fields.number_of(record)
            bad_number = text_problem(
                record.fields.get(fields.number_record), limit=INVOICE_NUMBER_LENGTH
            )
            if bad_number is not None:
                page.skipped.append(_reason(record, None, fields.number_record, bad_number))
            elif number:
                by_number.setdefault(number, []).append(record)
        for number, found in by_number.items():
            if len(found) > 1:
                log.warning("crm.readback.ambiguous", invoice_number=number, records=len(found))
                continue
            record = found[0]
            unstorable = self._unstorable(record)
            if unstorable is not None:
                page.skipped.append(_reason(record, number, *unstorable))
                continue
            raw_amount = record.fields.get(fields.outstanding) if fields.outstanding else None
            outstanding = parse_amount(raw_amount)
            if outstanding is None and raw_amount not in (None, ""):
                page.unreadable_amounts += 1
                log.info("crm.readback.amount_unreadable", invoice_number=number)
            page.views.append(
                CrmView(
                    invoice_number=number,
                    crm_id=record.crm_id or None,
                    status=record.text(fields.status) or None,
                    outstanding=outstanding,
                    modified=self._modified(record),
                )
            )
        return page

    def _unstorable(self, record: CrmInvoice) -> tuple[str, str] | None:
        """(field, problem) of the first field of `record` that cannot be stored."""
        fields = self.fields
        checks: list[tuple[str, Any, int]] = [
            ("crmid", record.crm_id, CRM_ID_LENGTH),
            (fields.status, record.fields.get(fields.status), STATUS_LENGTH),
        ]
        if fields.modified:
            checks.append((fields.modified, record.fields.get(fields.modified), MODIFIED_LENGTH))
        for name, value, limit in checks:
            problem = text_problem(value, limit=limit)
            if problem is not None:
                return name, problem
        return None


def _digest(records: list[CrmInvoice]) -> str:
    """What tells the page from the next one, kept in the cursor row (64 characters)."""
    joined = "\n".join(page_ids(records)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(joined).hexdigest()


def _reason(record: CrmInvoice, number: str | None, name: str, problem: str) -> str:
    """Which record was skipped and why, with nothing of the bad value in it."""
    who = f"invoice {number}" if number is not None else f"CRM record {record.crm_id!a}"
    reason = f"{who}: {name} {problem}"
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"
