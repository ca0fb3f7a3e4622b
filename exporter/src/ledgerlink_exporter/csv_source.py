"""Sage 50's audit-trail tables exported as CSV files (Sage's own export, or PowerShell
`Export-Csv` over its ODBC tables): with or without a byte-order mark, CRLF or LF line ends,
every field quoted or none, and any extra columns Sage has.

Beside AUDIT_HEADER.csv, in the same folder, two more exports are read when present:
CURRENCY.csv (to name a foreign currency) and, when `history` is asked for, the three
AUDIT_HISTORY_*.csv files of the cleared years (all three or none)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from ledgerlink_exporter.sage import (
    CURRENCY_COLUMNS,
    HEADER_COLUMNS,
    SPLIT_COLUMNS,
    USAGE_COLUMNS,
    ExportFileError,
    Row,
    SageExport,
    Tables,
    build_export,
    check_columns,
)

CURRENCY_FILE = "CURRENCY.csv"
HISTORY_FILES = (
    "AUDIT_HISTORY_HEADER.csv",
    "AUDIT_HISTORY_SPLIT.csv",
    "AUDIT_HISTORY_USAGE.csv",
)


def read_export(
    header_path: Path, split_path: Path, usage_path: Path, *, history: bool = False
) -> SageExport:
    folder = header_path.parent
    currency_path = folder / CURRENCY_FILE
    return build_export(
        read_table(header_path, HEADER_COLUMNS),
        read_table(split_path, SPLIT_COLUMNS),
        read_table(usage_path, USAGE_COLUMNS),
        history=_history(folder) if history else None,
        currency_rows=read_table(currency_path, CURRENCY_COLUMNS)
        if currency_path.exists()
        else None,
    )


def history_files(folder: Path) -> tuple[Path, Path, Path] | None:
    """The cleared years' three exports in `folder`, or None when there are none."""
    header, split, usage = (folder / name for name in HISTORY_FILES)
    present = [path.exists() for path in (header, split, usage)]
    if not any(present):
        return None
    if not all(present):
        missing = next(
            p for p, there in zip((header, split, usage), present, strict=True) if not there
        )
        raise ExportFileError(
            str(missing), "missing: the cleared years need all three AUDIT_HISTORY_* files"
        )
    return header, split, usage


def _history(folder: Path) -> Tables | None:
    paths = history_files(folder)
    if paths is None:
        return None
    header, split, usage = paths
    return Tables(
        read_table(header, HEADER_COLUMNS),
        read_table(split, SPLIT_COLUMNS),
        read_table(usage, USAGE_COLUMNS),
    )


def read_table(path: Path, required: Sequence[str]) -> list[Row]:
    name = str(path)
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    rows: list[Row] = []
    try:
        columns = [cell.strip().upper() for cell in next(reader, [])]
        if not any(columns):
            raise ExportFileError(name, "empty file, expected a header row of column names")
        check_columns(name, columns, required)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                raise ExportFileError(
                    name,
                    f"{len(cells)} values but the header row has {len(columns)} columns",
                    row=reader.line_num,
                )
            rows.append(Row(name, reader.line_num, dict(zip(columns, cells, strict=True))))
    except csv.Error as exc:
        raise ExportFileError(
            name, f"not a readable CSV file ({exc})", row=reader.line_num
        ) from None
    return rows


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportFileError(str(path), f"cannot read the file ({exc.strerror})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Windows PowerShell 5's Export-Csv -Encoding Unicode.
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Sage on Windows writes the ANSI code page when it is not told otherwise.
        return data.decode("cp1252", errors="replace")
