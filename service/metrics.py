"""Prometheus metrics shared by every feature (one registry: the default, with process metrics).

Conventions: every name starts with `ledgerlink_`, counters end in `_total`, durations are in
seconds and say so, and label values come from short fixed sets (route templates, outcomes,
picklist labels), never from client input. docs/OPERATIONS.md lists them all; a test keeps that
list equal to what the API and the worker export.

A labelled series is born at its first event, and `increase()` and `rate()` need a sample from
before it: the first twelve bad signatures after a start would read as 0 and never alert. So
each process creates, at 0, every label set it can know in advance when it starts
(`initialise_label_sets`, called by service/main.py for the API and the worker). Beside each
labelled metric, `KNOWN_LABELS` says which: fixed values written there (tests/ops checks them
against every `.labels(...)` call in service/), or values only the features and the settings
know, handed over in `KnownValues`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

from service import __version__
from service.crm.settings import CrmMode
from service.ledger.vocabulary import OUTBOX_SOURCES
from service.settings import Settings

# A `_created` timestamp series beside every counter and histogram doubles what Prometheus
# stores and nothing here reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]

LabelSet = tuple[str, ...]


@dataclass(frozen=True)
class KnownValues:
    """The label values that only the features and the settings know, gathered by
    service/main.py at start-up."""

    settings: Settings
    # Why a webhook delivery can be refused (service/ingest/rejections.py REJECT_REASONS).
    reject_reasons: Sequence[str] = ()
    # Every status a change can set: the picklist values the settings require.
    statuses: Sequence[str] = ()
    # (route template, method, status) of each documented answer of the API; none in the worker.
    http_operations: Sequence[tuple[str, str, str]] = ()


KnownLabels = Callable[[KnownValues], Iterable[LabelSet]]
# Labelled metric -> the label sets it has from start-up, in label order.
KNOWN_LABELS: dict[MetricWrapperBase, KnownLabels] = {}


def fixed(*label_sets: LabelSet) -> KnownLabels:
    """Label sets written out here, the same in every process."""
    return lambda _known: label_sets


def initialise_label_sets(known: KnownValues) -> None:
    """Create every known label set at 0 (a series that exists is left as it is)."""
    for metric, label_sets in KNOWN_LABELS.items():
        for labels in label_sets(known):
            metric.labels(*labels)


BUILD = Info("ledgerlink_build", "The ledgerlink version and Python this process runs")
BUILD.info({"version": __version__, "python": platform.python_version()})

HTTP_REQUESTS = Counter(
    "ledgerlink_http_requests_total",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
KNOWN_LABELS[HTTP_REQUESTS] = lambda known: known.http_operations
HTTP_LATENCY = Histogram(
    "ledgerlink_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KNOWN_LABELS[HTTP_LATENCY] = lambda known: dict.fromkeys(
    (route, method) for route, method, _ in known.http_operations
)

# Ingest
POSTINGS = Counter(
    "ledgerlink_postings_total", "Postings by outcome (received, applied, unchanged)", ["outcome"]
)
KNOWN_LABELS[POSTINGS] = fixed(("received",), ("applied",), ("unchanged",))
WEBHOOK_DELIVERIES = Counter(
    "ledgerlink_webhook_deliveries_total",
    "Webhook deliveries by outcome (accepted, replayed, rejected) and reason",
    ["outcome", "reason"],
)
KNOWN_LABELS[WEBHOOK_DELIVERIES] = lambda known: [
    ("accepted", ""),
    ("replayed", ""),
    *(("rejected", reason) for reason in known.reject_reasons),
]
BATCH_SIZE = Histogram(
    "ledgerlink_webhook_batch_postings",
    "Postings per webhook batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
INGEST_LATENCY = Histogram(
    "ledgerlink_ingest_duration_seconds",
    "Time to validate and store one webhook batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Reconciliation
RECONCILE_RUNS = Counter(
    "ledgerlink_reconcile_runs_total", "Reconcile runs by trigger and status", ["trigger", "status"]
)
KNOWN_LABELS[RECONCILE_RUNS] = fixed(
    ("worker", "succeeded"), ("api", "succeeded"), ("api", "failed")
)
RECONCILE_DURATION = Histogram(
    "ledgerlink_reconcile_run_duration_seconds",
    "Duration of one reconcile pass",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_CHANGES = Counter(
    "ledgerlink_status_changes_total",
    "Invoice status changes by source and new status",
    ["source", "status"],
)
# The changes this service makes (what the CRM hears of); the CRM's own are not counted here.
KNOWN_LABELS[STATUS_CHANGES] = lambda known: [
    (source, status) for source in OUTBOX_SOURCES for status in known.statuses
]
BULK_JOBS = Counter(
    "ledgerlink_bulk_jobs_total",
    "Global Update jobs by where they ran (inline, queued, worker) and outcome",
    ["mode", "status"],
)
KNOWN_LABELS[BULK_JOBS] = fixed(
    ("inline", "succeeded"), ("queued", "queued"), ("worker", "succeeded"), ("worker", "failed")
)
CONFLICTS = Counter("ledgerlink_conflicts_total", "Protected invoices found disagreeing with Sage")
POSTING_TO_STATUS = Histogram(
    "ledgerlink_posting_to_status_seconds",
    "From an invoice being marked dirty by a posting to its status being written",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DIRTY_BACKLOG = Gauge("ledgerlink_dirty_invoices", "Invoices waiting for reconciliation")
DIRTY_AGE = Gauge("ledgerlink_dirty_oldest_age_seconds", "Age of the oldest dirty invoice")

# CRM outbox
OUTBOX_DEPTH = Gauge("ledgerlink_outbox_pending", "Outbox messages waiting for delivery")
OUTBOX_AGE = Gauge(
    "ledgerlink_outbox_oldest_age_seconds", "Age of the oldest pending outbox message"
)
CRM_DELIVERIES = Counter(
    "ledgerlink_crm_deliveries_total", "Outbox deliveries by outcome", ["outcome"]
)
# The outcomes service/crm/dispatcher.py counts (tests/ops checks the two agree).
KNOWN_LABELS[CRM_DELIVERIES] = fixed(
    *((outcome,) for outcome in ("delivered", "unchanged", "superseded", "skipped_protected")),
    *((outcome,) for outcome in ("retry", "dead", "auth_failed", "misconfigured", "empty")),
)
CRM_READBACK = Counter(
    "ledgerlink_crm_readback_total",
    "CRM read-back: invoice records read, protected statuses adopted, failed page reads, "
    "records skipped, amounts unreadable",
    ["outcome"],
)
# Only OpenCRM is read back, and called.
KNOWN_LABELS[CRM_READBACK] = lambda known: (
    [("read",), ("adopted",), ("failed",), ("skipped",), ("amount_unreadable",)]
    if known.settings.crm_mode is CrmMode.opencrm
    else []
)
CRM_LATENCY = Histogram(
    "ledgerlink_crm_request_duration_seconds",
    "OpenCRM API call latency by method",
    ["method"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
KNOWN_LABELS[CRM_LATENCY] = lambda known: (
    [("get_invoice",), ("edit_invoice",), (known.settings.opencrm_list_method,)]
    if known.settings.crm_mode is CrmMode.opencrm
    else []
)
DEAD_LETTERS = Gauge("ledgerlink_outbox_dead", "Outbox messages in the dead-letter state")
CRM_HALTED = Gauge(
    "ledgerlink_crm_dispatcher_halted",
    "1 while CRM deliveries are halted (OpenCRM refused our credentials), else 0",
)

# Process
DB_POOL = Gauge(
    "ledgerlink_db_pool_connections",
    "This process's database connections by state (in_use, idle)",
    ["state"],
)
KNOWN_LABELS[DB_POOL] = fixed(("in_use",), ("idle",))
DB_POOL_MAX = Gauge(
    "ledgerlink_db_pool_max_connections",
    "Connections this process may open (LEDGERLINK_DB_POOL_SIZE plus as many overflow)",
)
READY = Gauge(
    "ledgerlink_ready",
    "1 when this process would answer /readyz with 200 (checked at each scrape), else 0",
)
