"""A big company is read as a stream (issue 24): its tables are never held whole, batches are
made as they are sent, and what reaches the service is what the rows say, in whatever order
the rows come."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from ledgerlink_exporter import store
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import plan_push

from bench.exporter import measure, write_company
from tests.exporter.sage_files import FILES, Rows, altered, saved_state
from tests.exporter.stand_in import serving
from tests.exporter.test_push import FakeService, push, unstamped

# 1,000,000 rows took 4.3 GB when every row was held (731 MB for 100,000); streamed, a dry
# run of 50,000 stays under 100 MB (the bench measures 1,000,000: docs/BENCHMARKS.md).
ROWS = 50_000
PEAK_MB = 150


def test_a_dry_run_of_a_big_company_holds_no_table_in_memory(tmp_path: Path) -> None:
    files = write_company(tmp_path, ROWS)
    push = ["push", "--url", "http://ledgerlink.invalid", "--dry-run"]
    dry_run = measure(["-m", "ledgerlink_exporter", *push, *map(str, files)])
    assert "would send 47500 postings in 95 batches" in dry_run.output
    assert dry_run.peak_mb < PEAK_MB


def test_rows_in_any_order_give_the_same_postings(tmp_path: Path) -> None:
    def shuffled(table: str, rows: Rows) -> None:
        random.Random(table).shuffle(rows)

    mixed = read_export(*altered(tmp_path, shuffled), history=True)
    ordered = read_export(*FILES, history=True)
    assert mixed.postings == ordered.postings
    assert dict(mixed.revisions) == dict(ordered.revisions)
    assert (mixed.unlinked_allocations, mixed.skipped_types, mixed.from_history) == (
        ordered.unlinked_allocations,
        ordered.skipped_types,
        ordered.from_history,
    )


def test_rows_written_and_read_in_small_pieces_give_the_same_postings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows reach SQLite a buffer at a time, some while the usage rows are being resolved,
    and postings come back a chunk at a time: pieces of 3 and 2 change nothing."""
    whole = read_export(*FILES, history=True)
    monkeypatch.setattr(store, "_BUFFER", 3)
    monkeypatch.setattr(store, "_CHUNK", 2)
    pieces = read_export(*FILES, history=True)
    assert list(pieces.postings) == list(whole.postings)
    assert dict(pieces.revisions) == dict(whole.revisions)
    assert pieces.unlinked_allocations == whole.unlinked_allocations


def test_a_batch_is_the_same_whether_made_in_turn_or_alone(tmp_path: Path) -> None:
    files = write_company(tmp_path, 2_000)
    plan = plan_push(read_export(*files), None, batch_size=70)
    in_turn = list(plan.batches)
    assert len(in_turn) == len(plan.batches) == -(-plan.postings // 70)
    for number in (0, 1, len(in_turn) // 2, len(in_turn) - 1):
        alone = plan.batches[number]
        assert (alone.number, alone.body, alone.webhook_id) == (
            in_turn[number].number,
            in_turn[number].body,
            in_turn[number].webhook_id,
        )


def test_a_big_company_reaches_the_service_whole_and_once(tmp_path: Path) -> None:
    """Against a fake service that checks every body as the webhook does."""
    files = write_company(tmp_path / "company", 3_000)
    state = tmp_path / "state.json"
    with serving(FakeService()) as service:
        first = push(service.url, "--state", str(state), "--batch-size", "200", files=files)
        assert first.exit_code == 0, first.output
        sent = [tran for batch in service.applied for tran in batch]
        assert len(sent) == 2_850
        assert sent == sorted(set(sent)), "each transaction once, in TRAN_NUMBER order"
        assert [len(batch) for batch in service.applied] == [200] * 14 + [50]
        assert sorted(saved_state(state).acknowledged) == sent

        again = push(service.url, "--state", str(state), "--batch-size", "200", files=files)
        assert again.exit_code == 0, again.output
        assert len(service.applied) == 15, "nothing new to send"
        # The cleared year is read on a first load only.
        assert "2700 postings unchanged since the last push" in " ".join(unstamped(again.stdout))
