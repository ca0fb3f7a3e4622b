"""The push command: batches, the state file, resuming, dry runs, scheduling, and what it says
when things go wrong (against a scripted stand-in where the real service cannot be made to
fail on cue, and against the real service otherwise)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from ledgerlink_demo.company import generate_company, write_export
from ledgerlink_exporter.cli import _PushJob, _run_every, _source, app, parse_duration
from ledgerlink_exporter.client import BatchRejected, Signer, WebhookClient
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.options import InputError
from ledgerlink_exporter.push import canonical_json, content_hash, plan_push
from ledgerlink_exporter.sage import Allocation, SageExport
from ledgerlink_exporter.state import PushState, StateFile

from service.ingest.schemas import PostingBatch
from tests.exporter.sage_files import FILES, Rows, altered, saved_state
from tests.exporter.stand_in import Answer, StandIn, serving
from tests.exporter.test_sage import CUSTOMER_TRANS, PUSHED_TRANS
from tests.support.processes import free_port
from tests.support.webhooks import OLD_SECRET, TEST_SECRET

PATHS = [str(path) for path in FILES]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ")
HIGH_WATER = "2025-03-20T16:45:00"
# The fixture's latest RECORD_MODIFY_DATE: what a complete push records.
LAST_MODIFIED = "2025-03-27T11:05:00"


class FakeService(StandIn):
    """Remembers webhook ids and answers as the service does; can fail one call."""

    def __init__(self) -> None:
        super().__init__([])
        self.applied: list[list[int]] = []
        self.ids: list[str] = []
        self.answers: dict[str, dict[str, Any]] = {}
        self.fail_call: int | None = None
        self.failure = "drop"
        self.reject_call: int | None = None

    def answer(self, payload: Any, body: bytes, headers: dict[str, str]) -> Answer:
        call = len(self.received)
        webhook_id = headers["webhook-id"]
        self.ids.append(webhook_id)
        if call == self.fail_call and self.failure == "drop":
            return Answer(drop=True)
        if call == self.reject_call:
            return Answer(422, {"status": 422, "detail": "posting 9 is invalid"})
        if webhook_id in self.answers:
            return Answer(200, self.answers[webhook_id])
        trans = [posting["tran_number"] for posting in payload["postings"]]
        PostingBatch.model_validate_json(body)
        self.applied.append(trans)
        self.answers[webhook_id] = {
            "event_id": webhook_id,
            "postings_received": len(trans),
            "postings_applied": len(trans) - 1,
            "postings_unchanged": 1,
            "invoices_affected": 2,
        }
        if call == self.fail_call and self.failure == "answer lost":
            return Answer(delay=1.0)
        return Answer(202, self.answers[webhook_id])


def unstamped(text: str) -> list[str]:
    lines = text.splitlines()
    assert all(STAMP.match(line) for line in lines), text
    return [STAMP.sub("", line) for line in lines]


def push(
    url: str, *args: str, secret: str | None = TEST_SECRET, files: Sequence[Path | str] = PATHS
) -> Result:
    env = {"LEDGERLINK_EXPORTER_SECRET": secret} if secret else {}
    return CliRunner().invoke(app, ["push", "--url", url, *args, *map(str, files)], env=env)


@pytest.fixture(autouse=True)
def no_exporter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEDGERLINK_EXPORTER_SECRET", "LEDGERLINK_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def service() -> Any:
    with serving(FakeService()) as server:
        yield server


def test_pushes_every_customer_posting_once(service: FakeService) -> None:
    result = push(service.url, "--batch-size", "5")
    assert result.exit_code == 0, result.output
    assert [t for batch in service.applied for t in batch] == PUSHED_TRANS
    assert [len(batch) for batch in service.applied] == [5, 5, 5, 5, 5, 5, 3]
    out = unstamped(result.stdout)
    assert "Sent: 33 postings in 7 batches (26 applied, 7 unchanged; 14 invoices affected)" in out
    assert out[-1].startswith("Skipped: 6 non-customer rows (BR 1, JD 1, PI 2, PP 2)")


def test_url_may_be_the_full_webhook_url(service: FakeService) -> None:
    result = push(service.url + "/v1/webhooks/sage/postings")
    assert result.exit_code == 0, result.output
    assert service.applied == [PUSHED_TRANS]


def test_resume_after_an_interrupted_push(service: FakeService, tmp_path: Path) -> None:
    state = tmp_path / "push-state.json"
    service.fail_call = 3
    first = push(service.url, "--batch-size", "5", "--state", str(state), "--max-attempts", "1")
    assert first.exit_code == 1
    assert service.applied == [PUSHED_TRANS[:5], PUSHED_TRANS[5:10]]
    [line] = unstamped(first.stderr)
    assert line.startswith("error: batch 3 of 7: gave up after 1 attempts: lost the connection")
    saved = saved_state(state)
    assert sorted(saved.acknowledged) == PUSHED_TRANS[:10]
    assert saved.high_water is None, "an unfinished run must not move the window"
    interrupted_id = service.ids[2]

    service.fail_call = None
    second = push(service.url, "--batch-size", "5", "--state", str(state))
    assert second.exit_code == 0, second.output
    assert service.applied[2:] == [
        PUSHED_TRANS[10:15],
        PUSHED_TRANS[15:20],
        PUSHED_TRANS[20:25],
        PUSHED_TRANS[25:30],
        PUSHED_TRANS[30:],
    ]
    everything = [t for batch in service.applied for t in batch]
    assert sorted(everything) == PUSHED_TRANS
    assert service.ids[3] == interrupted_id, "the resent batch keeps its webhook-id"
    assert saved_state(state).high_water == dt.datetime.fromisoformat(LAST_MODIFIED)

    calls = len(service.received)
    third = push(service.url, "--batch-size", "5", "--state", str(state))
    assert third.exit_code == 0
    assert len(service.received) == calls
    # After a complete first load only the live tables are read: the cleared year is not in
    # this export, and nothing is sent about it (absent is not deleted).
    assert "29 postings unchanged since the last push" in third.stdout


def test_a_batch_applied_but_unanswered_is_replayed_not_reapplied(
    service: FakeService, tmp_path: Path
) -> None:
    state = tmp_path / "push-state.json"
    service.fail_call, service.failure = 2, "answer lost"
    first = push(
        service.url,
        "--batch-size",
        "10",
        "--state",
        str(state),
        "--max-attempts",
        "1",
        "--timeout",
        "0.3",
    )
    assert first.exit_code == 1
    assert "did not answer in time" in first.stderr
    second = push(service.url, "--batch-size", "10", "--state", str(state))
    assert second.exit_code == 0, second.output
    assert service.applied == [
        PUSHED_TRANS[:10],
        PUSHED_TRANS[10:20],
        PUSHED_TRANS[20:30],
        PUSHED_TRANS[30:],
    ]
    assert "Replayed: 1 batch (10 postings) the server already had" in second.stdout


def dated_2030(table: str, rows: Rows) -> None:
    """A PC clock set wrong once: invoice 1's header says it was modified in 2030."""
    if table == "AUDIT_HEADER":
        rows[0]["RECORD_MODIFY_DATE"] = "01/06/2030 09:00:00"


