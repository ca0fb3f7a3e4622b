"""The Sage fixture company (tests/fixtures/sage) and ways to write altered copies of it.

Besides the three audit-trail tables, the folder holds CURRENCY.csv (GBP the base, USD, EUR)
and the cleared year's AUDIT_HISTORY_HEADER / _SPLIT / _USAGE exports."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

from ledgerlink_exporter.push import content_hash
from ledgerlink_exporter.sage import SageExport
from ledgerlink_exporter.state import PushState, StateFile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sage"
HEADER = FIXTURES / "AUDIT_HEADER.csv"
SPLIT = FIXTURES / "AUDIT_SPLIT.csv"
USAGE = FIXTURES / "AUDIT_USAGE.csv"
FILES = (HEADER, SPLIT, USAGE)
CURRENCY = FIXTURES / "CURRENCY.csv"
HISTORY_HEADER = FIXTURES / "AUDIT_HISTORY_HEADER.csv"
HISTORY_SPLIT = FIXTURES / "AUDIT_HISTORY_SPLIT.csv"
HISTORY_USAGE = FIXTURES / "AUDIT_HISTORY_USAGE.csv"
HISTORY_FILES = (HISTORY_HEADER, HISTORY_SPLIT, HISTORY_USAGE)

Rows = list[dict[str, str]]


def read_rows(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8-sig") as file:
        return list(csv.DictReader(file))


def write_rows(path: Path, rows: Rows, columns: list[str] | None = None) -> Path:
    fields = columns or list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def altered(
    tmp_path: Path, change: Callable[[str, Rows], None] | None = None
) -> tuple[Path, Path, Path]:
    """A plain CSV copy of the three fixture files, each table's rows passed to `change`;
    CURRENCY.csv and the cleared year's files are copied beside them unchanged."""
    for companion in (CURRENCY, *HISTORY_FILES):
        shutil.copy(companion, tmp_path / companion.name)
    paths = []
    for source in FILES:
        rows = read_rows(source)
        columns = list(rows[0])
        if change is not None:
            change(source.stem, rows)
        if rows:
            columns = list(rows[0])
        paths.append(write_rows(tmp_path / source.name, rows, columns))
    header, split, usage = paths
    return header, split, usage


def saved_state(path: Path) -> PushState:
    """Everything a state file holds, read as a push reads it."""
    with StateFile(path).open(dry_run=True) as opened:
        return PushState(opened.state.high_water, dict(opened.state.acknowledged))


def save_complete_push(path: Path, export: SageExport) -> None:
    """A state file as a push of `export` leaves it once complete: every posting acknowledged,
    the high-water mark at its latest modify date."""
    StateFile(path).save(
        PushState(
            high_water=max(r for r in export.revisions.values() if r is not None),
            acknowledged={p.tran_number: content_hash(p) for p in export.postings},
        )
    )
