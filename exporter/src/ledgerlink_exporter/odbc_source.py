"""Sage 50's audit-trail tables read straight from the company over ODBC (`push --dsn`).

The rows go to the same `build_export` as the CSV files' rows. What Sage's ODBC driver allows
shapes the queries: it has no parameter binding and no subqueries (the ODBC section of the
public Sage 50 notes we follow shows `WHERE DATE > {d '2016-09-30'}` and plain literals), so
every value is an inline literal, quoted by `literal`, and a partial read is a chain of
separate statements with `IN (...)` lists of numbers.

Incremental reads: with a cut-off (the state file's high-water mark minus the look-back),
the reader asks for the rows modified since then, then completes them, because a posting is
always sent whole (the service replaces a posting's allocations as a set):

1. headers, lines and usage rows whose RECORD_MODIFY_DATE is at or after the cut-off;
2. the lines those usage rows name, so every touched transaction is known;
3. every line of each touched transaction (its nominal code), and every usage row on any of
   those lines (its whole set of allocations);
4. the lines and headers on the far side of those usage rows (is it an SI? which TRAN_NUMBER?).

Only the touched transactions become postings; the far-side headers only resolve allocations.

The CURRENCY table, when the company has it, is read whole on every run (a few rows). With
`history` (a first load, or `--history`) the three tables are read whole, and so are
AUDIT_HISTORY_HEADER / _SPLIT / _USAGE, where Sage's Clear Audit Trail moved the cleared
years; a company without them is read without history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from ledgerlink_exporter.sage import (
    CURRENCY_COLUMNS,
    CURRENCY_OPTIONAL,
    HEADER_COLUMNS,
    HEADER_OPTIONAL,
    MODIFIED_COLUMN,
    SPLIT_COLUMNS,
    SPLIT_OPTIONAL,
    USAGE_COLUMNS,
    USAGE_OPTIONAL,
    ExportFileError,
    Row,
    SageExport,
    Tables,
    build_export,
    check_columns,
)

HEADER_TABLE = "AUDIT_HEADER"
SPLIT_TABLE = "AUDIT_SPLIT"
USAGE_TABLE = "AUDIT_USAGE"
HISTORY_HEADER_TABLE = "AUDIT_HISTORY_HEADER"
HISTORY_SPLIT_TABLE = "AUDIT_HISTORY_SPLIT"
HISTORY_USAGE_TABLE = "AUDIT_HISTORY_USAGE"
CURRENCY_TABLE = "CURRENCY"
# Numbers per IN (...) list: well under any driver's statement length limit.
CHUNK = 400
# Rows per fetch of a whole table.
FETCH = 2000

T = TypeVar("T")


class Cursor(Protocol):
    description: Sequence[Sequence[Any]] | None

    def execute(self, sql: str) -> Any: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...

    def fetchmany(self, size: int) -> Sequence[Sequence[Any]]: ...

    def close(self) -> None: ...

    def columns(self, *, table: str) -> Iterable[Sequence[Any]]: ...


class Connection(Protocol):
    def cursor(self) -> Cursor: ...

    def close(self) -> None: ...


def connection_string(dsn: str) -> str:
    """A DSN name, or a whole ODBC connection string (anything with '=' in it)."""
    return dsn if "=" in dsn else f"DSN={dsn}"


def connect(dsn: str) -> Connection:
    try:
        import pyodbc  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ExportFileError(
            "ODBC",
            f"pyodbc is not available ({exc}): install the exporter with its odbc extra, "
            "`pip install ledgerlink_exporter-*.whl[odbc]` (and on Linux, unixODBC)",
        ) from None
    try:
        connection: Connection = pyodbc.connect(connection_string(dsn), autocommit=True)
    except pyodbc.Error as exc:
        raise ExportFileError("ODBC", f"cannot connect to '{dsn}': {_one_line(exc)}") from None
    return connection


def literal(value: int | str | dt.datetime) -> str:
    """An inline SQL literal: the only way to give Sage's driver a value."""
    if isinstance(value, bool):
        raise TypeError("no boolean literals")
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, dt.datetime):
        return "{ts '" + value.strftime("%Y-%m-%d %H:%M:%S") + "'}"
    return "'" + value.replace("'", "''") + "'"


def read_odbc(
    connection: Connection, since: dt.datetime | None, *, history: bool = False
) -> SageExport:
    """Everything (since None, or with `history`), or what changed since `since`."""
    reader = _Reader(connection)
    currencies = reader.select(CURRENCY_TABLE) if reader.has_table(CURRENCY_TABLE) else None
    if since is None or history:
        # Whole tables stream by, a fetch at a time: a big company is never held in memory.
        return build_export(
            reader.whole(HEADER_TABLE),
            reader.whole(SPLIT_TABLE),
            reader.whole(USAGE_TABLE),
            history=_history(reader) if history else None,
            currency_rows=currencies,
        )
    return _read_changed(reader, since, currencies)


def _history(reader: _Reader) -> Tables | None:
    if not reader.has_table(HISTORY_HEADER_TABLE):
        return None
    return Tables(
        reader.whole(HISTORY_HEADER_TABLE),
        reader.whole(HISTORY_SPLIT_TABLE),
        reader.whole(HISTORY_USAGE_TABLE),
    )


