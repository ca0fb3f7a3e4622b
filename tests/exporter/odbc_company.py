"""A Sage company in an SQLite file, read through unixODBC and the SQLite ODBC driver: the
tables carry Sage's names, columns and column types (Zynk's Sage 50 UK schema), so the
exporter's ODBC path runs exactly as it does against Sage's own driver."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.exporter.sage_files import CURRENCY, FILES, HISTORY_FILES, read_rows

DRIVER = "SQLite3"

# Sage's column types; SQLite keeps the declared type, which the ODBC driver reports.
COLUMN_TYPES = {
    "TRAN_NUMBER": "INTEGER",
    "HEADER_NUMBER": "INTEGER",
    "SPLIT_NUMBER": "INTEGER",
    "ITEM_COUNT": "INTEGER",
    "USAGE_NUMBER": "INTEGER",
    "SPLIT_CROSSREF": "INTEGER",
    "CURRENCY": "TINYINT",
    "NUMBER": "SMALLINT",
    "BASE_CURRENCY": "SMALLINT",
    "EMU_MEMBER": "SMALLINT",
    "REVAL_TRANSACTION_FLAG": "SMALLINT",
    "CATE_ID": "INTEGER",
    "RECORD_DELETED": "TINYINT",
    "DELETED_FLAG": "SMALLINT",
    "DATE": "DATE",
    "DUE_DATE": "DATE",
    "RECORD_MODIFY_DATE": "TIMESTAMP",
    "RECORD_CREATE_DATE": "TIMESTAMP",
}
DOUBLES = ("AMOUNT", "OUTSTANDING", "RATE")


def odbc_or_skip() -> None:
    """Skips, naming the missing Debian package, when this machine cannot run ODBC."""
    try:
        import pyodbc
    except ImportError as exc:
        pytest.skip(f"unixODBC is not installed (Debian package unixodbc): {exc}")
    if DRIVER not in pyodbc.drivers():
        pytest.skip("the SQLite ODBC driver is not installed (Debian package libsqliteodbc)")


def connection_string(path: Path) -> str:
    return f"DRIVER={DRIVER};Database={path}"


def _type(column: str) -> str:
    if column in COLUMN_TYPES:
        return COLUMN_TYPES[column]
    return "DOUBLE" if column.endswith(DOUBLES) else "VARCHAR(60)"


def _value(column: str, text: str) -> object:
    kind = _type(column)
    if text == "":
        return None
    if kind in ("INTEGER", "SMALLINT", "TINYINT"):
        return int(text)
    if kind == "DOUBLE":
        return float(text)
    if kind in ("DATE", "TIMESTAMP"):
        stamp = dt.datetime.strptime(text, "%d/%m/%Y %H:%M:%S")
        return f"{stamp:%Y-%m-%d}" if kind == "DATE" else f"{stamp:%Y-%m-%d %H:%M:%S}"
    return text


def create_company(path: Path, *, history: bool = True) -> Path:
    """The CSV fixture company as a database with AUDIT_HEADER, AUDIT_SPLIT, AUDIT_USAGE,
    CURRENCY and (with `history`) the cleared year's AUDIT_HISTORY_* tables."""
    with sqlite3.connect(path) as db:
        for source in (*FILES, CURRENCY, *(HISTORY_FILES if history else ())):
            rows = read_rows(source)
            columns = list(rows[0])
            declared = ", ".join(f"{column} {_type(column)}" for column in columns)
            db.execute(f"CREATE TABLE {source.stem} ({declared})")
            insert_rows(db, source.stem, rows)
    return path


def insert_rows(db: sqlite3.Connection, table: str, rows: Iterable[Mapping[str, str]]) -> None:
    for row in rows:
        marks = ", ".join("?" for _ in row)
        values = [_value(column, text) for column, text in row.items()]
        db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", values)