def with_new_invoice(table: str, rows: Rows) -> None:
    """Dated 2030 as before, and a new invoice (transaction 100) entered since, on a clock
    set right."""
    dated_2030(table, rows)
    if table == "AUDIT_HEADER":
        rows.append(
            {
                **rows[1],
                "HEADER_NUMBER": "100",
                "TRAN_NUMBER": "100",
                "INV_REF": "10100",
                "RECORD_MODIFY_DATE": "02/04/2025 10:00:00",
            }
        )
    if table == "AUDIT_SPLIT":
        line = next(row for row in rows if row["TRAN_NUMBER"] == "3")
        number = {"TRAN_NUMBER": "100", "SPLIT_NUMBER": "100", "HEADER_NUMBER": "100"}
        rows.append({**line, **number, "RECORD_MODIFY_DATE": "02/04/2025 10:00:00"})


def test_a_row_modified_in_2030_hides_no_later_posting(
    service: FakeService, tmp_path: Path
) -> None:
    state = tmp_path / "push-state.json"
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    before = altered(tmp_path / "before", dated_2030)
    first = push(service.url, "--state", str(state), files=before)
    assert first.exit_code == 0, first.output
    [warning] = unstamped(first.stderr)
    assert warning.startswith(
        "warning: a posting modified in the future, the latest transaction 1 on "
        "2030-06-01 09:00:00 (a clock set wrong in Sage?): the high-water mark is taken as now, "
    )
    mark = saved_state(state).high_water
    assert mark is not None
    assert mark <= dt.datetime.now()

    after = altered(tmp_path / "after", with_new_invoice)
    second = push(service.url, "--state", str(state), files=after)
    assert second.exit_code == 0, second.output
    assert service.applied[-1] == [100]
    assert "30 postings unchanged since the last push" not in second.stdout
    assert "29 postings unchanged since the last push" in second.stdout


