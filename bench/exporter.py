"""The Sage-side exporter on a big company: peak memory and time of `ledgerlink-exporter push
--dry-run` over CSV exports of 1,000,000 AUDIT_HEADER rows (100,000 in quick mode), beside
the cost of merely reading the same files' rows with the csv module.

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
import os
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


def measure(args: list[str]) -> Measured:
    """One Python process: its peak RSS, the kernel's high-water mark of its own memory
    (VmHWM, read until it exits: the figure only grows), and its CPU from wait4. Not
    ru_maxrss, which also counts the memory of the process that started it (Linux carries the
    parent's high-water mark over the exec)."""
    started = time.perf_counter()
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
    return Measured(seconds, usage.ru_utime + usage.ru_stime, peak_kib * 1024 / MB, text)


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
            f"{base_cpu_per_row:.1f} us); {dry_run.cpu_seconds:.0f} CPU seconds in all",
        ),
    ]
