"""The console over plain HTTP: sessions, CSRF, scopes, and each page's content."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import cast
from urllib.parse import quote, urlencode

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service.console.session import COOKIE
from service.deps import runtime_of
from service.main import create_app
from service.reconcile import service as reconcile
from service.reconcile.tasks import reconcile_all_dirty
from service.settings import Settings
from tests.console.support import (
    CONSOLE_SECRET,
    ODD_ACCOUNT,
    ODD_NUMBERS,
    SignIn,
    csrf_from,
    odd_delivery,
)
from tests.support.keys import ADMIN_KEY, API_KEYS, READ_KEY, WRITE_KEY, auth
from tests.support.queries import statuses, table_checksums
from tests.support.settings import make_settings


async def test_pages_need_a_session(client: httpx.AsyncClient) -> None:
    response = await client.get("/console/invoices")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Finvoices"


async def test_sign_in_cookie_is_httponly_strict_and_holds_no_key(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/console/sign-in")
    answer = await client.post(
        "/console/sign-in", data={"csrf_token": csrf_from(page.text), "api_key": READ_KEY}
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert "Secure" not in cookie
    assert READ_KEY not in cookie
    assert READ_KEY not in answer.headers["location"]


async def test_cookie_is_secure_behind_tls(client: httpx.AsyncClient) -> None:
    page = await client.get("/console/sign-in", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in page.headers["set-cookie"]


async def test_unknown_key_is_refused(client: httpx.AsyncClient) -> None:
    page = await client.get("/console/sign-in")
    answer = await client.post(
        "/console/sign-in", data={"csrf_token": csrf_from(page.text), "api_key": "nope" * 5}
    )
    assert answer.status_code == 401
    assert "not one this service knows" in answer.text
    assert (await client.get("/console/")).status_code == 303


async def test_sign_in_without_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    await client.get("/console/sign-in")
    answer = await client.post("/console/sign-in", data={"api_key": READ_KEY})
    assert answer.status_code == 403
    assert (await client.get("/console/")).status_code == 303


async def test_sign_out_ends_the_session(sign_in: SignIn) -> None:
    c = await sign_in(READ_KEY)
    page = await c.get("/console/")
    assert page.status_code == 200
    out = await c.post("/console/sign-out", data={"csrf_token": csrf_from(page.text)})
    assert out.status_code == 303
    assert (await c.get("/console/")).status_code == 303


@pytest.mark.usefixtures("company")
async def test_overview_counts(sign_in: SignIn) -> None:
    c = await sign_in(READ_KEY)
    page = (await c.get("/console/")).text
    # sagelink mode: every write-off shows as Paid, so three are written off but not marked.
    assert '<span class="count">3</span> Written off in Sage, not marked' in page
    assert 'data-status="Paid">4<' in page
    assert 'data-status="Unpaid">1<' in page


@pytest.mark.usefixtures("company")
async def test_csrf_refused_without_token_and_nothing_changes(
    sign_in: SignIn, engine: AsyncEngine
) -> None:
    c = await sign_in(WRITE_KEY)
    before = await table_checksums(engine)
    answer = await c.post(
        "/console/update", data={"written_off": "true", "to_status": "Written Off"}
    )
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    forged = await c.post(
        "/console/update",
        data={"written_off": "true", "to_status": "Written Off", "csrf_token": "0" * 64},
    )
    assert forged.status_code == 403
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("company")
async def test_read_key_cannot_preview_or_apply(sign_in: SignIn, engine: AsyncEngine) -> None:
    c = await sign_in(READ_KEY)
    form = await c.get("/console/update?written_off=true&protected=false")
    assert "can look but not change" in form.text
    before = await table_checksums(engine)
    answer = await c.post(
        "/console/update",
        data={
            "csrf_token": csrf_from(form.text),
            "written_off": "true",
            "to_status": "Written Off",
        },
    )
    assert answer.status_code == 403
    assert "needs the &#39;write&#39; scope" in answer.text
    assert await table_checksums(engine) == before


@pytest.mark.usefixtures("company")
async def test_preview_then_apply(sign_in: SignIn, engine: AsyncEngine) -> None:
    c = await sign_in(WRITE_KEY)
    form = await c.get("/console/update?written_off=true&protected=false")
    assert "data-matching>3<" in form.text
    preview = await c.post(
        "/console/update",
        data={
            "csrf_token": csrf_from(form.text),
            "written_off": "true",
            "protected": "false",
            "to_status": "Written Off",
        },
    )
    assert preview.status_code == 303, preview.text[-1500:]
    job = await c.get(preview.headers["location"])
    assert 'data-count="updated">3<' in job.text
    assert (await statuses(engine, "INV-1001"))["INV-1001"] == "Paid"
    applied = await c.post(
        preview.headers["location"] + "/apply",
        data={
            "csrf_token": csrf_from(job.text),
            "reason": "written off in Sage",
            "idempotency_key": "k-1",
        },
    )
    assert applied.status_code == 303, applied.text
    result = await c.get(applied.headers["location"])
    assert "Global Update: succeeded" in result.text
    assert await statuses(engine, *("INV-1001", "INV-2001", "INV-3001", "INV-1002")) == {
        "INV-1001": "Written Off",
        "INV-2001": "Written Off",
        "INV-3001": "Written Off",
        "INV-1002": "Paid",
    }


@pytest.mark.usefixtures("company")
async def test_a_form_post_with_an_unknown_query_parameter_is_a_422_page(
    sign_in: SignIn, engine: AsyncEngine
) -> None:
    """The forms post to bare addresses; a query string there is tampering or a mistake, and
    a dry run a person asked for in it (`?dry_run=true`) must never become the real thing."""
    c = await sign_in(WRITE_KEY)
    form = await c.get("/console/update?written_off=true&protected=false")
    before = await table_checksums(engine)
    answer = await c.post(
        "/console/update?dry_run=false",
        data={"csrf_token": csrf_from(form.text), "written_off": "true", "to_status": "Paid"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "dry_run" in answer.text
    assert await table_checksums(engine) == before
    # A page's own query string (its filter) is read by the page itself: still served.
    page = await c.get("/console/invoices?written_off=true&utm_source=mail")
    assert page.status_code == 200


@pytest.mark.usefixtures("company")
async def test_apply_needs_a_reason(sign_in: SignIn) -> None:
    c = await sign_in(WRITE_KEY)
    form = await c.get("/console/update?written_off=true")
    preview = await c.post(
        "/console/update",
        data={"csrf_token": csrf_from(form.text), "written_off": "true", "to_status": "Paid"},
    )
    job = await c.get(preview.headers["location"])
    applied = await c.post(
        preview.headers["location"] + "/apply", data={"csrf_token": csrf_from(job.text)}
    )
    assert applied.status_code == 400
    assert "give a reason" in applied.text


@pytest.mark.usefixtures("company")
async def test_unknown_status_filter_is_a_422_page(sign_in: SignIn) -> None:
    c = await sign_in(READ_KEY)
    page = await c.get("/console/invoices?status=Writen%20Off")
    assert page.status_code == 422
    assert "&#39;Written Off&#39;" in page.text or "'Written Off'" in page.text
    assert page.headers["content-type"].startswith("text/html")


@pytest.mark.usefixtures("company")
async def test_invoice_page_shows_amounts_postings_and_history(sign_in: SignIn) -> None:
    c = await sign_in(READ_KEY)
    page = (await c.get("/console/invoices/INV-2001")).text
    for text in ("600.00", "500.00", "BADDBT", "written off", "paid", "sync"):
        assert text in page


@pytest.mark.usefixtures("company")
async def test_invoice_csv_is_the_page_shown(sign_in: SignIn) -> None:
    c = await sign_in(READ_KEY)
    page = (await c.get("/console/invoices?written_off=true&limit=25")).text
    shown = [n for n in ("INV-1001", "INV-2001", "INV-3001", "INV-1002") if f">{n}</a>" in page]
    answer = await c.get("/console/invoices.csv?written_off=true&limit=25")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["invoice_number"] for r in rows] == shown == ["INV-1001", "INV-2001", "INV-3001"]


@pytest.mark.usefixtures("company")
async def test_head_answers_pages_and_downloads_like_get_without_a_body(
    sign_in: SignIn, client: httpx.AsyncClient
) -> None:
    c = await sign_in(READ_KEY)
    for path in (
        "/console/",
        "/console/invoices?written_off=true",
        "/console/invoices.csv?written_off=true",
        "/console/bad-debts.csv?as_of=2026-11-29",
        "/console/static/console.css",
    ):
        get, head = await c.get(path), await c.head(path)
        assert (head.status_code, head.content) == (get.status_code, b""), path
        assert get.status_code == 200, path
        assert get.content, path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert int(head.headers["content-length"]) == len(get.content), path
    # Without a session: sent to sign in, as a GET is.
    get, head = await client.get("/console/invoices"), await client.head("/console/invoices")
    assert (head.status_code, head.headers["location"]) == (303, get.headers["location"])


@pytest.mark.usefixtures("company")
async def test_bad_debt_csv(sign_in: SignIn) -> None:
    c = await sign_in(READ_KEY)
    answer = await c.get("/console/bad-debts.csv?as_of=2026-11-29")
    rows = {r["invoice_number"]: r for r in csv.DictReader(io.StringIO(answer.text))}
    assert set(rows) == {"INV-1001", "INV-2001", "INV-3001"}
    assert rows["INV-2001"]["vat_relief"] == "83.33"
    assert rows["INV-2001"]["qualifies"] == "true"
    assert rows["INV-3001"]["qualifies"] == "false"
    assert rows["INV-1001"]["written_off_on"] == "2026-09-30"


@pytest.mark.usefixtures("company")
async def test_picklist_repair_needs_admin(sign_in: SignIn, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM picklist_values WHERE value = 'Paid/Written Off'")
    writer = await sign_in(WRITE_KEY)
    page = await writer.get("/console/picklist")
    assert "Repair needs a key with the admin scope" in page.text
    refused = await writer.post(
        "/console/picklist/repair", data={"csrf_token": csrf_from(page.text)}
    )
    assert refused.status_code == 403
    admin = await sign_in(ADMIN_KEY)
    page = await admin.get("/console/picklist")
    repaired = await admin.post(
        "/console/picklist/repair", data={"csrf_token": csrf_from(page.text)}
    )
    assert repaired.status_code == 303
    assert 'data-picklist="ok"' in (await admin.get(repaired.headers["location"])).text


def _forged_cookie(age_seconds: int, fingerprint: str) -> str:
    """A session cookie signed with the console secret, as if issued `age_seconds` ago."""
    serializer = URLSafeTimedSerializer(CONSOLE_SECRET, salt="ledgerlink-console-session")
    signer = cast(TimestampSigner, serializer.make_signer())
    issued = int(time.time()) - age_seconds
    signer.get_timestamp = lambda: issued  # type: ignore[method-assign]
    payload = serializer.dump_payload({"n": "nonce", "k": fingerprint})
    return signer.sign(payload).decode()


@asynccontextmanager
async def replica(database_url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process on the same database (a second replica, or this one restarted)."""
    values: dict[str, object] = {
        "write_off_mode": "sagelink",
        "console_session_secret": CONSOLE_SECRET,
    }
    values.update(overrides)
    other = create_app(make_settings(database_url, **values))
    async with LifespanManager(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def with_cookie(cookie: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={cookie}"}


async def test_a_signed_cookie_without_a_session_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The signature alone opens nothing: the session must be one the server started."""
    fingerprint = runtime_of(app).console_keys.fingerprint(READ_KEY)
    forged = _forged_cookie(60, fingerprint)
    assert (await client.get("/console/", headers=with_cookie(forged))).status_code == 303


async def test_session_expires_after_its_lifetime(sign_in: SignIn, engine: AsyncEngine) -> None:
    c = await sign_in(READ_KEY)
    assert (await c.get("/console/")).status_code == 200
    async with engine.begin() as conn:
        lifetime = await conn.scalar(
            sa.text("SELECT expires_at - created_at FROM console_sessions")
        )
        assert lifetime == timedelta(minutes=480)  # the default
        await conn.execute(sa.text("UPDATE console_sessions SET expires_at = now()"))
    assert (await c.get("/console/")).status_code == 303


async def test_a_stale_signature_is_refused_while_its_session_lives(
    app: FastAPI, client: httpx.AsyncClient, sign_in: SignIn
) -> None:
    """The cookie's signed time is checked too (a cookie older than the lifetime is refused)."""
    fingerprint = runtime_of(app).console_keys.fingerprint(READ_KEY)
    stale = _forged_cookie(8 * 3600 + 60, fingerprint)
    assert (await client.get("/console/", headers=with_cookie(stale))).status_code == 303


@pytest.mark.usefixtures("company")
async def test_a_cookie_saved_before_sign_out_opens_nothing_after(
    sign_in: SignIn, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Signing out ends the session on the server: a copy of the cookie taken before (another
    tab, a stolen cookie) neither opens a page nor runs an admin action with its CSRF token."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM picklist_values WHERE value = 'Paid/Written Off'")
    admin = await sign_in(ADMIN_KEY)
    page = await admin.get("/console/picklist")
    saved, token = admin.cookies[COOKIE], csrf_from(page.text)
    out = await admin.post("/console/sign-out", data={"csrf_token": token})
    assert out.status_code == 303
    assert (await client.get("/console/", headers=with_cookie(saved))).status_code == 303
    repair = await client.post(
        "/console/picklist/repair", data={"csrf_token": token}, headers=with_cookie(saved)
    )
    assert repair.status_code == 401
    assert "your session has ended" in repair.text
    async with engine.connect() as conn:
        missing = await conn.scalar(
            sa.text("SELECT count(*) FROM picklist_values WHERE value = 'Paid/Written Off'")
        )
    assert missing == 0


async def test_sessions_are_shared_by_replicas_and_outlive_a_restart(
    sign_in: SignIn, database_url: str
) -> None:
    c = await sign_in(READ_KEY)
    cookie = c.cookies[COOKIE]
    async with replica(database_url) as other:
        page = await other.get("/console/", headers=with_cookie(cookie))
        assert page.status_code == 200
        # Signed out on the other replica: this one refuses the cookie too.
        out = await other.post(
            "/console/sign-out",
            data={"csrf_token": csrf_from(page.text)},
            headers=with_cookie(cookie),
        )
        assert out.status_code == 303
    assert (await c.get("/console/")).status_code == 303


async def test_removing_a_key_ends_its_sessions(sign_in: SignIn, database_url: str) -> None:
    """On every request the session's key must still be configured: a session is never worth
    more than its key (put the key back and its unexpired sessions work again, as the key
    itself does)."""
    c = await sign_in(WRITE_KEY)
    reader = await sign_in(READ_KEY)
    assert (await c.get("/console/")).status_code == 200
    without_writer = {k: v for k, v in API_KEYS.items() if k != WRITE_KEY}
    async with replica(database_url, api_keys=json.dumps(without_writer)) as later:
        cookie, other = c.cookies[COOKIE], reader.cookies[COOKIE]
        assert (await later.get("/console/", headers=with_cookie(cookie))).status_code == 303
        assert (await later.get("/console/", headers=with_cookie(other))).status_code == 200


async def test_a_new_session_secret_ends_every_session(sign_in: SignIn, database_url: str) -> None:
    c = await sign_in(READ_KEY)
    cookie = c.cookies[COOKIE]
    async with replica(database_url, console_session_secret="another-secret-" + "9" * 32) as other:
        assert (await other.get("/console/", headers=with_cookie(cookie))).status_code == 303


async def test_the_session_table_holds_neither_the_key_nor_the_cookie(
    sign_in: SignIn, engine: AsyncEngine
) -> None:
    c = await sign_in(ADMIN_KEY)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM console_sessions"))).mappings().all()
    assert len(rows) == 1
    stored = json.dumps({k: str(v) for k, v in rows[0].items()})
    assert ADMIN_KEY not in stored
    session_id = URLSafeTimedSerializer(CONSOLE_SECRET, salt="ledgerlink-console-session").loads(
        c.cookies[COOKIE]
    )["n"]
    assert session_id not in stored


async def test_ended_sessions_are_deleted_at_a_later_sign_in(
    sign_in: SignIn, engine: AsyncEngine
) -> None:
    await sign_in(READ_KEY)
    await sign_in(READ_KEY)
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE console_sessions SET expires_at = now()"))
    await sign_in(READ_KEY)
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM console_sessions")) == 1


@pytest.mark.usefixtures("company")
@pytest.mark.parametrize(
    "path",
    [
        "/console/invoices?limit=x&cursor=%%%",
        "/console/invoices?updated_since=yesterday",
        "/console/invoices?derived_state=bogus",
        "/console/invoices/%00",
        "/console/invoices/" + "9" * 200,
        "/console/invoice",
        "/console/invoice?number=%00",
        "/console/invoice?number=..",
        "/console/jobs/not-a-uuid",
        "/console/jobs/00000000-0000-0000-0000-000000000000?results_cursor=zz",
        "/console/outbox?state=nope&after=" + "9" * 40,
        "/console/bad-debts?as_of=someday",
        "/console/bad-debts?cursor=%%%",
        "/console/update?" + "&".join(f"f{n}=1" for n in range(600)),
    ],
)
async def test_hostile_input_is_never_a_server_error(sign_in: SignIn, path: str) -> None:
    c = await sign_in(READ_KEY)
    answer = await c.get(path)
    assert 200 <= answer.status_code < 500, (answer.status_code, answer.text[-500:])
    assert answer.headers["content-type"].startswith("text/html")


@pytest.mark.usefixtures("company")
async def test_crm_drift_page_lists_what_the_report_lists(
    sign_in: SignIn, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A status a person set in the CRM that differs from ours (and is not protected) shows on
    the overview, linked to a page of exactly the crm_drift report's invoices."""
    c = await sign_in(READ_KEY)
    before = (await c.get("/console/crm-drift")).text
    assert "No status differs from what the CRM shows." in before
    async with engine.begin() as conn:
        # Our updates reached the CRM (no worker runs here); then a person changed one there.
        await conn.execute(sa.text("UPDATE outbox SET state = 'delivered'"))
        await conn.execute(
            sa.text(
                "INSERT INTO crm_invoices (invoice_number, crm_id, status) "
                "VALUES ('INV-1002', '77', 'Part Paid')"
            )
        )
    report = await client.get("/v1/reconciliation/report?kind=crm_drift", headers=auth(READ_KEY))
    assert [i["invoice_number"] for i in report.json()["items"]] == ["INV-1002"]
    overview = (await c.get("/console/")).text
    assert 'href="/console/crm-drift" data-figure="crm_drift"><span class="count">1</span>' in (
        overview
    )
    page = (await c.get("/console/crm-drift")).text
    assert ">INV-1002</a>" in page
    assert "<td>Part Paid</td>" in page


@pytest.mark.usefixtures("company")
async def test_a_refused_form_never_takes_a_database_connection(
    sign_in: SignIn, app: FastAPI
) -> None:
    """Scope and CSRF are checked, and the body read, before the request's transaction opens:
    a forged or slow form holds no pooled connection (and a database outage cannot turn the 403
    into a 503)."""
    c = await sign_in(ADMIN_KEY)
    checkouts: list[object] = []

    def checked_out(*_: object) -> None:
        checkouts.append(object())

    pool = runtime_of(app).engine.sync_engine.pool
    event.listen(pool, "checkout", checked_out)
    try:
        for path in (
            "/console/update",
            f"/console/jobs/{uuid.uuid4()}/apply",
            "/console/picklist/repair",
            "/console/outbox/1/retry",
            "/console/outbox/retry-dead",
        ):
            answer = await c.post(path, data={"csrf_token": "0" * 64, "reason": "x"})
            assert answer.status_code == 403, (path, answer.text)
            assert "CSRF" in answer.text
    finally:
        event.remove(pool, "checkout", checked_out)
    assert checkouts == []


@pytest.mark.usefixtures("company")
async def test_report_counts_agree_with_the_reports_and_stop_at_the_cap(
    engine: AsyncEngine, settings: Settings
) -> None:
    """The overview counts with `report_count`; it must list exactly what each report lists."""
    async with engine.begin() as conn:
        # Two invoices a person should look at: a status Sage does not bear out, a mismatch.
        await conn.execute(
            sa.text(
                "UPDATE invoices SET status = 'Sent' WHERE invoice_number = "
                "(SELECT min(invoice_number) FROM invoices WHERE status = 'Unpaid')"
            )
        )
        await conn.execute(
            sa.text(
                "UPDATE invoices SET mismatch = true WHERE invoice_number = "
                "(SELECT max(invoice_number) FROM invoices)"
            )
        )
    seen = 0
    async with engine.connect() as conn:
        for kind in ("divergent", "conflicts", "mismatches", "crm_drift"):
            rows, _ = await reconcile.report(conn, kind, settings, limit=1000, cursor=None)
            assert await reconcile.report_count(conn, kind, settings, cap=1000) == len(rows)
            assert await reconcile.report_count(conn, kind, settings, cap=1) == min(1, len(rows))
            seen += len(rows)
    assert seen > 0, "the company shows nothing in any report: the test would prove nothing"


LINK = re.compile(r'<a href="([^"]+)">([^<]*)</a>')


def links(page: str) -> dict[str, str]:
    """Each link's text and its target, as a browser reads them."""
    return {html.unescape(text): html.unescape(href) for href, text in LINK.findall(page)}


def invoice_heading(number: str) -> str:
    return f"<h1>Invoice {html.escape(number)}</h1>"


@pytest.fixture
async def odd_invoices(client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    body, headers = odd_delivery()
    answer = await client.post("/v1/webhooks/sage/postings", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    await reconcile_all_dirty(engine, settings)


@pytest.mark.usefixtures("odd_invoices")
async def test_links_built_from_invoice_numbers_reach_that_invoice(sign_in: SignIn) -> None:
    """A number is one path segment: `..`, `.`, `/`, `?`, `#` and `%` in it cannot send its link
    to another page (httpx, like a browser, resolves `..` before sending)."""
    c = await sign_in(WRITE_KEY)
    listed = await c.get("/console/invoices?" + urlencode({"account_ref": ODD_ACCOUNT}))
    outbox = await c.get("/console/outbox?state=pending")
    form = await c.get("/console/update?" + urlencode({"account_ref": ODD_ACCOUNT}))
    preview = await c.post(
        "/console/update",
        data={"csrf_token": csrf_from(form.text), "account_ref": ODD_ACCOUNT, "to_status": "Paid"},
    )
    job = await c.get(preview.headers["location"])
    for page in (listed, outbox, job):
        found = links(page.text)
        for number in ODD_NUMBERS:
            answer = await c.get(found[number])
            assert answer.status_code == 200, (number, found[number], answer.status_code)
            assert invoice_heading(number) in answer.text, (number, found[number])
    invoice = await c.get(links(listed.text)[".."])
    account = await c.get(links(invoice.text)[ODD_ACCOUNT])
    assert sorted(n for n in links(account.text) if n in ODD_NUMBERS) == sorted(ODD_NUMBERS)


@pytest.mark.usefixtures("odd_invoices")
async def test_sign_in_returns_to_the_invoice_asked_for(
    sign_in: SignIn, client: httpx.AsyncClient
) -> None:
    """The page asked for before signing in is the one shown after, whatever its number."""
    listed = await (await sign_in(READ_KEY)).get(
        "/console/invoices?" + urlencode({"account_ref": ODD_ACCOUNT})
    )
    found = links(listed.text)
    for number in ODD_NUMBERS:
        client.cookies.clear()
        asked = await client.get(found[number])
        assert asked.status_code == 303
        page = await client.get(asked.headers["location"])
        answer = await client.post(
            "/console/sign-in",
            data={
                "csrf_token": csrf_from(page.text),
                "api_key": READ_KEY,
                "next": re.findall(r'name="next" value="([^"]*)"', page.text)[0],
            },
        )
        assert answer.status_code == 303
        shown = await client.get(html.unescape(answer.headers["location"]))
        assert invoice_heading(number) in shown.text, (number, answer.headers["location"])


@pytest.mark.usefixtures("odd_invoices")
async def test_api_reads_an_invoice_whose_number_is_a_dot_segment(
    client: httpx.AsyncClient,
) -> None:
    """GET /v1/invoices/{number}: the number percent-encoded as one segment, dots as %2E."""
    for number in ODD_NUMBERS:
        segment = quote(number, safe="").replace(".", "%2E")
        answer = await client.get(f"/v1/invoices/{segment}", headers=auth(READ_KEY))
        assert answer.status_code == 200, (number, answer.text)
        assert answer.json()["invoice_number"] == number


async def test_a_page_and_its_session_check_share_one_connection(
    sign_in: SignIn, app: FastAPI
) -> None:
    """The session's row is read in the page's own transaction: one pooled connection each."""
    c = await sign_in(ADMIN_KEY)
    page = await c.get("/console/picklist")
    checkouts: list[object] = []

    def checked_out(*_: object) -> None:
        checkouts.append(object())

    pool = runtime_of(app).engine.sync_engine.pool
    event.listen(pool, "checkout", checked_out)
    try:
        assert (await c.get("/console/invoices")).status_code == 200
        assert len(checkouts) == 1
        repaired = await c.post(
            "/console/picklist/repair", data={"csrf_token": csrf_from(page.text)}
        )
        assert repaired.status_code == 303
        assert len(checkouts) == 2
    finally:
        event.remove(pool, "checkout", checked_out)
