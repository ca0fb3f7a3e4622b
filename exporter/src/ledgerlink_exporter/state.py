"""What the server has acknowledged, kept between runs so the next run sends only changes.

The state holds a content hash per acknowledged tran_number and a high-water mark: the latest
RECORD_MODIFY_DATE of an export whose every batch was acknowledged. The hashes are recorded
after each acknowledged batch; the high-water mark only when a whole run succeeds, because
batches are not in modification order: advancing it early could push an unsent older row out
of the look-back window, and it would never be sent.

It is a SQLite database (the standard library's `sqlite3`) at the path `--state` names,
whatever that path's extension. Each acknowledged batch is one transaction with a rollback
journal and `synchronous = FULL`, so a crash leaves every batch before it recorded and
nothing of the one being written, and recording a batch costs the same with ten entries as
with a million. Planning asks for the hashes a few hundred tran_numbers at a time; nothing
holds the whole map in memory.

Exporters before this one kept the same content in one JSON file, written again whole after
every batch (a first load of a million postings spent some twenty minutes doing that) and
read whole into memory. Such a file is read once, on the first push that may write, and
replaced in one step by the database holding the same entries and mark, under the same name.
A dry run leaves it as it is and reads it into a private temporary database instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ledgerlink_exporter.sage import ExportFileError

_JSON_VERSION = 1
# PRAGMA user_version of the database: the state format (1 was the JSON file).
_FORMAT = 2
# PRAGMA application_id, "LLxS": tells our database from any other SQLite file.
_APPLICATION_ID = 0x4C4C7853
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Tran_numbers per lookup query (SQLite before 3.32 allows 999 parameters).
_LOOKUP = 500

_SCHEMA = f"""
PRAGMA application_id = {_APPLICATION_ID};
PRAGMA user_version = {_FORMAT};
CREATE TABLE acknowledged (tran_number INTEGER PRIMARY KEY, hash TEXT NOT NULL);
CREATE TABLE mark (one INTEGER PRIMARY KEY CHECK (one = 1), high_water TEXT);
INSERT INTO mark (one, high_water) VALUES (1, NULL);
"""
_RECORD = "INSERT OR REPLACE INTO acknowledged (tran_number, hash) VALUES (?, ?)"
_SET_MARK = "UPDATE mark SET high_water = ?"

# Writes a state's entries into a new database and returns its high-water mark.
Content = Callable[[sqlite3.Connection], dt.datetime | None]

# SQLite's answers that mean the file itself is not sound, rather than out of reach.
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


@dataclass
class PushState:
    high_water: dt.datetime | None = None
    acknowledged: Mapping[int, str] = field(default_factory=dict)


def known_hashes(acknowledged: Mapping[int, str], tran_numbers: Sequence[int]) -> dict[int, str]:
    """The acknowledged hashes of these tran_numbers, those there are: a few queries for a
    state file, lookups for a map held in memory."""
    if isinstance(acknowledged, StoredHashes):
        return acknowledged.among(tran_numbers)
    return {t: acknowledged[t] for t in tran_numbers if t in acknowledged}


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, *, dry_run: bool = False) -> OpenState:
        """The state to plan a push with, and to record it in unless `dry_run`.

        A missing file is an empty state; the file is made when the first batch is
        acknowledged. A JSON state file of an earlier exporter is converted, in place, before
        anything else (a dry run converts it into a private temporary database and leaves
        the file alone).
        """
        kind = self._kind()
        if kind is None:
            return OpenState(self, None, None, dry_run=dry_run)
        if kind == "json":
            content = self._earlier_content()
            if dry_run:
                db = self._private(content)
            else:
                self._replace_with(content)
                db = self._connect()
            del content
        else:
            db = self._connect()
        try:
            high_water = self._check(db)
        except BaseException:
            db.close()
            raise
        return OpenState(self, db, high_water, dry_run=dry_run)

    def save(self, state: PushState) -> None:
        """Replaces the file with `state` in one step, so a crash leaves the old file or the
        new one."""

        def content(db: sqlite3.Connection) -> dt.datetime | None:
            db.executemany(_RECORD, sorted(state.acknowledged.items()))
            return state.high_water

        self._replace_with(content)

    # --- reading --------------------------------------------------------------------------

    def _kind(self) -> str | None:
        try:
            with self.path.open("rb") as file:
                head = file.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(f"cannot read the state file ({exc.strerror})") from None
        return "sqlite" if head == _SQLITE_MAGIC else "json"

    def _earlier_content(self) -> Content:
        """What an earlier exporter's JSON file holds, to be written into a database."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise self._error(f"cannot read the state file ({exc.strerror})") from None
        try:
            # As json.loads reads bytes: UTF-8, -16 or -32, with or without a BOM.
            text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        except ValueError:
            raise self._not_ours() from None
        del raw
        return lambda db: _read_earlier(text, db)

    def _connect(self) -> sqlite3.Connection:
        # A plain path, not a URI: SQLite refuses a URI naming a host, as a path on a
        # Windows share (\\server\share) becomes.
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc, "cannot read the state file") from None
        return db

    def _check(self, db: sqlite3.Connection) -> dt.datetime | None:
        """That the database is one of ours, in a format this exporter reads; its mark."""
        try:
            if _pragma(db, "application_id") != _APPLICATION_ID:
                raise self._not_ours()
            version = _pragma(db, "user_version")
            if version != _FORMAT:
                raise self._error(
                    f"state format {version}, which this exporter does not read (a newer "
                    "exporter wrote it?); move it away to start afresh"
                )
            marks = db.execute("SELECT high_water FROM mark").fetchall()
            db.execute("SELECT tran_number, hash FROM acknowledged LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            if exc.sqlite_errorname == "SQLITE_ERROR":  # no such table, no such column
                raise self._not_ours() from None
            raise self._sqlite_error(exc, "cannot read the state file") from None
        if len(marks) != 1:
            raise self._not_ours()
        try:
            return _high_water(marks[0][0])
        except _Unusable as exc:
            raise self._error(f"{exc}; move it away to start afresh") from None

    # --- writing --------------------------------------------------------------------------

    def _replace_with(self, content: Content) -> None:
        """A complete database written beside the file, synced, then moved over it."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")
            os.close(handle)
        except OSError as exc:
            raise self._error(f"cannot write the state file ({exc.strerror})") from None
        temporary = Path(name)
        try:
            db = sqlite3.connect(temporary, isolation_level=None)
            try:
                # Nothing to roll back to: a failure throws the whole file away.
                db.execute("PRAGMA journal_mode = OFF")
                _fill(db, content)
            finally:
                db.close()
            with temporary.open("rb+") as file:
                os.fsync(file.fileno())
            # A journal left by a push killed while writing the file this one replaces (moved
            # away to start afresh, say) belongs to that file: SQLite would play it back into
            # this one.
            for companion in _companions(self.path):
                companion.unlink(missing_ok=True)
            os.replace(temporary, self.path)
            _sync_directory(directory)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if isinstance(exc, OSError):
                raise self._error(f"cannot write the state file ({exc.strerror})") from None
            raise self._content_error(exc, "cannot write the state file") from None

    def _private(self, content: Content) -> sqlite3.Connection:
        """A temporary database of the process's own (SQLite's, on an empty name: a bounded
        cache, the rest in a file removed when it closes) holding `content`."""
        db = sqlite3.connect("", isolation_level=None)
        try:
            _fill(db, content)
        except BaseException as exc:
            db.close()
            raise self._content_error(exc, "cannot read the state file") from None
        return db

    # --- errors ---------------------------------------------------------------------------

    def _error(self, message: str) -> ExportFileError:
        return ExportFileError(str(self.path), message)

    def _not_ours(self) -> ExportFileError:
        return self._error("not a ledgerlink exporter state file; move it away to start afresh")

    def _content_error(self, exc: BaseException, doing: str) -> BaseException:
        """What to raise for a failure while a database is filled: the content's fault (an
        earlier file that cannot be used), SQLite's, or anything else as it is."""
        if isinstance(exc, _Unusable):
            return self._error(f"{exc}; move it away to start afresh")
        if isinstance(
            exc, ValueError | TypeError | KeyError | IndexError | OverflowError | RecursionError
        ):
            return self._not_ours()
        if isinstance(exc, sqlite3.Error):
            return self._sqlite_error(exc, doing)
        return exc

    def _sqlite_error(self, exc: sqlite3.Error, doing: str) -> ExportFileError:
        if getattr(exc, "sqlite_errorname", None) in _DAMAGED:
            return self._error(f"the state file is damaged ({exc}); move it away to start afresh")
        return self._error(f"{doing} ({exc})")


