"""The state file at scale (issue 24): a SQLite database recording each acknowledged batch in
one transaction, looked up while planning instead of held in memory, and the JSON file of the
exporter before it read and converted without losing an entry."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from ledgerlink_exporter import push as push_module
from ledgerlink_exporter import state as state_module
from ledgerlink_exporter.client import Acknowledgement
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import PushPlan, StateTracker, content_hash, plan_push, run_push
from ledgerlink_exporter.sage import ExportFileError, SageExport
from ledgerlink_exporter.state import PushState, StateFile

from bench.exporter import CONVERT, earlier_save, measure, write_company
from tests.exporter.sage_files import FILES, saved_state
from tests.exporter.stand_in import serving
from tests.exporter.test_push import LAST_MODIFIED, FakeService, changed, push, unstamped
from tests.exporter.test_sage import PUSHED_TRANS

# Written by the exporter before this change (tests/fixtures/exporter): a complete first load
# of the fixture company, and a first load stopped after two batches of five.
EARLIER = Path(__file__).resolve().parents[1] / "fixtures" / "exporter"
COMPLETE_V1 = EARLIER / "push-state-v1.json"
INTERRUPTED_V1 = EARLIER / "push-state-v1-interrupted.json"
SQLITE_MAGIC = b"SQLite format 3\x00"


def v1_content(path: Path) -> PushState:
    data = json.loads(path.read_text())
    mark = data["high_water"]
    return PushState(
        dt.datetime.fromisoformat(mark) if mark else None,
        {int(k): v for k, v in data["acknowledged"].items()},
    )


def batches(plan: PushPlan) -> list[tuple[tuple[int, ...], bytes, str]]:
    return [(b.tran_numbers, b.body, b.webhook_id) for b in plan.batches]


def only_the_state_file(state: Path) -> None:
    assert [p.name for p in state.parent.iterdir()] == [state.name], "nothing left beside it"


@pytest.fixture
def service() -> object:
    with serving(FakeService()) as server:
        yield server


# --- the earlier exporter's JSON file -----------------------------------------------------


def test_a_json_state_file_is_converted_in_place_on_the_first_push(
    service: FakeService, tmp_path: Path
) -> None:
    state = tmp_path / "push-state.json"
    shutil.copy(COMPLETE_V1, state)
    result = push(service.url, "--state", str(state))
    assert result.exit_code == 0, result.output
    assert state.read_bytes().startswith(SQLITE_MAGIC)
    assert saved_state(state) == v1_content(COMPLETE_V1), "every entry and the mark carried over"
    assert service.applied == [], "a complete push before: nothing to send"
    assert "29 postings unchanged since the last push" in result.stdout
    only_the_state_file(state)

    again = push(service.url, "--state", str(state))
    assert again.exit_code == 0, again.output
    assert service.applied == []


def test_a_push_interrupted_under_the_earlier_exporter_resumes_with_its_batches(
    service: FakeService, tmp_path: Path
) -> None:
    """The webhook-ids are those the earlier exporter computed from this very file (batch 3
    of its run was the one lost), so a batch it sent unanswered is replayed, not applied
    again."""
    state = tmp_path / "push-state.json"
    shutil.copy(INTERRUPTED_V1, state)
    result = push(service.url, "--state", str(state), "--batch-size", "5")
    assert result.exit_code == 0, result.output
    assert service.ids == [
        "msg_705cfed8d90d87de215615e73854748b",
        "msg_61e2b6847d855d35b50a08210b0d33a1",
        "msg_d373ada715f6557293a1208aaeda25ba",
        "msg_46d3bd94b1e549c556050f61db5a1c16",
        "msg_8bd6b95e704909dbec4099fdc90173c4",
    ]
    assert [t for batch in service.applied for t in batch] == PUSHED_TRANS[10:]
    saved = saved_state(state)
    assert sorted(saved.acknowledged) == PUSHED_TRANS
    earlier = v1_content(INTERRUPTED_V1).acknowledged
    assert {t: saved.acknowledged[t] for t in earlier} == earlier
    assert saved.high_water == dt.datetime.fromisoformat(LAST_MODIFIED)


def test_a_dry_run_reads_a_json_state_file_and_leaves_it_as_it_is(tmp_path: Path) -> None:
    state = tmp_path / "push-state.json"
    shutil.copy(INTERRUPTED_V1, state)
    result = push("http://h.test", "--dry-run", "--state", str(state), "--batch-size", "5")
    assert result.exit_code == 0, result.output
    assert "would send 23 postings in 5 batches" in result.stdout
    assert "10 postings unchanged since the last push" in result.stdout
    assert state.read_bytes() == INTERRUPTED_V1.read_bytes()
    only_the_state_file(state)


def test_a_conversion_that_fails_leaves_the_json_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "push-state.json"
    shutil.copy(COMPLETE_V1, state)

    def full_disk(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    result = push("http://h.test", "--state", str(state))
    assert result.exit_code == 2, result.output
    assert unstamped(result.stderr) == [
        f"error: {state}: cannot write the state file (No space left on device)"
    ]
    assert state.read_bytes() == COMPLETE_V1.read_bytes()
    only_the_state_file(state)


def as_the_earlier_exporter_read(raw: bytes) -> PushState | None:
    """What the earlier exporter made of a file (its StateFile.load), None for a refusal."""
    try:
        data = json.loads(raw)
        assert isinstance(data, dict)
        assert data.get("version") == 1
        acknowledged = data["acknowledged"]
        assert isinstance(acknowledged, dict)
        mark = data["high_water"]
        return PushState(
            dt.datetime.fromisoformat(mark) if mark else None,
            {int(k): str(v) for k, v in acknowledged.items()},
        )
    except (AssertionError, ValueError, TypeError, KeyError, RecursionError):
        return None


V1 = '"version": 1'
NO_MARK = b'{"version":1,"high_water":null,"acknowledged":'
EARLIER_FILES = {
    "as written": COMPLETE_V1.read_bytes(),
    "interrupted": INTERRUPTED_V1.read_bytes(),
    "pretty, reordered": json.dumps(
        {"acknowledged": {"7": "ab", "3": "cd"}, "version": 1, "high_water": "2025-03-20T16:45:00"},
        indent=2,
    ).encode()
    + b"\n",
    "escaped keys and values": b'{"version":1,"high_water":null,"acknowledged":'
    b'{"\\u0033":"\\u00e9t\\u00e9","1_0":"x"}}',
    "a key given twice": b'{"version":1,"high_water":null,"acknowledged":{"1":"a","2":"b"},'
    b'"acknowledged":{"2":"c","2":"d"}}',
    "values not text": NO_MARK + b'{"5":5,"6":[1,{}],"7":null}}',
    "empty": b'{"version":1,"high_water":null,"acknowledged":{}}',
    "UTF-16": json.dumps({"version": 1, "high_water": None, "acknowledged": {"9": "x"}}).encode(
        "utf-16"
    ),
    "truncated": COMPLETE_V1.read_bytes()[:-7],
    "trailing text": COMPLETE_V1.read_bytes() + b" x",
    "a key not a number": b'{"version":1,"high_water":null,"acknowledged":{"three":"a"}}',
    "acknowledged a list": b'{"version":1,"high_water":null,"acknowledged":[["3","a"]]}',
    "acknowledged replaced by a list": b'{"version":1,"high_water":null,'
    b'"acknowledged":{"3":"a"},"acknowledged":[]}',
    "no mark": b'{"version":1,"acknowledged":{"3":"a"}}',
    "version 2": b'{"version":2,"high_water":null,"acknowledged":{"3":"a"}}',
    "a number too big": NO_MARK + b'{"99999999999999999999":"a"}}',
    "a list": b"[" + V1.encode() + b"]",
    "nested deep": b'{"version":1,"high_water":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not closed": b'{"version":1,"high_water":null,"acknowledged":{"3":"a"',
}


@pytest.mark.parametrize("name", EARLIER_FILES)
def test_an_earlier_file_is_read_as_the_earlier_exporter_read_it(tmp_path: Path, name: str) -> None:
    raw = EARLIER_FILES[name]
    state = tmp_path / "push-state.json"
    state.write_bytes(raw)
    expected = as_the_earlier_exporter_read(raw)
    if name == "a number too big":
        # The earlier exporter held any integer; SQLite holds 64 bits, as Sage's numbers do.
        assert expected is not None
        expected = None
    if expected is None:
        with pytest.raises(ExportFileError, match="not a ledgerlink exporter state file"):
            saved_state(state)
    else:
        assert saved_state(state) == expected
    assert state.read_bytes() == raw, "a dry run's reading leaves the file as it is"


# --- the same plan as from the map in memory ----------------------------------------------


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory) -> SageExport:
    files = write_company(tmp_path_factory.mktemp("company"), 3_000)
    return read_export(*files, history=True)


def many_entries(export: SageExport) -> dict[int, str]:
    """Most postings as they are, one in seven acknowledged with other content, one in
    eleven never acknowledged, and 20,000 transactions the export no longer has."""
    acknowledged = {}
    for index, posting in enumerate(export.postings):
        if index % 11 == 3:
            continue
        digest = content_hash(posting)
        acknowledged[posting.tran_number] = digest[::-1] if index % 7 == 2 else digest
    acknowledged.update({10_000_000 + n: f"{n:032x}" for n in range(20_000)})
    return acknowledged


@pytest.mark.parametrize("lookups", ["as shipped", "in pieces of 7 and 13"])
def test_a_state_file_of_many_entries_gives_the_plan_the_map_in_memory_gave(
    company: SageExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lookups: str
) -> None:
    if lookups != "as shipped":
        monkeypatch.setattr(state_module, "_LOOKUP", 7)
        monkeypatch.setattr(push_module, "_LOOKUP", 13)
    in_memory = PushState(dt.datetime(2025, 3, 1), many_entries(company))
    state = StateFile(tmp_path / "push-state.db")
    state.save(in_memory)
    before = plan_push(company, in_memory, batch_size=70, now=dt.datetime(2026, 1, 1))
    with state.open(dry_run=True) as opened:
        assert opened.state.high_water == in_memory.high_water
        assert len(opened.state.acknowledged) == len(in_memory.acknowledged)
        after = plan_push(company, opened.state, batch_size=70, now=dt.datetime(2026, 1, 1))
        assert (after.postings, after.unchanged, after.by_type, after.high_water) == (
            before.postings,
            before.unchanged,
            before.by_type,
            before.high_water,
        )
        assert after.unchanged > 2_000
        assert batches(after) == batches(before)


def test_an_edited_posting_keeps_the_webhook_id_the_earlier_exporter_gave_it(
    tmp_path: Path,
) -> None:
    """The id of a batch carries the hash the state file held before (an edit reverted in
    Sage is not a replay): read from the converted file, the ids are those the earlier
    exporter computed from its JSON file."""
    state = tmp_path / "push-state.json"
    shutil.copy(COMPLETE_V1, state)
    edited = changed(
        read_export(*FILES),
        t13={"gross_amount": Decimal("99.00")},
        t22={"details": "corrected"},
        t3={"details": "x"},
    )
    with StateFile(state).open() as opened:
        plan = plan_push(edited, opened.state, batch_size=2)
        assert state.read_bytes().startswith(SQLITE_MAGIC)
        assert (plan.postings, plan.unchanged) == (3, 26)
        assert [(b.tran_numbers, b.webhook_id) for b in plan.batches] == [
            ((3, 13), "msg_f44a7689f1ca8ac21fa6bea2e8e63bdd"),
            ((22,), "msg_c8d072d9265dc84801bf4a173aaf0b5b"),
        ]
    with pytest.raises(RuntimeError, match="the state file is closed"):
        list(plan.batches)


# --- durable after each batch -------------------------------------------------------------


def recorded_by(plan: PushPlan, count: int) -> dict[int, str]:
    return {
        tran: digest
        for batch in list(plan.batches)[:count]
        for tran, digest in zip(batch.tran_numbers, batch.hashes, strict=True)
    }


def test_a_push_stopped_inside_delivery_leaves_the_batches_before_it(
    company: SageExport, tmp_path: Path
) -> None:
    plan = plan_push(company, None, batch_size=400)
    calls = 0

    async def deliver(body: bytes, webhook_id: str) -> Acknowledgement:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("the PC lost power")
        return Acknowledgement(False, webhook_id, 400, 400, 0, 0)

    with StateFile(tmp_path / "push-state.db").open() as opened:
        with pytest.raises(RuntimeError):
            asyncio.run(run_push(plan, deliver, tracker=StateTracker(opened)))
    assert saved_state(tmp_path / "push-state.db") == PushState(None, recorded_by(plan, 3))


CRASH = """
import asyncio, os, sys
from pathlib import Path
from ledgerlink_exporter.client import Acknowledgement
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import StateTracker, plan_push, run_push
from ledgerlink_exporter.state import StateFile

