"""The push command end to end against a stand-in server: batches, state, resume, dry run."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
import typer
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner, Result

from service.exporter.commands import register
from service.exporter.demo import generate_company, write_export
from service.exporter.push import content_hash, plan_push
from service.exporter.sage_csv import Allocation, SageExport, read_export
from service.exporter.state import PushState, StateFile
from service.ingest.schemas import PostingBatch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sage"
FILES = [
    str(FIXTURES / name) for name in ("AUDIT_HEADER.csv", "AUDIT_SPLIT.csv", "AUDIT_USAGE.csv")
]
CUSTOMER_TRANS = [*range(1, 15), 19, 20, 21]
SECRET = "whsec_" + base64.b64encode(b"exporter-test-secret-32-bytes!!!").decode()
BASE = "http://ledgerlink.test"
ENDPOINT = f"{BASE}/v1/webhooks/sage/postings"
MONEY = re.compile(r"^\d+\.\d{2}$")
POSTING_KEYS = {
    "tran_number",
    "type",
    "account_ref",
    "reference",
    "date",
    "details",
    "nominal_code",
    "net_amount",
    "tax_amount",
    "gross_amount",
    "deleted",
    "allocations",
}


class FakeServer:
    """Stands in for the service's webhook: verifies, remembers ids, can fail one call."""

    def __init__(self) -> None:
        self.applied: list[list[int]] = []
        self.ids: list[str] = []
        self.answers: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self.fail_call: int | None = None
        self.failure: str = "unreachable"
        self.reject_call: int | None = None
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        payload = Webhook(SECRET).verify(request.content, dict(request.headers))
        check_wire_format(payload)
        webhook_id = request.headers["webhook-id"]
        self.ids.append(webhook_id)
        if self.calls == self.fail_call and self.failure == "unreachable":
            raise httpx.ConnectError("connection refused", request=request)
        if self.calls == self.reject_call:
            return httpx.Response(422, json={"status": 422, "detail": "posting 9 is invalid"})
        if webhook_id in self.answers:
            body, answer = self.answers[webhook_id]
            assert body == request.content
            return httpx.Response(200, json=answer)
        trans = [posting["tran_number"] for posting in payload["postings"]]
        self.applied.append(trans)
        answer = {
            "event_id": f"evt_{len(self.answers)}",
            "postings_received": len(trans),
            "postings_applied": len(trans) - 1,
            "postings_unchanged": 1,
            "invoices_affected": 2,
        }
        self.answers[webhook_id] = (request.content, answer)
        if self.calls == self.fail_call and self.failure == "answer lost":
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(202, json=answer)


def check_wire_format(payload: dict[str, Any]) -> None:
    assert payload["source"] == "sage50-exporter"
    assert 1 <= len(payload["postings"]) <= 5000
    for posting in payload["postings"]:
        assert set(posting) - {"outstanding"} == POSTING_KEYS
        assert posting["type"] in {"SI", "SC", "SR", "SA", "SD", "SP"}
        assert isinstance(posting["tran_number"], int)
        assert posting["tran_number"] > 0
        assert 1 <= len(posting["account_ref"]) <= 32
        assert len(posting["reference"]) <= 30
        assert len(posting["details"]) <= 60
        assert len(posting["nominal_code"]) <= 8
        dt.date.fromisoformat(posting["date"])
        for name in ("net_amount", "tax_amount", "gross_amount"):
            assert MONEY.match(posting[name]), posting[name]
        if "outstanding" in posting:
            assert posting["type"] == "SI"
            Decimal(posting["outstanding"])
        assert isinstance(posting["deleted"], bool)
        for allocation in posting["allocations"]:
            assert set(allocation) == {"invoice_tran_number", "amount", "date"}
            assert MONEY.match(allocation["amount"])
            assert Decimal(allocation["amount"]) > 0


def push(*args: str, secret: str | None = SECRET) -> Result:
    app = typer.Typer()
    register(app)
    env = {"LEDGERLINK_EXPORTER_SECRET": secret} if secret else {}
    return CliRunner().invoke(app, ["push", "--url", BASE, *args, *FILES], env=env)


def run_against(server: FakeServer, *args: str) -> Result:
    with respx.mock(assert_all_called=False) as router:
        router.post(ENDPOINT).mock(side_effect=server)
        return push(*args)


@pytest.fixture(autouse=True)
def no_secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGERLINK_EXPORTER_SECRET", raising=False)


def test_pushes_every_customer_posting_once() -> None:
    server = FakeServer()
    result = run_against(server, "--batch-size", "5")
    assert result.exit_code == 0, result.output
    assert [t for batch in server.applied for t in batch] == CUSTOMER_TRANS
    assert [len(batch) for batch in server.applied] == [5, 5, 5, 2]
    assert "Sent: 17 postings in 4 batches (13 applied, 4 unchanged; 8 invoices affected)" in (
        result.stdout
    )
    assert "Skipped: 4 non-customer rows (BR 1, JD 1, PI 1, PP 1)" in result.stdout


