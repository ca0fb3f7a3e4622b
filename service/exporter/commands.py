"""`ledgerlink push` and `ledgerlink demo`, added to the main CLI by `register(app)`.

Exit codes: 0 done; 1 the server refused a batch or could not be reached; 2 bad input (a file,
the state file, an option). Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from standardwebhooks.webhooks import Webhook

from service.exporter.client import (
    WEBHOOK_PATH,
    RetryPolicy,
    ServiceCallError,
    WebhookClient,
    list_invoices,
    make_webhook,
    trigger_sync,
)
from service.exporter.demo import STATUSES, DemoCompany, generate_company, write_export
from service.exporter.push import (
    MAX_BATCH,
    Batch,
    PushPlan,
    PushReport,
    StateTracker,
    plan_push,
    run_push,
)
from service.exporter.sage_csv import ExportFileError, SageExport, read_export
from service.exporter.state import PushState, StateFile

SECRET_ENV = "LEDGERLINK_EXPORTER_SECRET"
API_KEY_ENV = "LEDGERLINK_API_KEY"
_PREVIEW_POSTINGS = 3


class InputError(Exception):
    """A wrong option or a missing secret; `str()` is one line."""


def register(app: typer.Typer) -> None:
    app.command("push", no_args_is_help=True)(push)
    app.command("demo")(demo)


def push(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="HEADER.csv [SPLIT.csv] USAGE.csv",
            help="Sage's AUDIT_HEADER, AUDIT_SPLIT (optional) and AUDIT_USAGE as CSV.",
            show_default=False,
        ),
    ],
    url: Annotated[str, typer.Option(help="The ledgerlink service, e.g. http://127.0.0.1:8000.")],
    secret: Annotated[
        str | None,
        typer.Option(
            envvar=SECRET_ENV, help="Webhook signing secret, whsec_...", show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH, help="Postings per signed request.")
    ] = 500,
    state: Annotated[
        Path | None,
        typer.Option(help="JSON file of what the server acknowledged; send only changes."),
    ] = None,
    lookback_hours: Annotated[
        float,
        typer.Option(
            min=0,
            help="With --state: also re-check rows modified this long before "
            "the last complete push.",
        ),
    ] = 48.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send nothing.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for an answer.")] = 30.0,
    max_attempts: Annotated[
        int, typer.Option(min=1, max=100, help="Tries per batch before giving up.")
    ] = 6,
) -> None:
    """Push Sage 50 audit-trail CSV exports to ledgerlink as signed batches of postings."""
    try:
        header, split, usage = _export_paths(files)
        _check_url(url)
        webhook = None if dry_run else _webhook(secret, None)
        store = StateFile(state) if state is not None else None
        prior = store.load() if store is not None else PushState()
        export = read_export(header, split, usage)
        lookback = dt.timedelta(hours=lookback_hours)
        plan = plan_push(export, prior, batch_size=batch_size, lookback=lookback)
        if webhook is None:
            _echo_lines(dry_run_lines(plan, url))
            return
        tracker = StateTracker(store, prior) if store is not None else None
        console = Console(soft_wrap=True, highlight=False)
        report = asyncio.run(
            _deliver(
                plan, url, webhook, tracker, console, http_timeout=timeout, attempts=max_attempts
            )
        )
    except (ExportFileError, InputError) as exc:
        _fail(str(exc), 2)
    _echo_lines(summary_lines(report))
    if report.error:
        _fail(report.error, 1)


def demo(
    url: Annotated[str, typer.Option(help="The ledgerlink service.")] = "http://127.0.0.1:8000",
    customers: Annotated[int, typer.Option(min=2, max=100_000, help="Customer accounts.")] = 50,
    seed: Annotated[int, typer.Option(help="Same seed, same company.")] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the CSV files (default: DATA_DIR/demo).", show_default=False
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            envvar=SECRET_ENV,
            help="Webhook signing secret (default: read from DATA_DIR/webhook-secret).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_ENV,
            help="API key with write scope (default: read from DATA_DIR/admin-api-key).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="The dev server's data directory (`make run` writes the keys).")
    ] = Path(".data"),
) -> None:
    """Generate a realistic Sage company, push it, sync, and show the invoice statuses."""
    console = Console(soft_wrap=True, highlight=False)
    try:
        _check_url(url)
        webhook = _webhook(secret, data_dir / "webhook-secret")
        key = api_key or _key_file(data_dir / "admin-api-key", "API key", "--api-key", API_KEY_ENV)
        company = generate_company(customers=customers, seed=seed)
        directory = out if out is not None else data_dir / "demo"
        exports = _write_and_read(company, directory)
        typer.echo(f"Wrote the demo company ({customers} customers, seed {seed}) to {directory}")
        asyncio.run(_run_demo(company, exports, url, webhook, key, console))
    except (ExportFileError, InputError) as exc:
        _fail(str(exc), 2)
    except ServiceCallError as exc:
        _fail(str(exc), 1)


# --- push ---------------------------------------------------------------------------------


def _export_paths(files: Sequence[Path]) -> tuple[Path, Path | None, Path]:
    if len(files) == 2:
        return files[0], None, files[1]
    if len(files) == 3:
        return files[0], files[1], files[2]
    raise InputError(f"expected HEADER.csv [SPLIT.csv] USAGE.csv, got {len(files)} files")


def _check_url(url: str) -> None:
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        host = ""
    if not url.startswith(("http://", "https://")) or not host:
        raise InputError(f"--url must be an http:// or https:// URL, got '{url}'")


def _webhook(secret: str | None, key_file: Path | None) -> Webhook:
    if not secret and key_file is not None:
        secret = _key_file(key_file, "webhook secret", "--secret", SECRET_ENV)
    if not secret:
        raise InputError(f"no webhook secret: pass --secret or set {SECRET_ENV}")
    try:
        return make_webhook(secret.strip())
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _key_file(path: Path, what: str, option: str, env: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        value = ""
    if not value:
        raise InputError(
            f"no {what}: pass {option}, set {env}, or start the dev server once so {path} exists"
        )
    return value


async def _deliver(
    plan: PushPlan,
    url: str,
    webhook: Webhook,
    tracker: StateTracker | None,
    console: Console,
    *,
    http_timeout: float,
    attempts: int,
) -> PushReport:
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        client = WebhookClient(http, url, webhook, policy=RetryPolicy(max_attempts=attempts))
        with _progress(console, plan.postings) as advance:
            return await run_push(plan, client.deliver, tracker=tracker, on_batch=advance)


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Iterator[Callable[[Batch], None]]:
    columns = (
        TextColumn("Pushing postings"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # A scheduled task writes to a log, not a terminal: no bar there, just the summary.
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as progress:
        task = progress.add_task("push", total=total)
        yield lambda batch: progress.advance(task, len(batch.postings))


def dry_run_lines(plan: PushPlan, url: str) -> list[str]:
    target = url.rstrip("/") + WEBHOOK_PATH
    by_type = ", ".join(f"{kind} {count}" for kind, count in plan.postings_by_type().items())
    lines = [
        f"Dry run, nothing sent: would send {_n(plan.postings, 'posting')} in "
        f"{_n(len(plan.batches), 'batch')} to {target}",
        f"Postings by type: {by_type or 'none'}",
        _skipped_line(plan),
    ]
    preview = [p.to_wire() for batch in plan.batches for p in batch.postings][:_PREVIEW_POSTINGS]
    if preview:
        lines.append(f"First {_n(len(preview), 'posting')}:")
        lines.append(orjson.dumps(preview, option=orjson.OPT_INDENT_2).decode())
    return lines


def summary_lines(report: PushReport) -> list[str]:
    """What happened, in the words of the README's "What the summary means"."""
    fresh = report.batches_acknowledged - report.batches_replayed
    sent = report.postings_applied + report.postings_unchanged
    lines = [
        f"Sent: {_n(sent, 'posting')} in {_n(fresh, 'batch')} ({report.postings_applied} "
        f"applied, {report.postings_unchanged} unchanged; "
        f"{_n(report.invoices_affected, 'invoice')} affected)"
    ]
    if report.batches_replayed:
        lines.append(
            f"Replayed: {_n(report.batches_replayed, 'batch')} "
            f"({_n(report.postings_replayed, 'posting')}) the server already had"
        )
    if report.error:
        lines.append(
            f"Rejected: {_n(report.postings_rejected, 'posting')}; "
            f"not sent: {_n(report.postings_not_sent, 'posting')}"
        )
    lines.append(_skipped_line(report.plan))
    return lines