header, split, usage, state, survive, where = sys.argv[1:]
export = read_export(Path(header), Path(split), Path(usage), history=True)
plan = plan_push(export, None, batch_size=400)
opened = StateFile(Path(state)).open()
calls = 0

def die_at_commit(sql):
    if sql == "COMMIT":
        os._exit(9)

async def deliver(body, webhook_id):
    global calls
    calls += 1
    if calls > int(survive):
        if where == "delivering":
            os._exit(9)
        # Acknowledged; the process dies in the transaction that records it, at its COMMIT,
        # with a cache so small that the new rows have reached the file already.
        opened.db.execute("PRAGMA cache_size = 1")
        opened.db.set_trace_callback(die_at_commit)
    return Acknowledgement(False, webhook_id, 400, 400, 0, 0)

asyncio.run(run_push(plan, deliver, tracker=StateTracker(opened)))
"""


@pytest.mark.parametrize("where", ["delivering", "recording"])
def test_a_process_killed_during_batch_4_leaves_batches_1_to_3_recorded(
    company: SageExport, tmp_path: Path, where: str
) -> None:
    files = write_company(tmp_path / "company", 3_000)
    state = tmp_path / "state" / "push-state.db"
    state.parent.mkdir()
    died = subprocess.run(
        [sys.executable, "-c", CRASH, *map(str, files), str(state), "3", where],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert died.returncode == 9, died.stderr
    journal = state.with_name(state.name + "-journal")
    if where == "recording":
        assert journal.stat().st_size > 0, "the process died inside the transaction"
    plan = plan_push(company, None, batch_size=400)
    assert saved_state(state) == PushState(None, recorded_by(plan, 3))
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not journal.exists(), "rolled back when next opened"


def test_a_journal_left_beside_a_state_file_moved_away_is_not_played_into_the_next(
    company: SageExport, service: FakeService, tmp_path: Path
) -> None:
    """A push killed while recording; the state file is moved away and an earlier one put
    back (the earlier exporter's, from a backup): the journal left beside the killed file
    belongs to it, and played into the file made from the backup it damaged that file."""
    files = write_company(tmp_path / "company", 3_000)
    state = tmp_path / "state" / "push-state.db"
    state.parent.mkdir()
    subprocess.run(
        [sys.executable, "-c", CRASH, *map(str, files), str(state), "3", "recording"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    journal = state.with_name(state.name + "-journal")
    assert journal.stat().st_size > 0
    state.rename(tmp_path / "moved-away.db")
    backup = {p.tran_number: content_hash(p) for p in company.postings}
    earlier_save(state, None, backup)

    result = push(service.url, "--state", str(state), "--batch-size", "200", files=files)
    assert result.exit_code == 0, result.output
    assert service.applied == [], "the backup holds every posting as it is"
    assert saved_state(state).acknowledged == backup
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    only_the_state_file(state)


# --- memory -------------------------------------------------------------------------------


def test_a_dry_run_with_a_full_state_holds_none_of_it_in_memory(tmp_path: Path) -> None:
    """500,000 acknowledged transactions (every posting of a 50,000-row company and 452,500
    cleared since) took the earlier exporter 203 MB; the same dry run without a state file
    peaks near 60 MB."""
    files = write_company(tmp_path / "company", 50_000)
    export = read_export(*files, history=True)
    acknowledged = {p.tran_number: content_hash(p) for p in export.postings}
    acknowledged.update({10_000_000 + n: f"{n:032x}" for n in range(500_000 - len(acknowledged))})
    mark = max(stamp for _, stamp in export.revisions.items() if stamp is not None)
    state = tmp_path / "push-state.db"
    StateFile(state).save(PushState(mark, acknowledged))
    del export, acknowledged
    push = ["push", "--url", "http://ledgerlink.invalid", "--dry-run", "--state", str(state)]
    dry_run = measure(["-m", "ledgerlink_exporter", *push, *map(str, files)])
    assert "would send 0 postings in 0 batches" in dry_run.output
    assert "45000 postings unchanged since the last push" in dry_run.output
    assert dry_run.peak_mb < 100


def test_converting_an_earlier_file_of_500000_entries_holds_none_of_them_at_once(
    tmp_path: Path,
) -> None:
    """Loaded whole by json, as the earlier exporter loaded it, such a file takes 160 MB."""
    state = tmp_path / "push-state.json"
    earlier_save(state, "2025-03-20T16:45:00", {n: f"{n:032x}" for n in range(1, 500_001)})
    converting = measure(["-c", CONVERT, str(state)])
    assert converting.last_line() == "500000"
    assert state.read_bytes().startswith(SQLITE_MAGIC)
    assert converting.peak_mb < 100


# --- unusable files -----------------------------------------------------------------------


def another_programs_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE acknowledged (tran_number INTEGER PRIMARY KEY, hash TEXT)")
    db.close()


def with_mark(value: object) -> object:
    def write(path: Path) -> None:
        StateFile(path).save(PushState())
        with sqlite3.connect(path) as db:
            db.execute("UPDATE mark SET high_water = ?", (value,))
        db.close()

    return write


def newer_format(path: Path) -> None:
    StateFile(path).save(PushState())
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 3")
    db.close()


def damaged(path: Path) -> None:
    StateFile(path).save(PushState(None, {n: f"{n:032x}" for n in range(5_000)}))
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xff" * 8192)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (another_programs_database, "not a ledgerlink exporter state file"),
        (
            with_mark("2025-03-20T16:45:00+00:00"),
            "high_water 2025-03-20T16:45:00+00:00 has a time zone",
        ),
        (with_mark("last tuesday"), 'high_water "last tuesday" is not a date and time'),
        (newer_format, "state format 3, which this exporter does not read"),
        (damaged, "the state file is damaged (database disk image is malformed)"),
    ],
)
def test_an_unusable_state_database_is_one_line_and_exit_2(
    tmp_path: Path, make: object, problem: str
) -> None:
    state = tmp_path / "push-state.db"
    assert callable(make)
    make(state)
    content = state.read_bytes()
    for args in ([], ["--dry-run"]):
        result = push("http://h.test", "--state", str(state), *args)
        assert result.exit_code == 2, result.output
        [line] = unstamped(result.stderr)
        assert line.startswith(f"error: {state}: {problem}")
        assert line.endswith("; move it away to start afresh")
        assert state.read_bytes() == content, "left as it was"


def test_a_state_file_that_cannot_be_written_mid_push_is_one_line_and_exit_2(
    service: FakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Used to end in a traceback."""
    monkeypatch.setattr(state_module, "_RECORD", "INSERT INTO elsewhere VALUES (?, ?)")
    state = tmp_path / "push-state.db"
    result = push(service.url, "--state", str(state), "--batch-size", "5")
    assert result.exit_code == 2, result.output
    assert unstamped(result.stderr) == [
        f"error: {state}: cannot write the state file (no such table: elsewhere)"
    ]
    assert len(service.applied) == 1, "nothing sent after a batch it could not record"


def test_a_dry_run_writes_nothing_to_a_state_database(tmp_path: Path) -> None:
    state = tmp_path / "push-state.db"
    StateFile(state).save(PushState(dt.datetime(2025, 3, 1), {3: "ab"}))
    content, changed_at = state.read_bytes(), os.stat(state).st_mtime_ns
    result = push("http://h.test", "--dry-run", "--state", str(state), secret=None)
    assert result.exit_code == 0, result.output
    assert (state.read_bytes(), os.stat(state).st_mtime_ns) == (content, changed_at)
    only_the_state_file(state)


def test_a_new_state_file_appears_whole_with_the_first_batch(tmp_path: Path) -> None:
    state = tmp_path / "push-state.db"
    with StateFile(state).open() as opened:
        assert not state.exists()
        opened.acknowledge([(3, "ab")])
        assert saved_state(state) == PushState(None, {3: "ab"})
        opened.complete(dt.datetime(2025, 3, 1))
    assert saved_state(state) == PushState(dt.datetime(2025, 3, 1), {3: "ab"})
    only_the_state_file(state)
