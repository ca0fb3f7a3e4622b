"""Prometheus metrics shared by every feature (one registry: the default, with process metrics).

Conventions: every name starts with `ledgerlink_`, counters end in `_total`, durations are in
seconds and say so, and label values come from short fixed sets (route templates, outcomes,
picklist labels), never from client input. docs/OPERATIONS.md lists them all; a test keeps that
list equal to what the API and the worker export.
"""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from service import __version__

# A `_created` timestamp series beside every counter and histogram doubles what Prometheus
# stores and nothing here reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]

BUILD = Info("ledgerlink_build", "The ledgerlink version and Python this process runs")
BUILD.info({"version": __version__, "python": platform.python_version()})

HTTP_REQUESTS = Counter(
    "ledgerlink_http_requests_total",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "ledgerlink_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Ingest
POSTINGS = Counter(
    "ledgerlink_postings_total", "Postings by outcome (received, applied, unchanged)", ["outcome"]
)
WEBHOOK_DELIVERIES = Counter(
    "ledgerlink_webhook_deliveries_total",
    "Webhook deliveries by outcome (accepted, replayed, rejected) and reason",
    ["outcome", "reason"],
)
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
BULK_JOBS = Counter(
    "ledgerlink_bulk_jobs_total",
    "Global Update jobs by where they ran (inline, queued, worker) and outcome",
    ["mode", "status"],
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
CRM_READBACK = Counter(
    "ledgerlink_crm_readback_total",
    "CRM read-back: invoice records read, protected statuses adopted, failed page reads, "
    "records skipped, amounts unreadable",
    ["outcome"],
)
CRM_LATENCY = Histogram(
    "ledgerlink_crm_request_duration_seconds",
    "OpenCRM API call latency by method",
    ["method"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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
DB_POOL_MAX = Gauge(
    "ledgerlink_db_pool_max_connections",
    "Connections this process may open (LEDGERLINK_DB_POOL_SIZE plus as many overflow)",
)
READY = Gauge(
    "ledgerlink_ready",
    "1 when this process would answer /readyz with 200 (checked at each scrape), else 0",
)
