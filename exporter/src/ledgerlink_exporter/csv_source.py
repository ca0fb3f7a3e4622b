"""Sage 50's audit-trail tables exported as CSV files (Sage's own export, or PowerShell
`Export-Csv` over its ODBC tables): with or without a byte-order mark, CRLF or LF line ends,
every field quoted or none, and any extra columns Sage has.

Beside AUDIT_HEADER.csv, in the same folder, two more exports are read when present:
CURRENCY.csv (to name a foreign currency) and, when `history` is asked for, the three
AUDIT_HISTORY_*.csv files of the cleared years (all three or none)."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

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


class CsvTable:
    """One exported table, read a row at a time. Its header row is checked when the table is
    opened, so a missing column stops the push before any file is read through."""

    def __init__(self, path: Path, required: Sequence[str]) -> None:
        self.path = path
        self.name = str(path)
        self.encoding = _encoding(path)
        with self._open() as file:
            self.columns = self._columns(csv.reader(file))
        check_columns(self.name, self.columns, required)

    def _open(self) -> TextIO:
        try:
            return self.path.open(encoding=self.encoding, errors=self._errors(), newline="")
        except OSError as exc:
            raise ExportFileError(self.name, f"cannot read the file ({exc.strerror})") from None

    def _errors(self) -> str:
        # Sage on Windows writes the ANSI code page when it is not told otherwise; a byte it
        # does not define becomes U+FFFD, as it always has.
        return "replace" if self.encoding == "cp1252" else "strict"

    def _columns(self, reader: Iterator[list[str]]) -> list[str]:
        try:
            columns = [cell.strip().upper() for cell in next(reader, [])]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ExportFileError(self.name, f"not a readable CSV file ({exc})", row=1) from None
        if not any(columns):
            raise ExportFileError(self.name, "empty file, expected a header row of column names")
        return columns

    def __iter__(self) -> Iterator[Row]:
        name, columns = self.name, self.columns
        with self._open() as file:
            reader = csv.reader(file)
            try:
                next(reader, None)
                for cells in reader:
                    if not any(cell.strip() for cell in cells):
                        continue
                    if len(cells) != len(columns):
                        raise ExportFileError(
                            name,
                            f"{len(cells)} values but the header row has {len(columns)} columns",
                            row=reader.line_num,
                        )
                    yield Row(name, reader.line_num, dict(zip(columns, cells, strict=True)))
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ExportFileError(
                    name, f"not a readable CSV file ({exc})", row=reader.line_num
                ) from None


def read_table(path: Path, required: Sequence[str]) -> CsvTable:
    return CsvTable(path, required)


_SCAN_BYTES = 1 << 20


def _encoding(path: Path) -> str:
    """How the file is written: UTF-16 with its byte-order mark (Windows PowerShell 5's
    Export-Csv -Encoding Unicode), UTF-8 with or without one, or else Windows-1252. Decided
    on the whole file, read a megabyte at a time, before a row is read."""
    try:
        with path.open("rb") as file:
            start = file.read(2)
            if start in (b"\xff\xfe", b"\xfe\xff"):
                return "utf-16"
            decoder = codecs.getincrementaldecoder("utf-8")()
            chunk = start
            try:
                while chunk:
                    decoder.decode(chunk)
                    chunk = file.read(_SCAN_BYTES)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                return "cp1252"
    except OSError as exc:
        raise ExportFileError(str(path), f"cannot read the file ({exc.strerror})") from None
    return "utf-8-sig"