def test_a_state_file_marked_2099_is_clamped_and_hides_nothing(
    service: FakeService, tmp_path: Path
) -> None:
    state = tmp_path / "push-state.json"
    StateFile(state).save(PushState(high_water=dt.datetime(2099, 1, 1)))
    result = push(service.url, "--state", str(state))
    assert result.exit_code == 0, result.output
    [warning] = unstamped(result.stderr)
    assert warning.startswith("warning: the state file's high-water mark 2099-01-01 00:00:00 is")
    assert service.applied == [CUSTOMER_TRANS]
    mark = saved_state(state).high_water
    assert mark is not None
    assert mark <= dt.datetime.now()


def test_retries_are_announced_as_they_happen(tmp_path: Path) -> None:
    script = [Answer(503, {"detail": "database unavailable"}, {"retry-after": "0"})]
    with serving(StandIn(script)) as server:
        result = push(server.url)
    assert result.exit_code == 0, result.output
    assert unstamped(result.stderr) == ["retrying 2/6 in 0 s: 503 database unavailable"]


def test_stops_on_422_with_the_servers_detail(service: FakeService) -> None:
    service.reject_call = 2
    result = push(service.url, "--batch-size", "5")
    assert result.exit_code == 1
    assert service.applied == [PUSHED_TRANS[:5]]
    assert len(service.received) == 2, "a rejected batch is not retried, nothing after it sent"
    assert unstamped(result.stderr) == [
        "error: batch 2 of 7: the server rejected the batch (HTTP 422): posting 9 is invalid"
    ]
    assert "Rejected: 5 postings; not sent: 23 postings" in result.stdout


def test_a_2xx_page_that_is_not_ledgerlink_acknowledges_nothing(
    service: FakeService, tmp_path: Path
) -> None:
    """A proxy or captive portal answering 200 <html>OK</html>: the run fails, nothing enters
    the state file, and the next push to the real service sends every posting."""
    state = tmp_path / "push-state.json"
    portal = Answer(200, raw=b"<html>OK</html>", headers={"content-type": "text/html"})
    with serving(StandIn([], then=portal)) as server:
        first = push(server.url, "--state", str(state))
    assert first.exit_code == 1
    assert len(server.received) == 1, "not retried"
    webhook = f"{server.url}/v1/webhooks/sage/postings"
    assert unstamped(first.stderr) == [
        f"error: batch 1 of 1: {webhook} answered HTTP 200 but not as ledgerlink does "
        "(text/html: '<html>OK</html>'); nothing was taken as delivered. "
        "Check --url or LEDGERLINK_URL, and any proxy in between"
    ]
    assert "Sent: 0 postings in 0 batches" in first.stdout
    assert "Rejected: 0 postings; not sent: 33 postings" in first.stdout
    assert not state.exists(), "nothing acknowledged, nothing written"

    second = push(service.url, "--state", str(state))
    assert second.exit_code == 0, second.output
    assert service.applied == [PUSHED_TRANS]
    assert sorted(saved_state(state).acknowledged) == PUSHED_TRANS


async def test_the_services_own_answers_acknowledge(client: httpx.AsyncClient) -> None:
    """Against the real service: a new batch (202), the same delivery again (200, its stored
    answer), the same postings under a new id (202, all unchanged) are acknowledgements; a
    batch naming a transaction twice is refused (422), so no answer counts one twice."""
    sender = WebhookClient(client, str(client.base_url), Signer.from_secret(TEST_SECRET))
    plan = plan_push(read_export(*FILES), None, batch_size=10)
    batch = plan.batches[0]
    first = await sender.deliver(batch.body, batch.webhook_id)
    assert (first.replayed, first.event_id, first.postings_received) == (
        False,
        batch.webhook_id,
        10,
    )
    assert first.postings_applied == 10
    replay = await sender.deliver(batch.body, batch.webhook_id)
    assert replay == dataclasses.replace(first, replayed=True)
    again = await sender.deliver(batch.body, "msg_the_same_postings_again")
    assert (again.replayed, again.postings_applied, again.postings_unchanged) == (False, 0, 10)

    wire = batch.postings[0].to_wire()
    twice = canonical_json({"source": "sage50-exporter", "postings": [wire, wire]})
    with pytest.raises(BatchRejected) as caught:
        await sender.deliver(twice, "msg_one_posting_twice")
    assert caught.value.status == 422
    assert "send each transaction once per batch" in str(caught.value)


