"""Where one read of Sage's tables is held while it becomes postings: a private temporary
SQLite database (the standard library's `sqlite3`, opened on an empty file name: kept in a
bounded page cache and spilled to a temporary file that is gone when it closes).

A company of a million transactions is millions of rows; held as Python objects they took
gigabytes, more than a 32-bit Python (the bitness of some Sage ODBC drivers) can address.
Here each row is reduced, as it is read, to the few numbers the postings need (which header
a line belongs to, what a usage row joins, its amount in pence, the modify dates), and each
posting's own fields are kept as they were checked when read (`pack`), so nothing can fail
later. The joins (a usage row's splits to their headers, the first live line's
nominal code, the latest modify date per posting) and the orderings are SQLite's; the
postings come back a chunk at a time, in TRAN_NUMBER order (`StoredPostings`).

Times are kept as microseconds since 0001-01-01 and dates as ordinals, so they sort and
compare as numbers; amounts as whole pence (they were rounded to pennies when read).
"""

from __future__ import annotations

import datetime as dt
import marshal
import sqlite3
from collections.abc import ItemsView, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, overload

from ledgerlink_exporter.model import Allocation, ForeignFigures, Posting

_EPOCH = dt.datetime(1, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)
# Rows written per executemany, and postings read back per query.
_BUFFER = 5000
_CHUNK = 1000
# SQLite's page cache, in KiB (negative: a size, not a page count). The rest is on disk.
_CACHE_KIB = 32 * 1024

_SCHEMA = """
CREATE TABLE headers (
    header_number INTEGER PRIMARY KEY,
    tran_number INTEGER NOT NULL UNIQUE,
    type TEXT NOT NULL,
    line INTEGER NOT NULL,
    history INTEGER NOT NULL,
    modified INTEGER,
    -- customer headers: the currency code, NULL for the base currency
    currency TEXT,
    -- settling headers: their DATE as an ordinal, NULL when it cannot be read
    settle_date INTEGER,
    -- the posting, without nominal code and allocations, for the headers that become one
    posting BLOB
);
CREATE TABLE history_numbers (
    header_number INTEGER PRIMARY KEY,
    tran_number INTEGER NOT NULL UNIQUE,
    line INTEGER NOT NULL
);
CREATE TABLE splits (
    split_number INTEGER PRIMARY KEY,
    header_number INTEGER NOT NULL,
    nominal TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    modified INTEGER,
    live INTEGER NOT NULL
);
CREATE TABLE history_splits (
    split_number INTEGER PRIMARY KEY,
    header_number INTEGER NOT NULL,
    nominal TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    modified INTEGER
);
CREATE TABLE usages (
    seq INTEGER PRIMARY KEY,
    split_number INTEGER NOT NULL,
    crossref INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    foreign_amount INTEGER,
    date INTEGER,
    deleted INTEGER NOT NULL,
    modified INTEGER,
    history INTEGER NOT NULL,
    line INTEGER NOT NULL
);
CREATE TABLE history_usages (
    seq INTEGER PRIMARY KEY,
    split_number INTEGER NOT NULL,
    crossref INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    foreign_amount INTEGER,
    date INTEGER,
    deleted INTEGER NOT NULL,
    modified INTEGER,
    history INTEGER NOT NULL,
    line INTEGER NOT NULL
);
-- Invoice-first usage rows, deleted or not: a mirror row of one of these pairs counts for nothing.
CREATE TABLE pairs (invoice_split INTEGER NOT NULL, settling_split INTEGER NOT NULL);
-- Allocations that count (not deleted, not zero, joining an invoice and a settling posting).
CREATE TABLE allocs (
    seq INTEGER NOT NULL,
    settling_header INTEGER NOT NULL,
    invoice_split INTEGER NOT NULL,
    settling_split INTEGER NOT NULL,
    invoice_first INTEGER NOT NULL,
    invoice_tran INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    foreign_amount INTEGER,
    date INTEGER,
    history INTEGER NOT NULL,
    line INTEGER NOT NULL
);
-- Modify dates of usage rows, by the header of either side they touch.
CREATE TABLE touches (header_number INTEGER NOT NULL, modified INTEGER NOT NULL);
"""