def test_resume_after_an_interrupted_push(tmp_path: Path) -> None:
    state = tmp_path / "push-state.json"
    server = FakeServer()
    server.fail_call = 3
    first = run_against(server, "--batch-size", "4", "--state", str(state), "--max-attempts", "1")
    assert first.exit_code == 1
    assert server.applied == [[1, 2, 3, 4], [5, 6, 7, 8]]
    [line] = first.stderr.splitlines()
    assert line.startswith("error: batch 3 of 5: gave up after 1 attempts: cannot reach")
    saved = json.loads(state.read_text())
    assert sorted(map(int, saved["acknowledged"])) == [*range(1, 9)]
    assert saved["high_water"] is None, "an unfinished run must not move the window"
    interrupted_id = server.ids[2]

    server.fail_call = None
    second = run_against(server, "--batch-size", "4", "--state", str(state))
    assert second.exit_code == 0, second.output
    assert server.applied[2:] == [[9, 10, 11, 12], [13, 14, 19, 20], [21]]
    everything = [t for batch in server.applied for t in batch]
    assert sorted(everything) == CUSTOMER_TRANS
    assert len(everything) == len(set(everything))
    assert server.ids[3] == interrupted_id, "the resent batch keeps its webhook-id"
    assert "Skipped: 4 non-customer rows (BR 1, JD 1, PI 1, PP 1), 8 postings unchanged" in (
        second.stdout
    )
    assert json.loads(state.read_text())["high_water"] == "2025-03-20T16:45:00"

    calls = server.calls
    third = run_against(server, "--batch-size", "4", "--state", str(state))
    assert third.exit_code == 0
    assert server.calls == calls
    assert "Sent: 0 postings in 0 batches" in third.stdout
    assert "17 postings unchanged since the last push" in third.stdout


def test_a_batch_applied_but_unanswered_is_replayed_not_reapplied(tmp_path: Path) -> None:
    state = tmp_path / "push-state.json"
    server = FakeServer()
    server.fail_call, server.failure = 2, "answer lost"
    first = run_against(server, "--batch-size", "10", "--state", str(state), "--max-attempts", "1")
    assert first.exit_code == 1
    assert "did not answer in time" in first.stderr
    second = run_against(server, "--batch-size", "10", "--state", str(state))
    assert second.exit_code == 0, second.output
    assert server.applied == [CUSTOMER_TRANS[:10], CUSTOMER_TRANS[10:]]
    assert "Replayed: 1 batch (7 postings) the server already had" in second.stdout


def test_stops_on_422_with_the_servers_detail() -> None:
    server = FakeServer()
    server.reject_call = 2
    result = run_against(server, "--batch-size", "5")
    assert result.exit_code == 1
    assert server.applied == [CUSTOMER_TRANS[:5]]
    assert server.calls == 2, "a rejected batch is not retried and nothing after it is sent"
    assert result.stderr.splitlines() == [
        "error: batch 2 of 4: the server rejected the batch (HTTP 422): posting 9 is invalid"
    ]
    assert "Rejected: 5 postings; not sent: 7 postings" in result.stdout


def test_dry_run_sends_nothing() -> None:
    with respx.mock(assert_all_called=False) as router:
        route = router.post(ENDPOINT)
        result = push("--dry-run", "--batch-size", "5", secret=None)
    assert result.exit_code == 0, result.output
    assert not route.called
    out = result.stdout
    assert "would send 17 postings in 4 batches to http://ledgerlink.test/v1/webhooks/sage" in out
    assert "Postings by type: SA 1, SC 2, SD 1, SI 8, SP 1, SR 4" in out
    assert "First 3 postings:" in out
    assert '"tran_number": 3' in out


def test_dry_run_writes_no_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with respx.mock(assert_all_called=False):
        result = push("--dry-run", "--state", str(state), secret=None)
    assert result.exit_code == 0
    assert not state.exists()


def test_missing_secret_is_one_line_and_exit_2() -> None:
    result = push(secret=None)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: no webhook secret: pass --secret or set LEDGERLINK_EXPORTER_SECRET"
    ]


def test_wrong_number_of_files_is_exit_2() -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["push", "--url", BASE, "--dry-run", FILES[0]])
    assert result.exit_code == 2
    assert "expected HEADER.csv [SPLIT.csv] USAGE.csv, got 1 files" in result.stderr


@pytest.mark.parametrize("url", ["ledgerlink.test", "http://", "https://:8000"])
def test_a_bad_url_is_exit_2(url: str) -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["push", "--url", url, "--dry-run", *FILES])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: --url must be an http:// or https:// URL, got '{url}'"
    ]


def test_a_corrupt_state_file_is_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    result = push("--state", str(state))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {state}: not a ledgerlink exporter state file; move it away to start afresh"
    ]