def test_a_refused_connection_fails_at_once_naming_the_url() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = push(closed, "--max-attempts", "6")
    assert result.exit_code == 1
    [line] = unstamped(result.stderr)
    assert line.startswith(f"error: batch 1 of 1: cannot connect to {closed}/v1/webhooks/")
    assert line.endswith("Point the exporter elsewhere with --url or LEDGERLINK_URL")


async def test_a_wrong_secret_names_the_setting_to_check(client: httpx.AsyncClient) -> None:
    """Against the real service: a 401 says which secret settings must agree."""
    sender = WebhookClient(client, str(client.base_url), Signer.from_secret(OLD_SECRET))
    with pytest.raises(BatchRejected) as caught:
        await sender.deliver(b'{"postings": []}', "msg_wrong_secret")
    assert caught.value.status == 401
    message = str(caught.value)
    assert "LEDGERLINK_EXPORTER_SECRET" in message
    assert "LEDGERLINK_WEBHOOK_SECRETS" in message


def test_dry_run_sends_nothing(service: FakeService) -> None:
    result = push(service.url, "--dry-run", "--batch-size", "5", secret=None)
    assert result.exit_code == 0, result.output
    assert service.received == []
    out = unstamped(result.stdout)
    assert out[0] == (
        f"Dry run, nothing sent: would send 33 postings in 7 batches to "
        f"{service.url}/v1/webhooks/sage/postings"
    )
    assert "Postings by type: SA 1, SC 4, SD 1, SI 16, SP 1, SR 10" in out
    assert "Cleared years: 4 postings read from AUDIT_HISTORY_*" in out
    assert "First 3 postings:" in out
    assert '    "tran_number": 3,' in out


def test_dry_run_writes_no_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    result = push("http://ledgerlink.test", "--dry-run", "--state", str(state), secret=None)
    assert result.exit_code == 0
    assert not state.exists()


def test_missing_secret_is_one_line_and_exit_2() -> None:
    result = push("http://ledgerlink.test", secret=None)
    assert result.exit_code == 2
    assert unstamped(result.stderr) == [
        "error: no webhook secret: pass --secret or set LEDGERLINK_EXPORTER_SECRET"
    ]


def test_missing_url_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(app, ["push", "--dry-run", *PATHS])
    assert result.exit_code == 2
    assert unstamped(result.stderr) == ["error: no service URL: pass --url or set LEDGERLINK_URL"]


def test_wrong_number_of_files_is_exit_2() -> None:
    result = CliRunner().invoke(app, ["push", "--url", "http://h.test", "--dry-run", PATHS[0]])
    assert result.exit_code == 2
    assert "expected AUDIT_HEADER.csv AUDIT_SPLIT.csv AUDIT_USAGE.csv (or --dsn), got 1" in (
        result.stderr
    )


def test_files_and_dsn_together_is_exit_2() -> None:
    result = push("http://h.test", "--dry-run", "--dsn", "Sage")
    assert result.exit_code == 2
    assert "either --dsn or the three CSV files" in result.stderr


@pytest.mark.parametrize("url", ["ledgerlink.test", "http://", "https://:8000"])
def test_a_bad_url_is_exit_2(url: str) -> None:
    result = push(url, "--dry-run")
    assert result.exit_code == 2
    assert unstamped(result.stderr) == [
        f"error: --url must be an http:// or https:// URL, got '{url}'"
    ]


def test_a_corrupt_state_file_is_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    result = push("http://h.test", "--state", str(state))
    assert result.exit_code == 2
    assert unstamped(result.stderr) == [
        f"error: {state}: not a ledgerlink exporter state file; move it away to start afresh"
    ]


