"""The `ledgerlink-exporter` command: `push` (CSV files or ODBC, once or `--every`), and the
commands other installed distributions add (`demo`, from ledgerlink-demo, in development).

Exit codes: 0 done; 1 the server refused a batch or could not be reached; 2 bad input (a file,
the ODBC source, the state file, an option); 130 interrupted (Ctrl-C). Every failure is one
timestamped line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
from rich.console import Console

from ledgerlink_exporter import __version__
from ledgerlink_exporter.client import (
    SECRET_ENV,
    URL_ENV,
    RetryPolicy,
    Signer,
    WebhookClient,
    webhook_url,
)
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.odbc_source import connect, read_odbc
from ledgerlink_exporter.options import InputError, check_url, fail, signer_for
from ledgerlink_exporter.output import dry_run_lines, log, log_lines, progress, summary_lines
from ledgerlink_exporter.push import (
    MAX_BATCH,
    PushPlan,
    PushReport,
    StateTracker,
    clamp_high_water,
    local_now,
    plan_push,
)
from ledgerlink_exporter.push import run_push as send_plan
from ledgerlink_exporter.sage import ExportFileError, SageExport
from ledgerlink_exporter.state import OpenState, PushState, StateFile

INTERRUPTED = 130
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="ledgerlink-exporter")
def app() -> None:
    """ledgerlink-exporter: push Sage 50's audit trail to a ledgerlink service."""


# Commands of other distributions: `make install` adds the demo's (ledgerlink-demo), which
# stays off the Sage PC.
COMMANDS_GROUP = "ledgerlink_exporter.commands"
for _command in importlib.metadata.entry_points(group=COMMANDS_GROUP):
    app.add_command(_command.load(), _command.name)


@app.command(context_settings=_CONTEXT)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path), metavar="[HEADER SPLIT USAGE]")
@click.option(
    "--url",
    envvar=URL_ENV,
    default="",
    help=f"The ledgerlink service (http://host:8000) or its full webhook URL [env: {URL_ENV}].",
)
@click.option(
    "--dsn",
    default=None,
    help="Read Sage over ODBC: a DSN name, or a whole ODBC connection string.",
)
@click.option(
    "--secret", envvar=SECRET_ENV, default=None, help=f"Webhook signing secret [env: {SECRET_ENV}]."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=500,
    show_default=True,
    help="Postings per signed request.",
)
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=None,
    help="State file (SQLite; a JSON one from an older exporter is converted) of what the "
    "server acknowledged; send only changes.",
)
@click.option(
    "--lookback-hours",
    type=click.FloatRange(min=0),
    default=48.0,
    show_default=True,
    help="With --state over ODBC: also read rows modified this long before the last complete push.",
)
@click.option(
    "--every",
    default=None,
    help="Keep running: push again this long after each push starts (15m, 1h, 90s).",
)
@click.option(
    "--history",
    is_flag=True,
    help="Also read the cleared years (AUDIT_HISTORY_*), as a first load does, and send what "
    "the state file does not have.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send nothing.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=6,
    show_default=True,
    help="Tries per batch before giving up.",
)
def push(
    files: tuple[Path, ...],
    url: str,
    dsn: str | None,
    secret: str | None,
    batch_size: int,
    state: Path | None,
    lookback_hours: float,
    every: str | None,
    history: bool,
    dry_run: bool,
    timeout: float,
    max_attempts: int,
) -> None:
    """Push Sage 50 audit-trail postings to ledgerlink as signed batches.

    Read from Sage over ODBC (--dsn) or from the three audit-trail tables exported as CSV:
    AUDIT_HEADER.csv AUDIT_SPLIT.csv AUDIT_USAGE.csv (CURRENCY.csv and the AUDIT_HISTORY_*.csv
    files are read from the same folder when present). A first load also reads the cleared
    years (AUDIT_HISTORY_*).
    """
    try:
        job = _PushJob(
            source=_source(files, dsn),
            url=check_url(url),
            signer=None if dry_run else signer_for(secret),
            store=StateFile(state) if state is not None else None,
            batch_size=batch_size,
            lookback=dt.timedelta(hours=lookback_hours),
            timeout=timeout,
            attempts=max_attempts,
            history=history,
        )
        interval = parse_duration(every) if every is not None else None
    except InputError as exc:
        fail(str(exc), 2)
    try:
        if interval is None:
            raise click.exceptions.Exit(job.run_once())
        _run_every(job, interval)
    except KeyboardInterrupt:
        fail("interrupted; batches the service acknowledged stay acknowledged", INTERRUPTED)


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()] if match else 0
    if seconds < 1:
        raise InputError(f"--every must be a duration like 15m, 1h or 90s, got '{text}'")
    return seconds


