"""`ledgerlink-exporter demo`: a generated Sage company pushed to a running service (the one
`make run` starts), reconciled, and its invoices shown by status."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import httpx
from ledgerlink_exporter.client import (
    SECRET_ENV,
    URL_ENV,
    DeliveryError,
    ServiceCallError,
    Signer,
    WebhookClient,
    base_url,
    list_invoices,
    trigger_sync,
)
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.options import InputError, check_url, fail, signer_for
from ledgerlink_exporter.output import log, log_lines, progress, summary_lines
from ledgerlink_exporter.push import plan_push, run_push
from ledgerlink_exporter.sage import ExportFileError, SageExport
from rich.console import Console
from rich.table import Table

from ledgerlink_demo.company import STATUSES, DemoCompany, generate_company, write_export

API_KEY_ENV = "LEDGERLINK_API_KEY"


def _default_url() -> str:
    """Where `make run` serves: it honours LEDGERLINK_PORT, so the demo does too."""
    return (
        os.environ.get(URL_ENV) or f"http://127.0.0.1:{os.environ.get('LEDGERLINK_PORT', '8000')}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    default="",
    help="The ledgerlink service [default: $LEDGERLINK_URL, or "
    "http://127.0.0.1:$LEDGERLINK_PORT, or http://127.0.0.1:8000].",
)
@click.option(
    "--customers",
    type=click.IntRange(2, 100_000),
    default=50,
    show_default=True,
    help="Customer accounts.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same company.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the CSV files (default: DATA_DIR/demo).",
)
@click.option(
    "--secret",
    envvar=SECRET_ENV,
    default=None,
    help="Webhook signing secret (default: read from DATA_DIR/webhook-secret).",
)
@click.option(
    "--api-key",
    envvar=API_KEY_ENV,
    default=None,
    help="API key with write scope (default: read from DATA_DIR/admin-api-key).",
)
@click.option(
    "--data-dir",
    envvar="LEDGERLINK_DATA_DIR",
    type=click.Path(path_type=Path),
    default=Path(".data"),
    show_default=True,
    help="The dev server's data directory (`make run` writes the keys there).",
)
def demo(
    url: str,
    customers: int,
    seed: int,
    out: Path | None,
    secret: str | None,
    api_key: str | None,
    data_dir: Path,
) -> None:
    """Generate a realistic Sage company, push it, sync, and show the invoice statuses."""
    console = Console(soft_wrap=True, highlight=False)
    target = base_url(check_or_fail(url or _default_url()))
    try:
        signer = signer_for(
            secret
            or _key_file(data_dir / "webhook-secret", "webhook secret", "--secret", SECRET_ENV)
        )
        key = api_key or _key_file(data_dir / "admin-api-key", "API key", "--api-key", API_KEY_ENV)
        _check_reachable(target)
        company = generate_company(customers=customers, seed=seed)
        directory = out if out is not None else data_dir / "demo"
        exports = _write_and_read(company, directory)
        log(
            f"Wrote the demo company ({customers} customers and one in US dollars, seed {seed}) "
            f"to {directory}"
        )
        asyncio.run(_run_demo(company, exports, target, signer, key, console))
    except (ExportFileError, InputError) as exc:
        fail(str(exc), 2)
    except (ServiceCallError, DeliveryError) as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def check_or_fail(url: str) -> str:
    try:
        return check_url(url)
    except InputError as exc:
        fail(str(exc), 2)


def _check_reachable(url: str) -> None:
    """Before generating anything: a demo pointed at nothing should say so in a second."""
    try:
        httpx.get(f"{url}/healthz", timeout=5)
    except httpx.TransportError as exc:
        raise ServiceCallError(
            f"cannot connect to {url} ({exc or type(exc).__name__}): is `make run` going? "
            f"Point the demo elsewhere with --url or {URL_ENV} (make demo URL=...)"
        ) from None


def _key_file(path: Path, what: str, option: str, env: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        value = ""
    if not value:
        raise InputError(
            f"no {what}: pass {option}, set {env}, or start the dev server once (make run) "
            f"so {path} exists"
        )
    return value


def _write_and_read(company: DemoCompany, directory: Path) -> list[SageExport]:
    """Writes each export and reads it back with the same code `push` uses."""
    exports = []
    for index, rows in enumerate(company.exports, start=1):
        try:
            paths = write_export(rows, directory / f"export-{index}")
        except OSError as exc:
            raise InputError(
                f"cannot write the demo files to {directory}: {exc.strerror}"
            ) from None
        # The first push is a first load: it reads the cleared year too; the later one reads
        # the live tables only, as a scheduled push with a state file does.
        exports.append(read_export(*paths, history=index == 1))
    return exports


async def _run_demo(
    company: DemoCompany,
    exports: Sequence[SageExport],
    url: str,
    signer: Signer,
    api_key: str,
    console: Console,
) -> None:
    async with httpx.AsyncClient(timeout=120.0) as http:
        client = WebhookClient(http, url, signer, on_retry=lambda line: log(line, err=True))
        for index, export in enumerate(exports, start=1):
            plan = plan_push(export, None, batch_size=500)
            with progress(console, plan.postings) as advance:
                report = await run_push(plan, client.deliver, on_batch=advance)
            log(f"Export {index} of {len(exports)}:")
            log_lines(summary_lines(report))
            if report.error:
                raise ServiceCallError(report.error)
        run = await trigger_sync(http, url, api_key)
        log(sync_run_line(run))
        invoices = await list_invoices(http, url, api_key)
    intended = company.intended_statuses()
    console.print(status_table(invoices, intended))
    console.print(example_table(invoices, intended))
    log(intended_check(invoices, intended))


def sync_run_line(run: Mapping[str, Any]) -> str:
    counts = run.get("counts")
    detail = ""
    if isinstance(counts, dict) and counts:
        detail = " (" + ", ".join(f"{name} {value}" for name, value in counts.items()) + ")"
    return f"Sync run {run.get('run_id', '?')}: {run.get('status', '?')}{detail}"


def status_table(invoices: Sequence[Mapping[str, Any]], intended: Mapping[str, str]) -> Table:
    counts = Counter(str(item.get("status")) for item in invoices if not item.get("deleted"))
    expected = Counter(intended.values())
    table = Table(title="Invoices by status")
    table.add_column("Status")
    table.add_column("Invoices", justify="right")
    table.add_column("Intended by the demo", justify="right")
    extra = sorted(set(counts) - set(STATUSES))
    for status in (*STATUSES, *extra):
        table.add_row(status, str(counts.get(status, 0)), str(expected.get(status, 0)))
    return table


def example_table(invoices: Sequence[Mapping[str, Any]], intended: Mapping[str, str]) -> Table:
    table = Table(title="One example per status")
    for column in (
        "Invoice",
        "Account",
        "Currency",
        "Gross",
        "Outstanding",
        "Status",
        "Derived",
        "Protected",
    ):
        table.add_column(column)
    seen: set[str] = set()
    for item in sorted(invoices, key=lambda i: str(i.get("invoice_number"))):
        status = str(item.get("status"))
        if status in seen or str(item.get("invoice_number")) not in intended:
            continue
        seen.add(status)
        table.add_row(
            *(
                str(item.get(name, ""))
                for name in (
                    "invoice_number",
                    "account_ref",
                    "currency",
                    "gross",
                    "outstanding",
                    "status",
                    "derived_state",
                    "protected",
                )
            )
        )
    return table


def intended_check(invoices: Sequence[Mapping[str, Any]], intended: Mapping[str, str]) -> str:
    actual = {str(item.get("invoice_number")): str(item.get("status")) for item in invoices}
    differ = sorted(n for n, status in intended.items() if actual.get(n) != status)
    if not differ:
        return f"All {len(intended)} demo invoices have their intended status."
    first = differ[0]
    return (
        f"{len(differ)} of {len(intended)} demo invoices differ from their intended status, "
        f"e.g. {first} is {actual.get(first, 'missing')}, intended {intended[first]}"
    )