# What the history tables add: the cleared transactions' lines that the live tables do not
# hold, and their usage rows that touch no live line.
_ADD_HISTORY_SPLITS = """
INSERT INTO splits (split_number, header_number, nominal, deleted, modified, live)
SELECT h.split_number, h.header_number, h.nominal, h.deleted, h.modified, 0
FROM history_splits h
WHERE NOT EXISTS (SELECT 1 FROM splits s WHERE s.split_number = h.split_number)
  AND EXISTS (SELECT 1 FROM headers x WHERE x.header_number = h.header_number AND x.history = 1)
"""
_ADD_HISTORY_USAGES = """
INSERT INTO usages (split_number, crossref, amount, foreign_amount, date, deleted, modified,
                    history, line)
SELECT u.split_number, u.crossref, u.amount, u.foreign_amount, u.date, u.deleted, u.modified,
       u.history, u.line
FROM history_usages u
WHERE (EXISTS (SELECT 1 FROM splits s WHERE s.split_number = u.split_number AND s.live = 0)
       OR EXISTS (SELECT 1 FROM splits s WHERE s.split_number = u.crossref AND s.live = 0))
  AND NOT EXISTS (SELECT 1 FROM splits s WHERE s.split_number = u.split_number AND s.live = 1)
  AND NOT EXISTS (SELECT 1 FROM splits s WHERE s.split_number = u.crossref AND s.live = 1)
ORDER BY u.seq
"""
# Each usage row with the header at either end (NULL where a split or header is not known).
RESOLVE = """
SELECT u.split_number, u.crossref, u.amount, u.foreign_amount, u.date, u.deleted, u.modified,
       u.history, u.line,
       h1.header_number, h1.type, h1.tran_number, h1.posting IS NOT NULL,
       h2.header_number, h2.type, h2.tran_number, h2.posting IS NOT NULL,
       u.seq
FROM usages u
LEFT JOIN splits s1 ON s1.split_number = u.split_number
LEFT JOIN headers h1 ON h1.header_number = s1.header_number
LEFT JOIN splits s2 ON s2.split_number = u.crossref
LEFT JOIN headers h2 ON h2.header_number = s2.header_number
ORDER BY u.seq
"""
_DROP_MIRRORS = """
DELETE FROM allocs
WHERE invoice_first = 0
  AND EXISTS (SELECT 1 FROM pairs p
              WHERE p.invoice_split = allocs.invoice_split
                AND p.settling_split = allocs.settling_split)
"""
# The first allocation that cannot be sent: no date of its own and a settling header whose
# DATE cannot be read, or a foreign settling posting and no FOREIGN_AMOUNT.
_UNSENDABLE = """
SELECT a.settling_header, a.date IS NULL AND h.settle_date IS NULL, h.currency, a.history,
       a.line
FROM allocs a JOIN headers h ON h.header_number = a.settling_header
WHERE (a.date IS NULL AND h.settle_date IS NULL)
   OR (h.currency IS NOT NULL AND a.foreign_amount IS NULL)
ORDER BY a.seq
LIMIT 1
"""
_POSITIONS = """
CREATE TABLE postings (
    position INTEGER PRIMARY KEY,
    header_number INTEGER NOT NULL,
    tran_number INTEGER NOT NULL
);
INSERT INTO postings (header_number, tran_number)
SELECT header_number, tran_number FROM headers WHERE posting IS NOT NULL ORDER BY tran_number;
CREATE INDEX splits_first ON splits (header_number, deleted, split_number);
CREATE TABLE final_allocs AS
SELECT p.position AS position, a.invoice_tran AS invoice_tran, a.amount AS amount,
       coalesce(a.date, h.settle_date) AS date,
       CASE WHEN h.currency IS NULL THEN NULL ELSE a.foreign_amount END AS foreign_amount
FROM allocs a
JOIN headers h ON h.header_number = a.settling_header
JOIN postings p ON p.header_number = a.settling_header
ORDER BY p.position, a.invoice_tran, coalesce(a.date, h.settle_date), a.amount, a.seq;
CREATE INDEX final_allocs_position ON final_allocs (position);
CREATE TABLE revisions (tran_number INTEGER PRIMARY KEY, stamp INTEGER);
INSERT INTO revisions (tran_number, stamp)
SELECT p.tran_number, max(x.stamp)
FROM postings p
JOIN (SELECT header_number, modified AS stamp FROM headers WHERE posting IS NOT NULL
      UNION ALL SELECT header_number, modified FROM splits
      UNION ALL SELECT header_number, modified FROM touches) x
  ON x.header_number = p.header_number
GROUP BY p.position
ORDER BY p.tran_number;
"""
_POSTINGS_BETWEEN = """
SELECT h.tran_number, h.posting,
       (SELECT s.nominal FROM splits s WHERE s.header_number = p.header_number
        ORDER BY s.deleted, s.split_number LIMIT 1)
FROM postings p JOIN headers h ON h.header_number = p.header_number
WHERE p.position >= ? AND p.position < ?
ORDER BY p.position
"""
_ALLOCATIONS_BETWEEN = """
SELECT position, invoice_tran, amount, date, foreign_amount FROM final_allocs
WHERE position >= ? AND position < ?
ORDER BY rowid
"""