class OpenState:
    """A state file opened for one push: `state` to plan with; `acknowledge` and `complete`
    record it (never in a dry run)."""

    def __init__(
        self,
        file: StateFile,
        db: sqlite3.Connection | None,
        high_water: dt.datetime | None,
        *,
        dry_run: bool,
    ) -> None:
        self.file = file
        self.db = db
        self.dry_run = dry_run
        self.closed = False
        self.state = PushState(high_water, StoredHashes(self))

    def __enter__(self) -> OpenState:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.closed = True

    def acknowledge(self, entries: Sequence[tuple[int, str]]) -> None:
        """Records a batch's (tran_number, hash) pairs in one transaction: on disk when this
        returns; a crash before leaves none of them."""
        self._write(_RECORD, entries)

    def complete(self, high_water: dt.datetime | None) -> None:
        self._write(_SET_MARK, [(_iso(high_water),)])
        self.state.high_water = high_water

    def read(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        # A plan's batches are made as they are sent, from what the state holds then: read
        # after closing, the state would look empty and give them other webhook-ids.
        if self.closed:
            raise RuntimeError("the state file is closed")
        if self.db is None:
            return []
        try:
            return self.db.execute(sql, values).fetchall()
        except sqlite3.Error as exc:
            raise self.file._sqlite_error(exc, "cannot read the state file") from None

    def _write(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if self.dry_run or self.closed:
            raise RuntimeError("a dry run writes no state" if self.dry_run else "closed")
        try:
            if self.db is None:
                self.file._replace_with(lambda db: None)
                self.db = self.file._connect()
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self.file._sqlite_error(exc, "cannot write the state file") from None


class StoredHashes(Mapping[int, str]):
    """The acknowledged hashes of an open state file, read as they are asked for."""

    def __init__(self, opened: OpenState) -> None:
        self._opened = opened

    def among(self, tran_numbers: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for start in range(0, len(tran_numbers), _LOOKUP):
            part = tran_numbers[start : start + _LOOKUP]
            marks = ",".join("?" * len(part))
            sql = f"SELECT tran_number, hash FROM acknowledged WHERE tran_number IN ({marks})"
            found.update(self._opened.read(sql, part))
        return found

    def __getitem__(self, tran_number: int) -> str:
        return self.among([tran_number])[tran_number]

    def __iter__(self) -> Iterator[int]:
        rows = self._opened.read("SELECT tran_number FROM acknowledged ORDER BY 1", ())
        return (tran_number for (tran_number,) in rows)

    def __len__(self) -> int:
        rows = self._opened.read("SELECT count(*) FROM acknowledged", ())
        return int(rows[0][0]) if rows else 0


def _fill(db: sqlite3.Connection, content: Content) -> None:
    db.executescript("BEGIN;" + _SCHEMA)
    high_water = content(db)
    db.execute(_SET_MARK, (_iso(high_water),))
    db.execute("COMMIT")


# --- the earlier exporter's JSON file -----------------------------------------------------

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Entries written per executemany while an earlier file is read.
_CONVERT = 5000


def _read_earlier(text: str, db: sqlite3.Connection) -> dt.datetime | None:
    """Writes the entries of an earlier exporter's state file into `db` and returns its mark,
    checked as that exporter checked them (json.loads of the whole file, then
    `{int(k): str(v)}` of its `acknowledged` object).

    The file is read a member at a time, with the json module's own readers for every key
    and value: loaded whole, a million entries held 300 MB of Python objects at once. The
    members of `acknowledged` go to the database as they are read; a key given twice counts
    once, the last time, as for json.loads.
    """
    members: dict[str, Any] = {}

    def entry(key: str, at: int, pending: list[tuple[int, str]]) -> int:
        value, end = _DECODER.raw_decode(text, at)
        pending.append((int(key), str(value)))
        if len(pending) >= _CONVERT:
            db.executemany(_RECORD, pending)
            pending.clear()
        return end

    def member(key: str, at: int) -> int:
        if key != "acknowledged" or text[at] != "{":
            members[key], end = _DECODER.raw_decode(text, at)
            return end
        db.execute("DELETE FROM acknowledged")
        pending: list[tuple[int, str]] = []
        end = _object(text, at, lambda k, i: entry(k, i, pending))
        db.executemany(_RECORD, pending)
        members[key] = {}
        return end

    end = _object(text, _skip(text, 0), member)
    if _skip(text, end) != len(text):
        raise ValueError("extra data after the object")
    if members.get("version") != _JSON_VERSION:
        raise ValueError("unknown state file version")
    if not isinstance(members["acknowledged"], dict):
        raise ValueError("acknowledged must be an object")
    return _high_water(members["high_water"])


def _object(text: str, at: int, member: Callable[[str, int], int]) -> int:
    """Reads the JSON object at `text[at]` (as json.decoder.JSONObject does), handing each
    member's key and the index of its value to `member`, which returns where the value ends;
    returns where the object ends."""
    if text[at] != "{":
        raise ValueError("not an object")
    at = _skip(text, at + 1)
    if text[at] == "}":
        return at + 1
    while True:
        if text[at] != '"':
            raise ValueError("expected a key")
        key, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text[at] != ":":
            raise ValueError("expected ':'")
        at = _skip(text, member(key, _skip(text, at + 1)))
        if text[at] == "}":
            return at + 1
        if text[at] != ",":
            raise ValueError("expected ',' or '}'")
        at = _skip(text, at + 1)


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


def _companions(path: Path) -> list[Path]:
    """The files SQLite may keep beside a database (a rollback journal; WAL's two)."""
    return [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm")]


def _pragma(db: sqlite3.Connection, name: str) -> int:
    row = db.execute(f"PRAGMA {name}").fetchone()
    return int(row[0]) if row else 0


def _iso(stamp: dt.datetime | None) -> str | None:
    return stamp.isoformat() if stamp else None


def _sync_directory(directory: Path) -> None:
    """Makes the rename itself durable where the system allows it (not on Windows, where a
    directory cannot be opened, and NTFS journals the rename)."""
    if os.name == "nt":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class _Unusable(ValueError):
    """A state file of ours whose content cannot be used; `str()` says which part."""


def _high_water(value: Any) -> dt.datetime | None:
    """Sage's RECORD_MODIFY_DATE as the exporter wrote it: local time, without an offset,
    as Sage keeps it (an offset could not be compared with Sage's dates)."""
    if value is None or value == "":
        return None
    try:
        stamp = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        stamp = None
    if stamp is None:
        raise _Unusable(f"high_water {json.dumps(value)[:60]} is not a date and time")
    if stamp.tzinfo is not None:
        raise _Unusable(
            f"high_water {value} has a time zone; the exporter writes Sage's local time without one"
        )
    return stamp