def _skipped_line(plan: PushPlan) -> str:
    kinds = ", ".join(f"{kind} {count}" for kind, count in plan.skipped_types.items())
    other = sum(plan.skipped_types.values())
    return (
        f"Skipped: {_n(other, 'non-customer row')}" + (f" ({kinds})" if kinds else "") + ", "
        f"{_n(plan.unchanged, 'posting')} unchanged since the last push, "
        f"{_n(plan.unlinked_allocations, 'allocation')} not against an invoice"
    )


def _n(count: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{count} {noun if count == 1 else plural}"


# --- demo ---------------------------------------------------------------------------------


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
        exports.append(read_export(*paths))
    return exports


async def _run_demo(
    company: DemoCompany,
    exports: Sequence[SageExport],
    url: str,
    webhook: Webhook,
    api_key: str,
    console: Console,
) -> None:
    async with httpx.AsyncClient(timeout=120.0) as http:
        client = WebhookClient(http, url, webhook)
        for index, export in enumerate(exports, start=1):
            plan = plan_push(export, None, batch_size=500, lookback=dt.timedelta(0))
            with _progress(console, plan.postings) as advance:
                report = await run_push(plan, client.deliver, on_batch=advance)
            typer.echo(f"Export {index} of {len(exports)}:")
            _echo_lines(summary_lines(report))
            if report.error:
                raise ServiceCallError(report.error)
        run = await trigger_sync(http, url, api_key)
        typer.echo(sync_run_line(run))
        invoices = await list_invoices(http, url, api_key)
    intended = company.intended_statuses()
    console.print(status_table(invoices, intended))
    console.print(example_table(invoices, intended))
    typer.echo(intended_check(invoices, intended))


def sync_run_line(run: Mapping[str, Any]) -> str:
    counts = run.get("counts")
    detail = ""
    if isinstance(counts, dict) and counts:
        detail = " (" + ", ".join(f"{name} {value}" for name, value in counts.items()) + ")"
    return f"Sync run {run.get('run_id', '?')}: {run.get('status', '?')}{detail}"


def status_table(invoices: Sequence[Mapping[str, Any]], intended: Mapping[str, str]) -> Table:
    counts = Counter(str(item.get("status")) for item in invoices)
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
    for column in ("Invoice", "Account", "Gross", "Outstanding", "Status", "Derived", "Protected"):
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


# --- output -------------------------------------------------------------------------------


def _echo_lines(lines: Sequence[str]) -> None:
    for line in lines:
        typer.echo(line)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