def stamp_number(stamp: dt.datetime | None) -> int | None:
    return None if stamp is None else (stamp - _EPOCH) // _MICROSECOND


def number_stamp(number: int | None) -> dt.datetime | None:
    return None if number is None else _EPOCH + number * _MICROSECOND


def pence(amount: Decimal) -> int:
    """An amount already rounded to pennies, as whole pence."""
    return int(amount.scaleb(2))


def _pounds(number: int) -> Decimal:
    return Decimal(number).scaleb(-2)


def pack(posting: Posting) -> bytes:
    """A posting's own fields (not its number, nominal code or allocations, which come from
    elsewhere), amounts as their exact text: marshal reads them back several times faster
    than pickle reads the dataclasses."""
    foreign = posting.foreign
    return marshal.dumps(
        (
            posting.type,
            posting.account_ref,
            posting.reference,
            posting.date.toordinal(),
            posting.details,
            str(posting.net_amount),
            str(posting.tax_amount),
            str(posting.gross_amount),
            _text(posting.outstanding),
            posting.deleted,
            None
            if foreign is None
            else (
                foreign.currency,
                _text(foreign.exchange_rate),
                _text(foreign.net_amount),
                _text(foreign.tax_amount),
                str(foreign.gross_amount),
                _text(foreign.outstanding),
            ),
        )
    )


def unpack(
    tran_number: int, blob: bytes, nominal_code: str, allocations: tuple[Allocation, ...]
) -> Posting:
    (kind, account, reference, date, details, net, tax, gross, outstanding, deleted, foreign) = (
        marshal.loads(blob)
    )
    return Posting(
        tran_number=tran_number,
        type=kind,
        account_ref=account,
        reference=reference,
        date=dt.date.fromordinal(date),
        details=details,
        nominal_code=nominal_code,
        net_amount=Decimal(net),
        tax_amount=Decimal(tax),
        gross_amount=Decimal(gross),
        outstanding=_decimal(outstanding),
        deleted=deleted,
        allocations=allocations,
        foreign=None
        if foreign is None
        else ForeignFigures(
            currency=foreign[0],
            exchange_rate=_decimal(foreign[1]),
            net_amount=_decimal(foreign[2]),
            tax_amount=_decimal(foreign[3]),
            gross_amount=Decimal(foreign[4]),
            outstanding=_decimal(foreign[5]),
        ),
    )


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


