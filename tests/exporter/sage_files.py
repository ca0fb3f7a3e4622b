"""The Sage fixture company (tests/fixtures/sage) and ways to write altered copies of it."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sage"
HEADER = FIXTURES / "AUDIT_HEADER.csv"
SPLIT = FIXTURES / "AUDIT_SPLIT.csv"
USAGE = FIXTURES / "AUDIT_USAGE.csv"
FILES = (HEADER, SPLIT, USAGE)

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
    """A plain CSV copy of the three fixture files, each table's rows passed to `change`."""
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