# --- planning: what the state file lets through -------------------------------------------


@pytest.fixture(scope="module")
def export() -> SageExport:
    return read_export(*map(Path, FILES))


def changed(export: SageExport, **edits: Any) -> SageExport:
    """The export with some postings replaced: `edits` maps "t<tran>" to field changes."""
    postings = []
    for posting in export.postings:
        change = edits.get(f"t{posting.tran_number}")
        postings.append(dataclasses.replace(posting, **change) if change else posting)
    return dataclasses.replace(export, postings=tuple(postings))


def acknowledged_all(export: SageExport) -> PushState:
    return PushState(
        high_water=dt.datetime(2025, 3, 20, 16, 45),
        acknowledged={p.tran_number: content_hash(p) for p in export.postings},
    )


def sent(export: SageExport, state: PushState | None, hours: float = 48) -> list[int]:
    plan = plan_push(export, state, batch_size=500, lookback=dt.timedelta(hours=hours))
    return [t for batch in plan.batches for t in batch.tran_numbers]


def test_without_state_everything_is_sent(export: SageExport) -> None:
    assert sent(export, None) == CUSTOMER_TRANS


def test_only_changed_rows_inside_the_window_are_sent(export: SageExport) -> None:
    state = acknowledged_all(export)
    edited = changed(
        export,
        t11={"gross_amount": Decimal("99.00")},  # modified 20/03 16:45: inside
        t20={"gross_amount": Decimal("99.00")},  # modified 12/03: outside 48 h
    )
    assert sent(edited, state) == [11]
    assert sent(edited, state, hours=24 * 9) == [11, 20]


def test_a_changed_allocation_makes_the_posting_changed(export: SageExport) -> None:
    state = acknowledged_all(export)
    refund = next(p for p in export.postings if p.tran_number == 14)
    more = (*refund.allocations, Allocation(2, Decimal("1.00"), dt.date(2025, 3, 20)))
    assert sent(changed(export, t14={"allocations": more}), state) == [14]


def test_rows_without_a_modify_date_are_always_checked(export: SageExport) -> None:
    state = acknowledged_all(export)
    edited = changed(export, t20={"details": "corrected"})
    undated = dataclasses.replace(edited, revisions={**edited.revisions, 20: None})
    assert sent(undated, state) == [20]


def test_webhook_id_is_stable_for_the_same_content(export: SageExport) -> None:
    first = plan_push(export, None, batch_size=5, lookback=dt.timedelta(hours=48))
    again = plan_push(read_export(*map(Path, FILES)), None, batch_size=5, lookback=dt.timedelta(0))
    assert [b.webhook_id for b in first.batches] == [b.webhook_id for b in again.batches]
    assert [b.body for b in first.batches] == [b.body for b in again.batches]
    assert len({b.webhook_id for b in first.batches}) == 4
    assert all(b.webhook_id.startswith("msg_") for b in first.batches)


def test_webhook_id_changes_with_the_content(export: SageExport) -> None:
    before = plan_push(export, None, batch_size=500, lookback=dt.timedelta(0))
    edited = changed(export, t1={"details": "Goods"})
    after = plan_push(edited, None, batch_size=500, lookback=dt.timedelta(0))
    assert before.batches[0].webhook_id != after.batches[0].webhook_id


def test_an_edit_reverted_in_sage_is_not_mistaken_for_a_replay(export: SageExport) -> None:
    original = plan_push(export, None, batch_size=500, lookback=dt.timedelta(0))
    later = dt.datetime(2025, 4, 1, 9, 0)
    reverted = dataclasses.replace(export, revisions={**export.revisions, 1: later})
    again = plan_push(reverted, None, batch_size=500, lookback=dt.timedelta(0))
    assert original.batches[0].body == again.batches[0].body
    assert original.batches[0].webhook_id != again.batches[0].webhook_id


def test_body_is_the_wire_format(export: SageExport) -> None:
    plan = plan_push(export, None, batch_size=500, lookback=dt.timedelta(0))
    payload = orjson.loads(plan.batches[0].body)
    check_wire_format(payload)
    assert [p["tran_number"] for p in payload["postings"]] == CUSTOMER_TRANS


def test_body_is_what_the_service_accepts(export: SageExport, tmp_path: Path) -> None:
    demo = generate_company(customers=20, seed=2)
    exports = [export, read_export(*write_export(demo.exports[-1], tmp_path))]
    for each in exports:
        for batch in plan_push(each, None, batch_size=50, lookback=dt.timedelta(0)).batches:
            accepted = PostingBatch.model_validate_json(batch.body)
            assert [p.tran_number for p in accepted.postings] == list(batch.tran_numbers)


def test_state_file_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "nested" / "state.json")
    assert store.load() == PushState()
    state = PushState(dt.datetime(2025, 3, 20, 16, 45), {7: "abc", 3: "def"})
    store.save(state)
    assert store.load() == state
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"], "no temp file left"
