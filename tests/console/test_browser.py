"""The console in a real browser (Debian's chromium driven by Playwright) against a real
`ledgerlink serve` with its worker, on the test database, in SageLink mode: every write-off
shows as Paid until finance staff mark it, which is what the console is for.

The tests follow one another like a person's session (find, preview, apply, then repair and
retry); each signs in afresh. With LEDGERLINK_CONSOLE_SCREENSHOTS=1 (`make
console-screenshots`) the screenshots replace those in docs/console/ that the finance guide
shows; otherwise they go to a temporary directory.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from playwright.async_api import (
    Browser,
    Dialog,
    Download,
    Page,
    ViewportSize,
    async_playwright,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import create_engine
from tests.console.support import (
    CONSOLE_SECRET,
    ODD_ACCOUNT,
    ODD_NUMBERS,
    WRITTEN_OFF,
    company_delivery,
    odd_delivery,
)
from tests.support.database import reset_database
from tests.support.keys import ADMIN_KEY, API_KEYS, READ_KEY, WRITE_KEY, auth
from tests.support.processes import LedgerlinkProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="browser tests need the Debian package 'chromium' (apt-get install chromium); "
    ".ci/run installs it",
)


@pytest.fixture(scope="module")
async def engine_b(database_url: str) -> AsyncIterator[AsyncEngine]:
    # Not the shared `engine` fixture: that one empties the database before every test, and
    # these tests continue one session.
    engine = create_engine(database_url, pool_size=2)
    await reset_database(engine)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def server(database_url: str, engine_b: AsyncEngine) -> AsyncIterator[str]:
    process = LedgerlinkProcess(
        database_url,
        api_keys=json.dumps(API_KEYS),
        write_off_mode="sagelink",
        console_session_secret=CONSOLE_SECRET,
        crm_retry_base_seconds="0.1",
    )
    await asyncio.to_thread(process.start)
    try:
        async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as api:
            body, headers = company_delivery()
            answer = await api.post("/v1/webhooks/sage/postings", content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            await _until(lambda: _settled(api), "the company to be reconciled and sent")
        yield process.base_url
    finally:
        await asyncio.to_thread(process.stop)


async def _settled(api: httpx.AsyncClient) -> bool:
    invoices = await _all(api, "")
    pending = (await api.get("/v1/crm/outbox?state=pending", headers=auth(READ_KEY))).json()
    return len(invoices) == 5 and all(i["derived_state"] for i in invoices) and not pending["items"]


async def _until(check: Any, what: str, seconds: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _all(api: httpx.AsyncClient, query: str) -> list[dict[str, Any]]:
    """Every invoice the API lists for `query`, page by page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: list[tuple[str, str | int | float | bool | None]] = list(parse_qsl(query))
        if cursor:
            params.append(("cursor", cursor))
        page = await api.get("/v1/invoices", params=params, headers=auth(READ_KEY))
        assert page.status_code == 200, page.text
        items.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    if os.environ.get("LEDGERLINK_CONSOLE_SCREENSHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        yield DOCS_SHOTS
        return
    with tempfile.TemporaryDirectory(prefix="console-shots-") as tmp:
        yield Path(tmp)


@pytest.fixture
async def new_page(browser: Browser, server: str) -> AsyncIterator[Any]:
    contexts = []

    async def open_page() -> Page:
        context = await browser.new_context(viewport=LAPTOP, base_url=server)
        contexts.append(context)
        return await context.new_page()

    yield open_page
    for context in contexts:
        await context.close()


async def sign_in(page: Page, key: str, start: str = "/console/") -> None:
    await page.goto(start)
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(lambda url: "/console/sign-in" not in url)
    assert page.url.endswith(start), page.url


async def screenshot(page: Page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    await page.screenshot(path=path)
    assert path.stat().st_size > 1000


async def _read(download: Download) -> str:
    return await asyncio.to_thread(Path(await download.path()).read_text)


def accept_confirmation(page: Page) -> list[str]:
    """Accept the next confirmation dialog; the list receives its message."""
    messages: list[str] = []

    async def accept(dialog: Dialog) -> None:
        messages.append(dialog.message)
        await dialog.accept()

    page.once("dialog", accept)
    return messages


async def rows(page: Page, table: str) -> list[list[str]]:
    cells: list[list[str]] = await page.eval_on_selector_all(
        f"{table} tbody tr",
        "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))",
    )
    return cells


# --- the tests -------------------------------------------------------------------------------


async def test_sign_in_keeps_the_key_out_of_urls_and_storage(new_page: Any, shots: Path) -> None:
    page = await new_page()
    await page.goto("/console/")
    assert "/console/sign-in" in page.url
    await screenshot(page, shots, "sign-in")
    await sign_in(page, READ_KEY)
    await page.get_by_role("heading", name="Overview").wait_for()
    cookies = await page.context.cookies()
    [session] = [c for c in cookies if c["name"] == "ledgerlink_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert READ_KEY not in session["value"]
    assert READ_KEY not in page.url
    stored = await page.evaluate("() => JSON.stringify([localStorage, sessionStorage])")
    assert READ_KEY not in stored
    assert await page.evaluate("() => document.cookie") == ""  # HttpOnly: no script sees it


async def test_overview_numbers_match_the_api(new_page: Any, server: str, shots: Path) -> None:
    page = await new_page()
    await sign_in(page, READ_KEY)
    await screenshot(page, shots, "overview")
    figures = await page.eval_on_selector_all(
        "[data-figure]",
        "els => els.map(e => [e.dataset.figure, e.getAttribute('href'),"
        " e.querySelector('.count').innerText])",
    )
    by_status = await page.eval_on_selector_all(
        "[data-status]", "els => els.map(e => [e.dataset.status, e.innerText])"
    )
    async with httpx.AsyncClient(base_url=server) as api:
        for key, href, count in figures:
            if href.startswith("/console/invoices?"):
                expected = len(await _all(api, urlsplit(href).query))
            elif href == "/console/crm-drift":
                drift = await api.get(
                    "/v1/reconciliation/report?kind=crm_drift&limit=500", headers=auth(READ_KEY)
                )
                expected = len(drift.json()["items"])
            else:
                state = dict(parse_qsl(urlsplit(href).query))["state"]
                outbox = await api.get(f"/v1/crm/outbox?state={state}", headers=auth(READ_KEY))
                expected = len(outbox.json()["items"])
            assert int(count) == expected, key
        for status, count in by_status:
            assert int(count) == len(await _all(api, f"status={status}")), status
    assert dict(f[::2] for f in figures)["unmarked_write_offs"] == "3"


async def test_filter_to_write_offs_not_marked(new_page: Any, shots: Path) -> None:
    page = await new_page()
    await sign_in(page, READ_KEY, "/console/invoices")
    await page.get_by_label("Written off > 0").select_option("true")
    await page.get_by_label("Protected").select_option("false")
    await page.get_by_role("button", name="Apply filter").click()
    await page.wait_for_url("**written_off=true**")
    shown = await rows(page, "#invoices")
    assert [r[0] for r in shown] == WRITTEN_OFF
    assert {r[3] for r in shown} == {"Paid"}  # SageLink's label: the write-off is hidden
    await screenshot(page, shots, "invoices")

    await page.get_by_role("link", name="INV-2001").click()
    await page.get_by_role("heading", name="Invoice INV-2001").wait_for()
    amounts = dict((r[0], r[1]) for r in await rows(page, "table.amounts"))
    assert amounts == {
        "Gross": "600.00",
        "Paid": "100.00",
        "Discounted": "0.00",
        "Written off": "500.00",
        "Credited": "0.00",
        "Outstanding": "0.00",
    }
    await screenshot(page, shots, "invoice")


async def test_csv_is_what_the_page_shows(new_page: Any) -> None:
    page = await new_page()
    await sign_in(page, READ_KEY, "/console/invoices?written_off=true&limit=25")
    shown = await rows(page, "#invoices")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download this page as CSV").click()
    download = await info.value
    text = await _read(download)
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["invoice_number"], r["status"], r["written_off"]) for r in table] == [
        (r[0], r[3], r[6]) for r in shown
    ]
    assert len(table) == 3


async def test_read_key_cannot_apply(new_page: Any) -> None:
    page = await new_page()
    await sign_in(page, READ_KEY, "/console/update?written_off=true&protected=false")
    preview = page.get_by_role("button", name="Preview (dry run)")
    assert await preview.is_disabled()
    # The server decides, not the disabled button.
    await page.evaluate("() => document.querySelector('button[disabled]').disabled = false")
    await page.get_by_label("New status").select_option("Written Off")
    await preview.click()
    await page.get_by_role("heading", name="Forbidden").wait_for()
    assert "'write' scope" in await page.inner_text("main")


async def test_csrf_refused_without_a_token(new_page: Any, server: str) -> None:
    page = await new_page()
    await sign_in(page, WRITE_KEY, "/console/update?written_off=true&protected=false")
    await page.evaluate("() => document.querySelector('main input[name=csrf_token]').remove()")
    await page.get_by_label("New status").select_option("Written Off")
    await page.get_by_role("button", name="Preview (dry run)").click()
    await page.get_by_role("heading", name="Forbidden").wait_for()
    assert "CSRF" in await page.inner_text("main")
    async with httpx.AsyncClient(base_url=server) as api:
        jobs = await api.get(
            "/v1/invoices?written_off=true&protected=false", headers=auth(READ_KEY)
        )
    assert len(jobs.json()["items"]) == 3  # nothing was changed


async def test_dry_run_apply_and_job_results(new_page: Any, server: str, shots: Path) -> None:
    page = await new_page()
    await sign_in(page, WRITE_KEY, "/console/invoices?written_off=true&protected=false")
    await page.get_by_role("link", name="Global Update these invoices…").click()
    await page.get_by_role("heading", name="Global Update").wait_for()
    assert await page.inner_text("[data-matching]") == "3"
    await page.get_by_label("New status").select_option("Written Off")
    await screenshot(page, shots, "update")
    await page.get_by_role("button", name="Preview (dry run)").click()
    await page.get_by_role("heading", name="Dry run: succeeded").wait_for()
    results = await rows(page, "#results")
    assert results == [[n, "Paid", "Written Off", "updated"] for n in WRITTEN_OFF]
    await screenshot(page, shots, "dry-run")
    async with httpx.AsyncClient(base_url=server) as api:
        assert len(await _all(api, "status=Written Off")) == 0  # a dry run changes nothing

        await page.get_by_label("Reason").fill("Written off in Sage (bad debt)")
        confirmed = accept_confirmation(page)
        await page.get_by_role("button", name="Apply").click()
        await page.get_by_role("heading", name="Global Update: succeeded").wait_for()
        assert "set Written Off on the invoices" in confirmed[0]
        assert await page.inner_text("[data-count=updated]") == "3"
        assert [r[3] for r in await rows(page, "#results")] == ["updated"] * 3
        await screenshot(page, shots, "job")

        marked = await _all(api, "status=Written Off")
        assert [i["invoice_number"] for i in marked] == WRITTEN_OFF
        detail = (await api.get("/v1/invoices/INV-1001", headers=auth(READ_KEY))).json()
        last = detail["history"][-1]
        assert (last["source"], last["actor"], last["reason"]) == (
            "bulk",
            "writer",
            "Written off in Sage (bad debt)",
        )
    await page.goto("/console/")
    figures = await page.eval_on_selector_all(
        "[data-figure]",
        "els => els.map(e => [e.dataset.figure, e.querySelector('.count').innerText])",
    )
    assert dict(figures)["unmarked_write_offs"] == "0"


async def test_picklist_repair(
    new_page: Any, engine_b: AsyncEngine, server: str, shots: Path
) -> None:
    async with engine_b.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM picklist_values WHERE value = 'Paid/Written Off'")
    page = await new_page()
    await sign_in(page, ADMIN_KEY, "/console/picklist")
    assert "Paid/Written Off" in await page.inner_text("[data-picklist=missing]")
    await screenshot(page, shots, "picklist")
    confirmed = accept_confirmation(page)
    await page.get_by_role("button", name="Repair: add the missing values").click()
    await page.locator("[data-picklist=ok]").wait_for()
    assert "Paid/Written Off" in confirmed[0]
    assert "Repair added: Paid/Written Off" in await page.inner_text("main")
    async with httpx.AsyncClient(base_url=server) as api:
        check = await api.get("/v1/picklists/invoice-status/verification", headers=auth(READ_KEY))
    assert check.json()["ok"] is True


async def test_dead_letter_retry(
    new_page: Any, engine_b: AsyncEngine, server: str, shots: Path
) -> None:
    async with engine_b.begin() as conn:
        # Two deliveries the CRM refused until the dispatcher gave up.
        dead = await conn.exec_driver_sql(
            "UPDATE outbox SET state = 'dead', attempts = 20, "
            "last_error = 'OpenCRM answered 500: Internal Server Error' "
            "WHERE id IN (SELECT id FROM outbox ORDER BY id DESC LIMIT 2) RETURNING id"
        )
        first, second = sorted(row[0] for row in dead)
    page = await new_page()
    await sign_in(page, ADMIN_KEY, "/console/outbox?state=dead")
    assert [int(r[0]) for r in await rows(page, "#outbox")] == [first, second]
    assert "OpenCRM answered 500" in await page.inner_text("#outbox")
    await screenshot(page, shots, "outbox")

    await page.get_by_role("button", name=f"Retry message {first}").click()
    await page.get_by_text(f"Sent again: {first}.").wait_for()
    assert [int(r[0]) for r in await rows(page, "#outbox")] == [second]
    confirmed = accept_confirmation(page)
    await page.get_by_role("button", name="Retry all dead letters").click()
    await page.get_by_text("Sent again: 1.").wait_for()
    assert confirmed == ["Send every dead letter again?"]

    async with httpx.AsyncClient(base_url=server) as api:

        async def delivered() -> bool:
            listed = await api.get(
                "/v1/crm/outbox?state=delivered&limit=1000", headers=auth(READ_KEY)
            )
            ids = {m["id"] for m in listed.json()["items"]}
            return {first, second} <= ids

        await _until(delivered, "the retried messages to be delivered by the worker")


async def test_bad_debts_and_their_csv(new_page: Any, shots: Path) -> None:
    page = await new_page()
    await sign_in(page, READ_KEY, "/console/bad-debts?as_of=2026-11-29")
    listed = {r[0]: r for r in await rows(page, "#bad-debts")}
    assert set(listed) == set(WRITTEN_OFF)
    assert listed["INV-2001"][10:] == ["yes", "83.33"]
    assert listed["INV-3001"][10] == "not yet"
    assert await page.inner_text("[data-total=vat_relief]") == "103.33"
    await screenshot(page, shots, "bad-debts")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download CSV for the VAT return").click()
    download = await info.value
    assert download.suggested_filename == "bad-debts-2026-11-29.csv"
    table = {r["invoice_number"]: r for r in csv.DictReader(io.StringIO(await _read(download)))}
    assert table["INV-1001"]["vat"] == "20.00"
    assert table["INV-1001"]["written_off"] == "120.00"
    assert table["INV-1001"]["written_off_on"] == "2026-09-30"
    assert table["INV-1001"]["qualifies"] == "true"
    assert table["INV-3001"]["qualifies"] == "false"
    assert table["INV-2001"]["vat_relief"] == "83.33"


async def test_a_cookie_kept_from_before_sign_out_opens_nothing(
    browser: Browser, new_page: Any, server: str
) -> None:
    page = await new_page()
    await sign_in(page, ADMIN_KEY, "/console/picklist")
    kept = await page.context.cookies()
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in").wait_for()
    # Another browser given the cookie as it was (a copied cookie, a tab restored from disk).
    context = await browser.new_context(viewport=LAPTOP, base_url=server)
    try:
        await context.add_cookies(kept)
        other = await context.new_page()
        await other.goto("/console/picklist")
        await other.get_by_role("heading", name="Sign in").wait_for()
        assert "/console/sign-in" in other.url
    finally:
        await context.close()


async def test_links_reach_invoices_whatever_their_number(new_page: Any, server: str) -> None:
    """Last: it adds invoices. A browser resolves `..` and `.` segments, %2E%2E and %2E too, so
    a link pasting (or merely percent-encoding) such a number would open another page."""
    query = urlencode({"account_ref": ODD_ACCOUNT})
    async with httpx.AsyncClient(base_url=server) as api:
        body, headers = odd_delivery()
        answer = await api.post("/v1/webhooks/sage/postings", content=body, headers=headers)
        assert answer.status_code == 202, answer.text

        async def reconciled() -> bool:
            listed = await _all(api, query)
            return len(listed) == len(ODD_NUMBERS) and all(i["derived_state"] for i in listed)

        await _until(reconciled, "the odd invoices to be reconciled")
    page = await new_page()
    await sign_in(page, READ_KEY, f"/console/invoices?{query}")
    for number in ODD_NUMBERS:
        await page.get_by_role("link", name=number, exact=True).click()
        await page.get_by_role("heading", name=f"Invoice {number}", exact=True).wait_for(
            timeout=5000
        )
        await page.go_back()