class Store:
    """The rows of one read, and what build_export makes of them."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", check_same_thread=False)
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            "temp_store = FILE",
            f"cache_size = -{_CACHE_KIB}",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(_SCHEMA)
        self._pending: dict[str, list[tuple[Any, ...]]] = {}

    # --- writing, buffered ----------------------------------------------------------------

    def add(self, sql: str, values: tuple[Any, ...]) -> None:
        pending = self._pending.setdefault(sql, [])
        pending.append(values)
        if len(pending) >= _BUFFER:
            self.flush(sql)

    def flush(self, sql: str | None = None) -> None:
        for statement in [sql] if sql is not None else list(self._pending):
            rows = self._pending.pop(statement, [])
            if rows:
                self.db.executemany(statement, rows)

    def add_history(self) -> None:
        self.flush()
        self.db.execute(_ADD_HISTORY_SPLITS)
        self.db.execute(_ADD_HISTORY_USAGES)

    def one(self, sql: str, *values: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.db.execute(sql, values).fetchone()
        return row

    def rows(self, sql: str) -> Iterator[tuple[Any, ...]]:
        self.flush()
        return iter(self.db.execute(sql))

    def drop_mirrors(self) -> None:
        self.flush()
        self.db.execute("CREATE INDEX pairs_both ON pairs (invoice_split, settling_split)")
        self.db.execute(_DROP_MIRRORS)

    def unsendable(self) -> tuple[Any, ...] | None:
        self.flush()
        return self.one(_UNSENDABLE)

    def finish(self) -> tuple[StoredPostings, StoredRevisions]:
        """Orders the postings, their allocations and their latest modify dates."""
        self.flush()
        for table in ("history_numbers", "history_splits", "history_usages", "pairs", "usages"):
            self.db.execute(f"DELETE FROM {table}")
        self.db.executescript(_POSITIONS)
        self.db.commit()
        return StoredPostings(self), StoredRevisions(self)

    def postings_between(self, start: int, stop: int) -> list[Posting]:
        """The postings at positions start..stop-1 (0-based), with nominal code and
        allocations."""
        found: dict[int, list[Allocation]] = {}
        for position, invoice, amount, date, foreign in self.db.execute(
            _ALLOCATIONS_BETWEEN, (start + 1, stop + 1)
        ):
            found.setdefault(position, []).append(
                Allocation(
                    invoice,
                    _pounds(amount),
                    dt.date.fromordinal(date),
                    None if foreign is None else _pounds(foreign),
                )
            )
        rows = self.db.execute(_POSTINGS_BETWEEN, (start + 1, stop + 1))
        return [
            unpack(tran_number, blob, nominal or "", tuple(found.get(position, ())))
            for position, (tran_number, blob, nominal) in enumerate(rows, start=start + 1)
        ]


class StoredPostings(Sequence[Posting]):
    """The postings of one read, in TRAN_NUMBER order, made a chunk at a time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        count = store.one("SELECT count(*) FROM postings")
        self._length = int(count[0]) if count else 0

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Posting: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Posting]: ...

    def __getitem__(self, index: int | slice) -> Posting | Sequence[Posting]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._store.postings_between(start, max(start, stop))
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("posting index out of range")
        return self._store.postings_between(index, index + 1)[0]

    def __iter__(self) -> Iterator[Posting]:
        for start in range(0, self._length, _CHUNK):
            yield from self._store.postings_between(start, start + _CHUNK)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StoredPostings({list(self)!r})"


class StoredRevisions(Mapping[int, dt.datetime | None]):
    """Each posting's latest RECORD_MODIFY_DATE by TRAN_NUMBER (None: no modify dates)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        count = store.one("SELECT count(*) FROM revisions")
        self._length = int(count[0]) if count else 0

    def __getitem__(self, tran_number: int) -> dt.datetime | None:
        row = self._store.one("SELECT stamp FROM revisions WHERE tran_number = ?", tran_number)
        if row is None:
            raise KeyError(tran_number)
        return number_stamp(row[0])

    def __iter__(self) -> Iterator[int]:
        for (tran_number,) in self._store.db.execute(
            "SELECT tran_number FROM revisions ORDER BY tran_number"
        ):
            yield tran_number

    def __len__(self) -> int:
        return self._length

    def items(self) -> ItemsView[int, dt.datetime | None]:
        return _StoredItems(self)

    def in_order(self) -> Iterator[tuple[int, dt.datetime | None]]:
        """Every item in one query (the Mapping's own items() would ask once per key)."""
        for tran_number, stamp in self._store.db.execute(
            "SELECT tran_number, stamp FROM revisions ORDER BY tran_number"
        ):
            yield tran_number, number_stamp(stamp)


class _StoredItems(ItemsView[int, dt.datetime | None]):
    _mapping: StoredRevisions

    def __iter__(self) -> Iterator[tuple[int, dt.datetime | None]]:
        return self._mapping.in_order()
