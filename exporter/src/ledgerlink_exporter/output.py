"""What the exporter prints: every line stamped with the local time and its offset, so a
Task Scheduler log read the next morning says when each thing happened."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledgerlink_exporter.push import Batch, PushPlan, PushReport

_PREVIEW_POSTINGS = 3


def stamp() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def log(message: str, *, err: bool = False) -> None:
    stream: TextIO = sys.stderr if err else sys.stdout
    for line in message.splitlines() or [""]:
        stream.write(f"{stamp()} {line}\n")
    stream.flush()


def log_lines(lines: Sequence[str]) -> None:
    for line in lines:
        log(line)


@contextlib.contextmanager
def progress(console: Console, total: int) -> Iterator[Callable[[Batch], None]]:
    columns = (
        TextColumn("Pushing postings"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # A scheduled task writes to a log, not a terminal: no bar there, just the summary.
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task("push", total=total)
        yield lambda batch: bar.advance(task, len(batch.postings))


def dry_run_lines(plan: PushPlan, target: str) -> list[str]:
    by_type = ", ".join(f"{kind} {count}" for kind, count in plan.postings_by_type().items())
    lines = [
        f"Dry run, nothing sent: would send {plural(plan.postings, 'posting')} in "
        f"{plural(len(plan.batches), 'batch')} to {target}",
        f"Postings by type: {by_type or 'none'}",
        *history_lines(plan),
        skipped_line(plan),
    ]
    # Only the first batches are made: the plan's batches are made as they are reached.
    postings = (p for batch in plan.batches for p in batch.postings)
    preview = [p.to_wire() for p in itertools.islice(postings, _PREVIEW_POSTINGS)]
    if preview:
        lines.append(f"First {plural(len(preview), 'posting')}:")
        lines.extend(json.dumps(preview, indent=2, ensure_ascii=False).splitlines())
    return lines


def summary_lines(report: PushReport) -> list[str]:
    """What happened, in the words of docs/EXPORTER.md's "What the summary means"."""
    fresh = report.batches_acknowledged - report.batches_replayed
    sent = report.postings_applied + report.postings_unchanged
    lines = [
        f"Sent: {plural(sent, 'posting')} in {plural(fresh, 'batch')} ({report.postings_applied} "
        f"applied, {report.postings_unchanged} unchanged; "
        f"{plural(report.invoices_affected, 'invoice')} affected)"
    ]
    if report.batches_replayed:
        lines.append(
            f"Replayed: {plural(report.batches_replayed, 'batch')} "
            f"({plural(report.postings_replayed, 'posting')}) the server already had"
        )
    if report.error:
        lines.append(
            f"Rejected: {plural(report.postings_rejected, 'posting')}; "
            f"not sent: {plural(report.postings_not_sent, 'posting')}"
        )
    lines += history_lines(report.plan)
    lines.append(skipped_line(report.plan))
    return lines


def history_lines(plan: PushPlan) -> list[str]:
    if not plan.from_history:
        return []
    return [f"Cleared years: {plural(plan.from_history, 'posting')} read from AUDIT_HISTORY_*"]


def skipped_line(plan: PushPlan) -> str:
    kinds = ", ".join(f"{kind} {count}" for kind, count in plan.skipped_types.items())
    other = sum(plan.skipped_types.values())
    return (
        f"Skipped: {plural(other, 'non-customer row')}" + (f" ({kinds})" if kinds else "") + ", "
        f"{plural(plan.unchanged, 'posting')} unchanged since the last push, "
        f"{plural(plan.unlinked_allocations, 'allocation')} not against an invoice"
    )


def plural(count: int, noun: str) -> str:
    many = noun + ("es" if noun.endswith("ch") else "s")
    return f"{count} {noun if count == 1 else many}"
