"""One rule for text (ledgerlink_exporter.text): the service refuses exactly the characters the
exporter cleans, on every code point, and text Sage holds with them reaches the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from ledgerlink_exporter.client import Signer, WebhookClient
from ledgerlink_exporter.csv_source import read_export
from ledgerlink_exporter.push import plan_push, run_push
from ledgerlink_exporter.text import REFUSED, clean
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.ingest.schemas import AccountRef, Details, NominalCode, Reference
from tests.exporter.sage_files import Rows, altered
from tests.support.webhooks import TEST_SECRET

# Sage text as found in real companies: pasted from an email or a web page, typed with Enter.
DIRTY = "Goods\u2028and\u0085services\x00\tfrom\r\nemail\u2029\x7f\x9f"


@pytest.mark.parametrize("field", [AccountRef, Reference, Details, NominalCode])
def test_the_service_refuses_exactly_what_the_exporter_cleans(field: Any) -> None:
    service: TypeAdapter[str] = TypeAdapter(field)

    def refused_by_service(character: str) -> bool:
        try:
            service.validate_python(character)
        except ValidationError:
            return True
        return False

    disagree = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if refused_by_service(chr(code)) != bool(REFUSED.fullmatch(chr(code)))
    ]
    assert disagree == []


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        (DIRTY, "Goods and services  from  email"),
        ("line\u2028separator", "line separator"),
        ("next\u0085line", "next line"),
        ("\x00nul\x00", "nul"),
        ("tab\there", "tab here"),
        ("\ud800lone surrogate", "lone surrogate"),
        ("caf\u00e9 \u20ac12 \u00a0kept", "caf\u00e9 \u20ac12 \u00a0kept"),
    ],
)
def test_clean(text: str, cleaned: str) -> None:
    assert clean(text) == cleaned


async def test_text_the_service_would_refuse_is_cleaned_and_every_posting_arrives(
    tmp_path: Path, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A DETAILS with U+2028 or U+0085 used to stop every run at batch 1 (422), so the postings
    behind it never arrived."""

    def dirty(table: str, rows: Rows) -> None:
        if table == "AUDIT_HEADER":
            rows[0]["DETAILS"] = DIRTY
            rows[1]["INV_REF"] = "10002\u2028"
        if table == "AUDIT_SPLIT":
            rows[0]["NOMINAL_CODE"] = "4000\u0085"

    export = read_export(*altered(tmp_path, dirty), history=True)
    plan = plan_push(export, None, batch_size=5)
    sender = WebhookClient(client, str(client.base_url), Signer.from_secret(TEST_SECRET))
    report = await run_push(plan, sender.deliver)
    assert report.error is None
    assert report.postings_applied == 33
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT details, reference, nominal_code FROM postings WHERE tran_number = 1")
        )
        assert rows.one() == ("Goods and services  from  email", "10001", "4000")
        second = await conn.execute(sa.text("SELECT reference FROM postings WHERE tran_number = 3"))
        assert second.scalar_one() == "10002"