def _run_every(job: _PushJob, interval: float, *, runs: int | None = None) -> None:
    """Pushes, then waits out the rest of the interval; a failed push is logged and the next
    one tries again, because a scheduled exporter must outlive a server restart."""
    count = 0
    while runs is None or count < runs:
        started = time.monotonic()
        code = job.run_once()
        count += 1
        wait = max(0.0, interval - (time.monotonic() - started))
        outcome = "done" if code == 0 else f"failed (exit code {code})"
        log(f"push {outcome}; next push in {_human(wait)}")
        time.sleep(wait)


def _human(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


# --- one push -----------------------------------------------------------------------------


# (the earliest modify date to read, None for everything; whether to read the cleared years)
Source = Callable[[dt.datetime | None, bool], SageExport]


def first_load(state: PushState) -> bool:
    """No complete push yet (no --state, a new state file, or an interrupted first push):
    read the cleared years too."""
    return state.high_water is None


@dataclass(frozen=True)
class _PushJob:
    source: Source
    url: str
    signer: Signer | None
    store: StateFile | None
    batch_size: int
    lookback: dt.timedelta
    timeout: float
    attempts: int
    history: bool = False

    def run_once(self) -> int:
        try:
            with self._open_state() as opened:
                return self._push(opened)
        except ExportFileError as exc:
            log(f"error: {exc}", err=True)
            return 2

    def _open_state(self) -> contextlib.AbstractContextManager[OpenState | None]:
        if self.store is None:
            return contextlib.nullcontext()
        return self.store.open(dry_run=self.signer is None)

    def _push(self, opened: OpenState | None) -> int:
        prior = opened.state if opened is not None else PushState()
        now = local_now()
        future = clamp_high_water(prior, now)
        if future is not None:
            log(f"warning: {future}", err=True)
        history = self.history or first_load(prior)
        # A mark in the future cannot say what was sent: read everything once.
        trusted = prior.high_water if future is None else None
        since = trusted - self.lookback if trusted is not None else None
        export = self.source(since, history)
        plan = plan_push(export, prior, batch_size=self.batch_size, now=now)
        for warning in plan.warnings:
            log(f"warning: {warning}", err=True)
        if self.signer is None:
            log_lines(dry_run_lines(plan, webhook_url(self.url)))
            return 0
        tracker = StateTracker(opened) if opened is not None else None
        report = asyncio.run(self._deliver(plan, self.signer, tracker))
        log_lines(summary_lines(report))
        if report.error:
            log(f"error: {report.error}", err=True)
            return 1
        return 0

    async def _deliver(
        self, plan: PushPlan, signer: Signer, tracker: StateTracker | None
    ) -> PushReport:
        console = Console(soft_wrap=True, highlight=False)
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            client = WebhookClient(
                http,
                self.url,
                signer,
                policy=RetryPolicy(max_attempts=self.attempts),
                on_retry=lambda line: log(line, err=True),
            )
            with progress(console, plan.postings) as advance:
                return await send_plan(plan, client.deliver, tracker=tracker, on_batch=advance)


def _source(files: Sequence[Path], dsn: str | None) -> Source:
    if dsn is not None and files:
        raise InputError("give either --dsn or the three CSV files, not both")
    if dsn is not None:
        return lambda since, history: _read_odbc(dsn, since, history)
    if len(files) != 3:
        raise InputError(
            "expected AUDIT_HEADER.csv AUDIT_SPLIT.csv AUDIT_USAGE.csv (or --dsn), "
            f"got {len(files)} files"
        )
    header, split, usage = files
    # CSV files are read whole: the look-back would save nothing.
    return lambda since, history: read_export(header, split, usage, history=history)


def _read_odbc(dsn: str, since: dt.datetime | None, history: bool) -> SageExport:
    connection = connect(dsn)
    try:
        return read_odbc(connection, since, history=history)
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> None:
    app.main(args=argv, prog_name="ledgerlink-exporter")


if __name__ == "__main__":
    main()
