"""The Sage-side exporter on a big company: peak memory and time of `ledgerlink-exporter push
--dry-run` over CSV exports of 1,000,000 AUDIT_HEADER rows (100,000 in quick mode), beside
the cost of merely reading the same files' rows with the csv module; and its state file at
that size: recording every acknowledged batch of a first load (950,000 postings in batches of
500, delivered to a stand-in that acknowledges at once), beside the earlier exporter's JSON
file written again whole; a dry run over the same rows with that state; and converting the
earlier exporter's JSON file of that state.

The company is generated as Sage exports it (the columns of tests/fixtures/sage, BOM, every
field quoted, CRLF): invoices of two lines and receipts of one, each receipt allocated to
the invoice before it (the allocation stored from both sides for one pair in ten, as Sage
sometimes does), one header in twenty a supplier or bank row, a cleared year in the
AUDIT_HISTORY_* files (a first load reads it). Target (issue 24): under 300 MB, what a 32-bit
Python on the Sage PC can hold.

Each run is its own process (`python -m ledgerlink_exporter`), measured by the kernel: its
peak RSS (VmHWM) and CPU (user + system, from wait4), so nothing of this process counts.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchResult

TARGET_MB = 300.0
FULL_ROWS = 1_000_000
QUICK_ROWS = 100_000
HISTORY_SHARE = 20  # one header in twenty is in the cleared year's files
MB = 2**20
SAMPLE_SECONDS = 0.02

HEADER = (
    "TRAN_NUMBER,HEADER_NUMBER,ITEM_COUNT,TYPE,DATE,ACCOUNT_REF,INV_REF,DETAILS,DUE_DATE,"
    "NET_AMOUNT,TAX_AMOUNT,GROSS_AMOUNT,OUTSTANDING,PAID_FLAG,DELETED_FLAG,FOREIGN_NET_AMOUNT,"
    "FOREIGN_TAX_AMOUNT,FOREIGN_GROSS_AMOUNT,FOREIGN_OUTSTANDING,CURRENCY,FOREIGN_RATE,"
    "REVAL_TRANSACTION_FLAG,RECORD_MODIFY_DATE"
).split(",")
SPLIT = (
    "TRAN_NUMBER,SPLIT_NUMBER,HEADER_NUMBER,TYPE,DATE,ACCOUNT_REF,NOMINAL_CODE,INV_REF,DETAILS,"
    "TAX_CODE,NET_AMOUNT,TAX_AMOUNT,GROSS_AMOUNT,DELETED_FLAG,RECORD_MODIFY_DATE"
).split(",")
USAGE = (
    "TYPE,USAGE_NUMBER,SPLIT_NUMBER,SPLIT_CROSSREF,REFERENCE,DETAILS,USER_NAME,DATE,AMOUNT,"
    "FOREIGN_AMOUNT,DELETED_FLAG,RECORD_MODIFY_DATE"
).split(",")
TABLES = ("HEADER", "SPLIT", "USAGE")


class _Writers:
    """The six files (live and cleared year), written as Sage's export writes them."""

    def __init__(self, folder: Path) -> None:
        self.files = []
        self.writers: dict[str, Any] = {}
        for prefix in ("AUDIT_", "AUDIT_HISTORY_"):
            for table, columns in zip(TABLES, (HEADER, SPLIT, USAGE), strict=True):
                file = (folder / f"{prefix}{table}.csv").open("w", newline="", encoding="utf-8-sig")
                writer = csv.writer(file, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
                writer.writerow(columns)
                self.files.append(file)
                self.writers[prefix + table] = writer

    def close(self) -> None:
        for file in self.files:
            file.close()


def write_company(folder: Path, headers: int) -> list[Path]:
    """AUDIT_HEADER.csv, AUDIT_SPLIT.csv and AUDIT_USAGE.csv (and the AUDIT_HISTORY_* files)
    with `headers` header rows in all; returns the three live files."""
    folder.mkdir(parents=True, exist_ok=True)
    out = _Writers(folder)
    split = usage = 0
    invoice_line = None  # the second line of the header before, when it is an invoice
    for number in range(1, headers + 1):
        # An invoice and its receipt are cleared together, as Sage's Clear Audit Trail does.
        history = (number + 1) // 2 % HISTORY_SHARE == 1
        prefix = "AUDIT_HISTORY_" if history else "AUDIT_"
        customer = f"CUST{number % 5000:04d}"
        day = f"{1 + number % 28:02d}/{1 + number % 12:02d}/{2015 + number % 10}"
        modified = f"{day} 10:{number % 60:02d}:00"
        tran = split + 1
        if number % 20 == 7:
            kind, lines, gross, reference, details = "PI", 1, "60", f"P{number}", "Supplies"
        elif number % 2:
            kind, lines, gross = "SI", 2, "240"
            reference, details = f"{number:08d}", "Goods and services"
        else:
            kind, lines, gross, reference, details = "SR", 1, "240", "BACS", "Sales Receipt"
        outstanding = "0" if kind == "SI" else ""
        out.writers[prefix + "HEADER"].writerow(
            (
                tran,
                number,
                lines,
                kind,
                f"{day} 00:00:00",
                customer,
                reference,
                details,
                "",
                "200",
                "40",
                gross,
                outstanding,
                "Y",
                "0",
                "200",
                "40",
                gross,
                outstanding,
                "1",
                "1",
                "0",
                modified,
            )
        )
        for _ in range(lines):
            split += 1
            out.writers[prefix + "SPLIT"].writerow(
                (
                    split,
                    split,
                    number,
                    kind,
                    f"{day} 00:00:00",
                    customer,
                    "4000",
                    reference,
                    details,
                    "T1",
                    "100",
                    "20",
                    "120",
                    "0",
                    modified,
                )
            )
        if kind == "SR" and invoice_line is not None:
            rows = [(invoice_line, tran)]
            if number % 10 == 0:
                rows.append((tran, invoice_line))  # the same allocation from the other side
            for first, second in rows:
                usage += 1
                out.writers[prefix + "USAGE"].writerow(
                    (
                        "SR",
                        usage,
                        first,
                        second,
                        reference,
                        f"240 from SR {tran}",
                        "MANAGER",
                        f"{day} 00:00:00",
                        "240",
                        "240",
                        "0",
                        modified,
                    )
                )
        invoice_line = split if kind == "SI" else None
    out.close()
    return [folder / f"AUDIT_{table}.csv" for table in TABLES]


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float
    peak_mb: float
    output: str
    # Share of the machine's CPU that other processes took meanwhile.
    others: float = 0.0

    def last_line(self) -> str:
        return self.output.strip().splitlines()[-1]


def measure(args: list[str]) -> Measured:
    """One Python process: its peak RSS, the kernel's high-water mark of its own memory
    (VmHWM, read until it exits: the figure only grows), and its CPU from wait4. Not
    ru_maxrss, which also counts the memory of the process that started it (Linux carries the
    parent's high-water mark over the exec)."""
    started = time.perf_counter()
    busy = _machine_busy()
    peak_kib = 0
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, *args], stdout=output, stderr=subprocess.STDOUT, env=os.environ
        )
        while True:
            peak_kib = max(peak_kib, _high_water_kib(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(SAMPLE_SECONDS)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{args} exited with {process.returncode}: {text[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, _machine_busy() - busy - cpu) / (seconds * (os.cpu_count() or 1))
    return Measured(seconds, cpu, peak_kib * 1024 / MB, text, others)


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (psutil, as bench.common.CpuMeter)."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _high_water_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


READ_ONLY = """
import csv, sys
rows = 0
for path in sys.argv[1:]:
    with open(path, newline="", encoding="utf-8-sig") as file:
        for row in csv.reader(file):
            rows += 1
print(rows)
"""


# A first load through the exporter's own planning and state recording, to a stand-in that
# acknowledges every batch at once: the wall and CPU time of recording each batch.
FIRST_LOAD = """
import asyncio, json, sys, time
from pathlib import Path
from ledgerlink_exporter.client import Acknowledgement
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import StateTracker, plan_push, run_push
from ledgerlink_exporter.state import StateFile

header, split, usage, state, size = sys.argv[1:]
export = read_export(Path(header), Path(split), Path(usage), history=True)
plan = plan_push(export, None, batch_size=int(size))
saves = []

def written():
    # Bytes this process has handed to write(): the journal and the pages of a transaction.
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])

class Timed(StateTracker):
    def acknowledge(self, batch):
        wall, cpu, bytes = time.perf_counter(), time.process_time(), written()
        super().acknowledge(batch)
        saves.append(
            (time.perf_counter() - wall, time.process_time() - cpu, written() - bytes)
        )

async def deliver(body, webhook_id):
    return Acknowledgement(False, webhook_id, 0, 0, 0, 0)

with StateFile(Path(state)).open() as opened:
    asyncio.run(run_push(plan, deliver, tracker=Timed(opened)))
print(json.dumps({"saves": saves, "postings": plan.postings}))
"""
# Every acknowledged hash of a state file looked up, a plan's chunk at a time.
LOOKUPS = """
import sys, time
from pathlib import Path
from ledgerlink_exporter.state import StateFile, known_hashes

with StateFile(Path(sys.argv[1])).open(dry_run=True) as opened:
    numbers = list(opened.state.acknowledged)
    started = time.process_time()
    found = 0
    for start in range(0, len(numbers), 1000):
        found += len(known_hashes(opened.state.acknowledged, numbers[start : start + 1000]))
    print(found, time.process_time() - started)
"""
CONVERT = """
import sys
from pathlib import Path
from ledgerlink_exporter.state import StateFile

with StateFile(Path(sys.argv[1])).open() as opened:
    print(len(opened.state.acknowledged))
"""
BATCH = 500
# Saves compared at the start and at the end of a first load.
EDGE = 50
JSON_REPEATS = 3


def earlier_save(path: Path, high_water: str | None, acknowledged: dict[int, str]) -> None:
    """The earlier exporter's StateFile.save (before the state became a database): the whole
    map as JSON in a temporary file, synced, moved over the old one."""
    payload = {
        "version": 1,
        "high_water": high_water,
        "acknowledged": {str(k): v for k, v in sorted(acknowledged.items())},
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as file:
        file.write(json.dumps(payload).encode())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _earlier_saves(
    path: Path, high_water: str | None, acknowledged: dict[int, str], size: int
) -> float:
    """Median seconds of the earlier exporter's save of the first `size` entries."""
    part = dict(sorted(acknowledged.items())[:size])
    times = []
    for _ in range(JSON_REPEATS):
        started = time.perf_counter()
        earlier_save(path, high_water, part)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _state_entries(path: Path) -> tuple[str | None, dict[int, str]]:
    import sqlite3

    with sqlite3.connect(path) as db:
        (high_water,) = db.execute("SELECT high_water FROM mark").fetchone()
        acknowledged = dict(db.execute("SELECT tran_number, hash FROM acknowledged"))
    db.close()
    return high_water, acknowledged


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def state_results(
    folder: Path, files: list[Path], headers: int, without: Measured
) -> list[BenchResult]:
    state = folder / "push-state.db"
    first_load = measure(["-c", FIRST_LOAD, *map(str, files), str(state), str(BATCH)])
    recorded = json.loads(first_load.last_line())
    saves: list[list[float]] = recorded["saves"]
    postings: int = recorded["postings"]
    walls, cpus, written = ([save[i] for save in saves] for i in range(3))
    first, last = statistics.median(walls[:EDGE]), statistics.median(walls[-EDGE:])
    cpu_first, cpu_last = statistics.median(cpus[:EDGE]), statistics.median(cpus[-EDGE:])
    kib_first = statistics.median(written[:EDGE]) / 1024
    kib_last = statistics.median(written[-EDGE:]) / 1024
    recording = sum(walls)
    recording_cpu = sum(cpus)
    state_mb = state.stat().st_size / MB
    lookups = measure(["-c", LOOKUPS, str(state)])
    found, lookup_cpu = lookups.last_line().split()

    high_water, acknowledged = _state_entries(state)
    earlier = folder / "push-state.json"
    json_first = _earlier_saves(earlier, high_water, acknowledged, EDGE * BATCH)
    json_last = _earlier_saves(earlier, high_water, acknowledged, len(acknowledged))
    json_mb = earlier.stat().st_size / MB
    # The earlier file grew by a batch each save: its time grows linearly between the two.
    json_estimate = len(saves) * (json_first + json_last) / 2
    del acknowledged

    # --history: the same rows as the dry run without a state file reads (a first load), each
    # posting's hash looked up.
    push = ["push", "--url", "http://ledgerlink.invalid", "--dry-run", "--history"]
    push += ["--state", str(state)]
    with_state = measure(["-m", "ledgerlink_exporter", *push, *map(str, files)])
    summary = next(
        (line.split(" ", 1)[1] for line in with_state.output.splitlines() if "Dry run" in line),
        "",
    )
    unchanged = next(
        (line.split(", ")[1] for line in with_state.output.splitlines() if "Skipped:" in line),
        "",
    )
    converting = measure(["-c", CONVERT, str(earlier)])
    converted_mb = earlier.stat().st_size / MB

    entries = f"{postings:,}"
    flat = cpu_last <= 1.5 * cpu_first and kib_last <= 1.5 * kib_first
    return [
        BenchResult(
            name=f"exporter: dry run of {headers:,} header rows with {entries} transactions "
            "acknowledged in the state file, peak RSS",
            value=with_state.peak_mb,
            unit="MB",
            baseline_name="the same dry run without a state file",
            baseline_value=without.peak_mb,
            target=f"<= {TARGET_MB:.0f} MB",
            met=with_state.peak_mb < TARGET_MB,
            notes=f"{summary.strip()}; {unchanged}; state file {state_mb:.0f} MB (SQLite); "
            f"other processes took {with_state.others:.0%} of the machine",
        ),
        BenchResult(
            name=f"exporter: dry run of {headers:,} header rows with {entries} acknowledged, time",
            value=with_state.seconds,
            unit="s",
            baseline_name="the same dry run without a state file",
            baseline_value=without.seconds,
            notes=f"CPU per header row: {with_state.cpu_seconds / headers * 1e6:.1f} us "
            f"(without a state file {without.cpu_seconds / headers * 1e6:.1f} us); looking up "
            f"all {int(found):,} acknowledged hashes alone, a plan's chunk of 1,000 at a time: "
            f"{float(lookup_cpu):.2f} s of CPU, {float(lookup_cpu) / int(found) * 1e6:.2f} us "
            f"per posting; other processes took {with_state.others:.0%} of the machine",
        ),
        BenchResult(
            name=f"exporter: recording one acknowledged batch of {BATCH} with {entries} already "
            f"in the state file (median of the last {EDGE} of a first load's {len(saves):,})",
            value=last * 1e3,
            unit="ms",
            baseline_name=f"the earlier JSON state file written whole with {entries} entries",
            baseline_value=json_last * 1e3,
            target=f"flat: CPU and bytes written per batch <= 1.5x the first {EDGE} batches'",
            met=flat,
            notes=f"median per batch, first {EDGE} (up to {EDGE * BATCH:,} acknowledged) -> "
            f"last {EDGE}: wall {_ms(first)} -> {_ms(last)}, CPU {_ms(cpu_first)} -> "
            f"{_ms(cpu_last)}, written {kib_first:.0f} -> {kib_last:.0f} KiB (journal and "
            f"pages: one transaction, synchronous FULL; the wall time beyond the CPU is the "
            f"disk's); every batch: p99 {_ms(statistics.quantiles(walls, n=100)[98])}, max "
            f"{_ms(max(walls))}; {recording_cpu / postings * 1e6:.1f} us of CPU per recorded "
            f"posting; the JSON file: {_ms(json_first)} at {EDGE * BATCH:,} entries, "
            f"{_ms(json_last)} at {entries} ({json_mb:.0f} MB), median of {JSON_REPEATS} saves "
            f"each; other processes took {first_load.others:.0%} of the machine",
        ),
        BenchResult(
            name=f"exporter: recording every batch of a first load of {entries} postings "
            f"({len(saves):,} batches of {BATCH}), total",
            value=recording,
            unit="s",
            baseline_name="the earlier JSON state file, estimated",
            baseline_value=json_estimate,
            notes=f"CPU {recording_cpu:.1f} s in all; the first load's process (reading, "
            f"planning, making the batches, recording) {first_load.seconds:.0f} s, peak RSS "
            f"{first_load.peak_mb:.0f} MB; baseline estimated from the JSON file's save at "
            f"{EDGE * BATCH:,} and at {entries} entries measured in this run, growing linearly "
            f"between them",
        ),
        BenchResult(
            name=f"exporter: converting the earlier exporter's JSON state file of {entries} "
            "entries (once, on the first push after the upgrade), peak RSS",
            value=converting.peak_mb,
            unit="MB",
            baseline_name="the dry run with the converted state",
            baseline_value=with_state.peak_mb,
            target=f"<= {TARGET_MB:.0f} MB",
            met=converting.peak_mb < TARGET_MB,
            notes=f"{converting.seconds:.1f} s ({converting.cpu_seconds:.1f} s CPU); "
            f"{json_mb:.0f} MB of JSON became {converted_mb:.0f} MB of SQLite",
        ),
    ]


def run(quick: bool) -> list[BenchResult]:
    headers = QUICK_ROWS if quick else FULL_ROWS
    with tempfile.TemporaryDirectory(prefix="ledgerlink-bench-exporter-") as tmp:
        folder = Path(tmp)
        timer = time.perf_counter()
        files = write_company(folder, headers)
        generated = time.perf_counter() - timer
        every_file = sorted(str(path) for path in folder.glob("*.csv"))
        size_mb = sum(Path(path).stat().st_size for path in every_file) / MB
        baseline = measure(["-c", READ_ONLY, *every_file])
        push = ["push", "--url", "http://ledgerlink.invalid", "--dry-run"]
        dry_run = measure(["-m", "ledgerlink_exporter", *push, *map(str, files)])
        with_state = state_results(folder, files, headers, dry_run)
    summary = next(
        (line.split(" ", 1)[1] for line in dry_run.output.splitlines() if "Dry run" in line), ""
    )
    context = (
        f"{headers:,} header rows ({size_mb:.0f} MB of CSV in six files, generated in "
        f"{generated:.0f}s); {summary.strip()}"
    )
    cpu_per_row = dry_run.cpu_seconds / headers * 1e6
    base_cpu_per_row = baseline.cpu_seconds / headers * 1e6
    return [
        BenchResult(
            name=f"exporter: dry run of {headers:,} header rows, peak RSS",
            value=dry_run.peak_mb,
            unit="MB",
            baseline_name="reading the rows with the csv module",
            baseline_value=baseline.peak_mb,
            target=f"<= {TARGET_MB:.0f} MB",
            met=dry_run.peak_mb < TARGET_MB,
            notes=context,
        ),
        BenchResult(
            name=f"exporter: dry run of {headers:,} header rows, time",
            value=dry_run.seconds,
            unit="s",
            baseline_name="reading the rows with the csv module",
            baseline_value=baseline.seconds,
            notes=f"CPU per header row: {cpu_per_row:.1f} us (reading the rows alone "
            f"{base_cpu_per_row:.1f} us); {dry_run.cpu_seconds:.0f} CPU seconds in all; other "
            f"processes took {dry_run.others:.0%} of the machine",
        ),
        *with_state,
    ]
