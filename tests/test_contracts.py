"""The contracts between features have one owner, service/contracts.py: no other module names a
NOTIFY channel, and the outbox payload is the same whoever wrote the change."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import contracts
from service.settings import Settings
from tests.support.factories import load, reconcile, si
from tests.support.keys import WRITE_KEY, auth

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "service" / "contracts.py"
# A channel name as a whole word: the metric ledgerlink_outbox_pending is not a channel.
CHANNEL_NAME = re.compile(r"\b(" + "|".join(map(re.escape, contracts.CHANNELS)) + r")\b")


def channel_literals(source: str, where: str) -> list[str]:
    """`where:line: text` of each string literal in `source` that names a NOTIFY channel."""
    return [
        f"{where}:{node.lineno}: {node.value!r}"
        for node in ast.walk(ast.parse(source, filename=where))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and CHANNEL_NAME.search(node.value)
    ]


def test_the_check_finds_a_channel_literal() -> None:
    # The check below is only worth something if it can fail.
    source = (
        f"NOTIFY = \"SELECT pg_notify('{contracts.DIRTY_CHANNEL}', '')\"\n"
        f'METRIC = "{contracts.OUTBOX_CHANNEL}_pending"\n'
    )
    found = channel_literals(source, "sample.py")
    assert len(found) == 1
    assert found[0].startswith("sample.py:1:")


def test_no_module_but_contracts_names_a_notify_channel() -> None:
    files = [
        path
        for folder in ("service", "tests", "bench", "exporter", "migrations")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != OWNER and ".venv" not in path.parts
    ]
    assert len(files) > 100
    found = [
        hit
        for path in files
        for hit in channel_literals(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == [], "import the channel from service.contracts instead:\n" + "\n".join(found)


async def test_every_source_writes_the_same_outbox_payload(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    await load(engine, settings, si(1, "INV-1", "120.00"), si(2, "INV-2", "80.00"))
    await reconcile(engine, settings)  # sync: the first reconcile tells the CRM the balance
    edited = await client.patch(
        "/v1/invoices/INV-1",
        json={"status": "Paid", "reason": "paid by card"},
        headers=auth(WRITE_KEY),
    )
    assert edited.status_code == 200, edited.text
    bulk = await client.post(
        "/v1/invoices/bulk-status",
        json={"status": "Written Off", "invoice_numbers": ["INV-2"], "reason": "gone"},
        headers=auth(WRITE_KEY),
    )
    assert bulk.status_code == 200, bulk.text
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT o.source, o.invoice_number, o.payload, h.id AS history_id "
                    "FROM outbox AS o LEFT JOIN status_history AS h "
                    "ON h.id = CAST(o.payload ->> 'history_id' AS bigint) ORDER BY o.id"
                )
            )
        ).all()
    assert sorted({row.source for row in rows}) == ["bulk", "manual", "sync"]
    for row in rows:
        assert set(row.payload) == {"status", "outstanding", "history_id", "source"}, row
        assert row.payload["source"] == row.source
        assert isinstance(row.payload["outstanding"], str)
        assert re.fullmatch(r"-?\d+\.\d\d", row.payload["outstanding"]), row
        if row.source != "sync":  # a sync that changed only the balance has no history row
            assert row.history_id is not None
            assert row.payload["history_id"] == row.history_id
    manual = next(row for row in rows if row.source == "manual")
    assert manual.payload == {
        "status": "Paid",
        "outstanding": "120.00",
        "history_id": manual.history_id,
        "source": "manual",
    }