def state_file(high_water: object) -> str:
    return json.dumps({"version": 1, "high_water": high_water, "acknowledged": {"3": "ab"}})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            state_file("2025-03-20T16:45:00+00:00"),
            "high_water 2025-03-20T16:45:00+00:00 has a time zone; the exporter writes Sage's "
            "local time without one",
        ),
        (state_file("2025-03-20T16:45:00Z"), "high_water 2025-03-20T16:45:00Z has a time zone"),
        (state_file("last tuesday"), 'high_water "last tuesday" is not a date and time'),
        (state_file(20250320), "high_water 20250320 is not a date and time"),
        ("[" * 100_000 + "]" * 100_000, "not a ledgerlink exporter state file"),
        (json.dumps({"version": 1, "high_water": None}), "not a ledgerlink exporter state file"),
    ],
)
def test_an_unusable_state_file_is_one_line_and_exit_2(
    tmp_path: Path, content: str, problem: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    for args in ([], ["--dry-run"]):
        result = push("http://h.test", "--state", str(state), *args)
        assert result.exit_code == 2, result.output
        [line] = unstamped(result.stderr)
        assert line.startswith(f"error: {state}: {problem}")
        assert line.endswith("; move it away to start afresh")


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"ledgerlink-exporter, version \d+\.\d+\.\d+\S*\n", result.stdout)


# --- scheduling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("1h", 3600), ("90s", 90), ("90", 90), ("1.5h", 5400)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "soon", "-5m", "0.5s", "15 minutes"])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="--every must be a duration like 15m"):
        parse_duration(text)