def _read_changed(reader: _Reader, since: dt.datetime, currencies: list[Row] | None) -> SageExport:
    changed = f"{MODIFIED_COLUMN} >= {literal(since)}"
    headers = _keyed(reader.select(HEADER_TABLE, changed), "HEADER_NUMBER")
    splits = _keyed(reader.select(SPLIT_TABLE, changed), "TRAN_NUMBER")
    usages = _usage_keyed(reader.select(USAGE_TABLE, changed))

    named = _numbers(usages.values(), "SPLIT_NUMBER", "SPLIT_CROSSREF") - splits.keys()
    splits.update(_split_rows(reader, "TRAN_NUMBER", named))
    touched = frozenset(headers) | _numbers(splits.values(), "HEADER_NUMBER")

    lines = reader.select_in(SPLIT_TABLE, "HEADER_NUMBER", touched)
    splits.update(_keyed(lines, "TRAN_NUMBER"))
    own = _numbers(lines, "TRAN_NUMBER")
    for column in ("SPLIT_NUMBER", "SPLIT_CROSSREF"):
        usages.update(_usage_keyed(reader.select_in(USAGE_TABLE, column, own)))

    far = _numbers(usages.values(), "SPLIT_NUMBER", "SPLIT_CROSSREF") - splits.keys()
    splits.update(_split_rows(reader, "TRAN_NUMBER", far))
    wanted = (touched | _numbers(splits.values(), "HEADER_NUMBER")) - headers.keys()
    far_headers = reader.select_in(HEADER_TABLE, "HEADER_NUMBER", wanted)
    headers.update(_keyed(far_headers, "HEADER_NUMBER"))
    return build_export(
        headers.values(),
        splits.values(),
        usages.values(),
        only_headers=touched,
        currency_rows=currencies,
    )


# Per table: the columns it must have, then those read when the install has them.
_COLUMNS = {
    HEADER_TABLE: (HEADER_COLUMNS, HEADER_OPTIONAL),
    SPLIT_TABLE: (SPLIT_COLUMNS, SPLIT_OPTIONAL),
    USAGE_TABLE: (("USAGE_NUMBER", *USAGE_COLUMNS), USAGE_OPTIONAL),
    HISTORY_HEADER_TABLE: (HEADER_COLUMNS, HEADER_OPTIONAL),
    HISTORY_SPLIT_TABLE: (SPLIT_COLUMNS, SPLIT_OPTIONAL),
    HISTORY_USAGE_TABLE: (("USAGE_NUMBER", *USAGE_COLUMNS), USAGE_OPTIONAL),
    CURRENCY_TABLE: (CURRENCY_COLUMNS, CURRENCY_OPTIONAL),
}


class _Reader:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._columns: dict[str, tuple[str, ...]] = {}

    def select(self, table: str, where: str = "") -> list[Row]:
        return list(self.whole(table, where))

    def whole(self, table: str, where: str = "") -> _Table:
        """The table's rows (those matching `where`), read when iterated; its columns are
        checked now."""
        columns = ", ".join(self._columns_of(table))
        sql = f"SELECT {columns} FROM {table}" + (f" WHERE {where}" if where else "")
        return _Table(self._connection, table, sql)

    def select_in(self, table: str, column: str, numbers: Iterable[int]) -> list[Row]:
        rows: list[Row] = []
        for chunk in _chunks(sorted(numbers), CHUNK):
            values = ", ".join(literal(number) for number in chunk)
            rows += self.select(table, f"{column} IN ({values})")
        return rows

    def has_table(self, table: str) -> bool:
        return bool(self._catalog(table))

    def _catalog(self, table: str) -> set[str]:
        try:
            return {str(row[3]).upper() for row in self._connection.cursor().columns(table=table)}
        except Exception as exc:  # each driver raises its own pyodbc.Error subclasses
            raise ExportFileError(table, f"cannot list the columns: {_one_line(exc)}") from None

    def _columns_of(self, table: str) -> tuple[str, ...]:
        """Asks the driver's catalog (SQLColumns) what the table has: columns such as
        RECORD_DELETED exist on some Sage versions only."""
        if table not in self._columns:
            present = self._catalog(table)
            if not present:
                raise ExportFileError(table, "no such table in this ODBC source")
            required, optional = _COLUMNS[table]
            check_columns(table, present, required)
            self._columns[table] = (*required, *(c for c in optional if c in present))
        return self._columns[table]


class _Table:
    """One query's rows, fetched a batch at a time as they are iterated."""

    def __init__(self, connection: Connection, table: str, sql: str) -> None:
        self._connection = connection
        self._table = table
        self._sql = sql

    def __iter__(self) -> Iterator[Row]:
        cursor = self._connection.cursor()
        try:
            names = self._run(lambda: self._execute(cursor))
            index = 0
            while records := self._run(lambda: cursor.fetchmany(FETCH)):
                for record in records:
                    index += 1
                    yield Row(self._table, index, dict(zip(names, record, strict=True)))
        finally:
            cursor.close()

    def _execute(self, cursor: Cursor) -> list[str]:
        cursor.execute(self._sql)
        return [str(item[0]).upper() for item in cursor.description or ()]

    def _run(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:  # each driver raises its own pyodbc.Error subclasses
            raise ExportFileError(self._table, f"the query failed: {_one_line(exc)}") from None


def _split_rows(reader: _Reader, column: str, numbers: Iterable[int]) -> dict[int, Row]:
    return _keyed(reader.select_in(SPLIT_TABLE, column, numbers), "TRAN_NUMBER")


def _keyed(rows: Iterable[Row], column: str) -> dict[int, Row]:
    return {row.integer(column): row for row in rows}


def _usage_keyed(rows: Iterable[Row]) -> dict[int, Row]:
    return _keyed(rows, "USAGE_NUMBER")


def _numbers(rows: Iterable[Row], *columns: str) -> frozenset[int]:
    return frozenset(row.integer(column) for row in rows for column in columns)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
