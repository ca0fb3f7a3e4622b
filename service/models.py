"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from sqlmodel import SQLModel

from service.console.models import ConsoleSessionRow, SignInFailures
from service.crm.models import (
    CrmInvoiceView,
    CrmObservedStatus,
    CrmReadbackState,
    OutboxMessage,
)
from service.ingest.models import Allocation, Posting, WebhookDelivery
from service.invoices.models import DirtyInvoice, Invoice, StatusHistory
from service.jobs.models import Job, JobResult
from service.picklist.models import PicklistValue
from service.reconcile.models import SyncRun, SyncRunChange

metadata = SQLModel.metadata

__all__ = [
    "Allocation",
    "ConsoleSessionRow",
    "CrmInvoiceView",
    "CrmObservedStatus",
    "CrmReadbackState",
    "DirtyInvoice",
    "Invoice",
    "Job",
    "JobResult",
    "OutboxMessage",
    "PicklistValue",
    "Posting",
    "SignInFailures",
    "StatusHistory",
    "SyncRun",
    "SyncRunChange",
    "WebhookDelivery",
    "metadata",
]