def test_every_keeps_pushing_and_outlives_a_failure(
    service: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateFile(tmp_path / "state.json")
    header, split, usage = FILES
    job = _PushJob(
        source=_source([header, split, usage], None),
        url=service.url,
        signer=Signer.from_secret(TEST_SECRET),
        store=state,
        batch_size=500,
        lookback=dt.timedelta(hours=48),
        timeout=5,
        attempts=1,
    )
    service.fail_call = 1
    _run_every(job, 0.05, runs=3)
    out = unstamped(capsys.readouterr().out)
    assert [line for line in out if line.startswith("push ")] == [
        "push failed (exit code 1); next push in 0 s",
        "push done; next push in 0 s",
        "push done; next push in 0 s",
    ]
    assert service.applied == [PUSHED_TRANS], "the third run found nothing new to send"
    assert saved_state(state.path).high_water == dt.datetime.fromisoformat(LAST_MODIFIED)


# --- planning: what the state file lets through -------------------------------------------


@pytest.fixture(scope="module")
def export() -> SageExport:
    return read_export(*FILES)


def changed(export: SageExport, **edits: Any) -> SageExport:
    """The export with some postings replaced: `edits` maps "t<tran>" to field changes."""
    postings = []
    for posting in export.postings:
        change = edits.get(f"t{posting.tran_number}")
        postings.append(dataclasses.replace(posting, **change) if change else posting)
    return dataclasses.replace(export, postings=tuple(postings))


def acknowledged_all(export: SageExport) -> PushState:
    return PushState(
        high_water=dt.datetime.fromisoformat(HIGH_WATER),
        acknowledged={p.tran_number: content_hash(p) for p in export.postings},
    )


def sent(export: SageExport, state: PushState | None) -> list[int]:
    plan = plan_push(export, state, batch_size=500)
    return [t for batch in plan.batches for t in batch.tran_numbers]


def test_without_state_everything_is_sent(export: SageExport) -> None:
    assert sent(export, None) == CUSTOMER_TRANS


def test_every_changed_posting_is_sent_whatever_its_modify_date(export: SageExport) -> None:
    """Unchanged means the state file holds this very content, nothing else: a posting
    modified long before the mark is sent when it differs (the look-back narrows only what an
    ODBC read asks for)."""
    state = acknowledged_all(export)
    edited = changed(
        export,
        t13={"gross_amount": Decimal("99.00")},  # modified 20/03 16:45: inside 48 h
        t22={"gross_amount": Decimal("99.00")},  # modified 12/03: long before the mark
    )
    assert sent(edited, state) == [13, 22]


NOW = dt.datetime(2025, 4, 1, 12, 0)


def test_a_mark_in_the_future_hides_nothing(export: SageExport) -> None:
    """A state file whose mark is 2099 and that acknowledges nothing used to report every
    posting unchanged."""
    state = PushState(high_water=dt.datetime(2099, 1, 1), acknowledged={})
    plan = plan_push(export, state, batch_size=500, now=NOW)
    assert [t for batch in plan.batches for t in batch.tran_numbers] == CUSTOMER_TRANS
    assert plan.unchanged == 0
    assert plan.high_water == NOW
    assert plan.warnings == (
        "the state file's high-water mark 2099-01-01 00:00:00 is in the future (a clock set "
        "wrong?): taken as now, 2025-04-01 12:00:00; every posting is read and those the "
        "state file does not hold as they are now are sent",
    )


def test_a_modify_date_in_the_future_is_clamped_to_now(export: SageExport) -> None:
    ahead = {**export.revisions, 13: dt.datetime(2030, 6, 1), 22: dt.datetime(2029, 1, 1)}
    plan = plan_push(dataclasses.replace(export, revisions=ahead), None, batch_size=500, now=NOW)
    assert plan.high_water == NOW
    assert plan.warnings == (
        "2 postings modified in the future, the latest transaction 13 on 2030-06-01 00:00:00 "
        "(a clock set wrong in Sage?): the high-water mark is taken as now, 2025-04-01 12:00:00",
    )
    in_the_past = plan_push(export, None, batch_size=500, now=NOW)
    assert (in_the_past.high_water, in_the_past.warnings) == (
        dt.datetime.fromisoformat(LAST_MODIFIED),
        (),
    )


def test_a_changed_allocation_makes_the_posting_changed(export: SageExport) -> None:
    state = acknowledged_all(export)
    refund = next(p for p in export.postings if p.tran_number == 16)
    more = (*refund.allocations, Allocation(3, Decimal("1.00"), dt.date(2025, 3, 20)))
    assert sent(changed(export, t16={"allocations": more}), state) == [16]


def test_rows_without_a_modify_date_are_always_checked(export: SageExport) -> None:
    state = acknowledged_all(export)
    edited = changed(export, t22={"details": "corrected"})
    undated = dataclasses.replace(edited, revisions={**edited.revisions, 22: None})
    assert sent(undated, state) == [22]


def test_webhook_id_is_stable_for_the_same_content(export: SageExport) -> None:
    first = plan_push(export, None, batch_size=5)
    again = plan_push(read_export(*FILES), None, batch_size=5)
    assert [b.webhook_id for b in first.batches] == [b.webhook_id for b in again.batches]
    assert [b.body for b in first.batches] == [b.body for b in again.batches]
    assert len({b.webhook_id for b in first.batches}) == 6
    assert all(b.webhook_id.startswith("msg_") for b in first.batches)


def test_webhook_id_changes_with_the_content(export: SageExport) -> None:
    before = plan_push(export, None, batch_size=500)
    edited = changed(export, t1={"details": "Goods"})
    after = plan_push(edited, None, batch_size=500)
    assert before.batches[0].webhook_id != after.batches[0].webhook_id


def test_an_edit_reverted_in_sage_is_not_mistaken_for_a_replay(export: SageExport) -> None:
    original = plan_push(export, None, batch_size=500)
    later = dt.datetime(2025, 4, 1, 9, 0)
    reverted = dataclasses.replace(export, revisions={**export.revisions, 1: later})
    again = plan_push(reverted, None, batch_size=500)
    assert original.batches[0].body == again.batches[0].body
    assert original.batches[0].webhook_id != again.batches[0].webhook_id


def test_body_is_what_the_service_accepts(export: SageExport, tmp_path: Path) -> None:
    demo = generate_company(customers=20, seed=2)
    exports = [export, read_export(*write_export(demo.exports[-1], tmp_path))]
    for each in exports:
        for batch in plan_push(each, None, batch_size=50).batches:
            accepted = PostingBatch.model_validate_json(batch.body)
            assert [p.tran_number for p in accepted.postings] == list(batch.tran_numbers)


def test_state_file_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "nested" / "state.json")
    with store.open(dry_run=True) as opened:
        assert opened.state == PushState()
    state = PushState(dt.datetime(2025, 3, 20, 16, 45), {7: "abc", 3: "def"})
    store.save(state)
    assert saved_state(store.path) == state
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"], "no temp file left"
