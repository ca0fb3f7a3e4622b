"""The OpenCRM REST API over httpx: find, read and edit invoices, errors mapped to exceptions.

What is known about the API (docs/CRM.md, "What is confirmed"): form-encoded POSTs to
`{base}/api/rest/{method}`, credentials as the form fields `key` and `passkey`, errors as
`{"error": "..."}` (even with HTTP 200; "Unauthorized" for bad credentials); lists paged with
`limit_start` / `limit_end` (an end index: records 50-99 are `limit_start=50, limit_end=100`)
and filtered with `query_string=FIELD|OP|VALUE`. Source: the public client
Jacobomara901/opencrm_api (`src/opencrm/resources/base.py` pages with
`limit_end=offset + batch_size`; `src/opencrm/client.py` raises on `{"error": "Unauthorized"}`
with HTTP 200; commit a11ca65 "OpenCRM's WAF blocks user-agents containing 'python'"). The
shape of a successful answer is not documented, so it is parsed defensively (`records_in`).

Every call has one deadline for all of it (connecting, sending, the whole answer) and a cap on
the answer's size, counted as it streams in: a CRM trickling a byte a second, or sending a
300 MB page, fails the call instead of holding the worker (and its memory) for as long as it
likes. A list that does not end (the same page again, or more pages than a lookup or a scan
may read) fails too.

Credentials never appear in an exception, a log line or a metric label.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr

from service import __version__
from service.crm.errors import (
    CrmAnswerTooLarge,
    CrmAuthError,
    CrmBlocked,
    CrmInvoiceNotFound,
    CrmPagingBroken,
    CrmRejected,
    CrmUnavailable,
)
from service.crm.opencrm.settings import OpenCrmSettings
from service.logging import get_logger
from service.metrics import CRM_LATENCY

log = get_logger(__name__)

# Sent unless LEDGERLINK_OPENCRM_USER_AGENT says otherwise: OpenCRM's firewall blocks httpx's own.
USER_AGENT = f"ledgerlink/{__version__}"

# Keys under which a list of records may come back; the first one present wins.
_LIST_KEYS = ("results", "result", "records", "data", "invoices", "items", "rows", "list")
# Names the record id may carry in a record (OpenCRM calls it `crmid` in requests).
ID_KEYS = ("crmid", "invoiceid", "invoice_id", "id", "recordid", "record_id")
# What the API itself says when it refuses us (credentials, API access, its IP allow-list); a
# 403 without such words comes from the firewall in front of it.
_AUTH_ERROR = re.compile(
    r"unauthori[sz]ed|not authori[sz]ed|access denied|invalid (?:api )?(?:key|passkey|credential)"
    r"|ip (?:address )?(?:is )?not (?:allowed|permitted)|allow-?list|white-?list",
    re.IGNORECASE,
)
_MAX_MESSAGE = 300
DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PAGES = 1000


@dataclass(frozen=True)
class CrmInvoice:
    crm_id: str
    fields: dict[str, Any] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        """A field as text, None when the record does not carry it."""
        if name not in self.fields:
            return None
        value = self.fields[name]
        return "" if value is None else str(value).strip()


class OpenCrmClient:
    """One instance per worker; the httpx client (and its connection pool) is shared."""

    @classmethod
    def from_settings(cls, opencrm: OpenCrmSettings, http: httpx.AsyncClient) -> OpenCrmClient:
        return cls(
            http,
            base_url=opencrm.base_url,
            key=opencrm.key,
            passkey=opencrm.passkey,
            path_template=opencrm.path_template,
            timeout=opencrm.timeout_seconds,
            user_agent=opencrm.user_agent or USER_AGENT,
            max_answer_bytes=opencrm.max_answer_bytes,
            max_pages=opencrm.max_pages,
        )

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        key: SecretStr,
        passkey: SecretStr,
        path_template: str = "/api/rest/{method}",
        timeout: float = 10.0,
        user_agent: str,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._key = key
        self._passkey = passkey
        self._path_template = path_template
        self._timeout = timeout
        self._user_agent = user_agent
        self._max_answer_bytes = max_answer_bytes
        self.max_pages = max_pages

    async def list_page(
        self,
        *,
        start: int,
        size: int,
        query: str | None = None,
        method: str = "get_invoice_list",
    ) -> list[CrmInvoice]:
        """One page of invoices: records `start` to `start + size - 1` of the (filtered) list.

        Records without an id are kept out, but a page is only short when the list ends: the
        caller pages on while a page holds `size` answers.
        """
        params = {"limit_start": str(start), "limit_end": str(start + size)}
        if query is not None:
            params["query_string"] = query
        body = await self.call(method, **params)
        return [CrmInvoice(record_id(r) or "", r) for r in records_in(body)]

    async def pages(
        self, query: str | None, *, size: int, method: str = "get_invoice_list"
    ) -> AsyncIterator[list[CrmInvoice]]:
        """Every page of a list, first to last (a page shorter than `size` is the last).

        Raises CrmPagingBroken on a page holding the very records of the page before (the CRM
        ignores `limit_start`), and past `max_pages` full pages.
        """
        start = 0
        previous: list[str] | None = None
        for number in range(1, self.max_pages + 1):
            page = await self.list_page(start=start, size=size, query=query, method=method)
            ids = page_ids(page)
            if previous is not None and ids == previous:
                raise paging_ignored(method, start)
            yield page
            if len(page) < size:
                return
            if number == self.max_pages:
                break
            previous = ids
            start += len(page)
        raise too_many_pages(method, self.max_pages)

    async def get_invoice(self, crm_id: str) -> CrmInvoice:
        body = await self.call("get_invoice", crmid=crm_id)
        records = records_in(body)
        if len(records) != 1:
            raise CrmInvoiceNotFound(f"get_invoice returned no single record for crmid {crm_id}")
        return CrmInvoice(crm_id, records[0])

    async def edit_invoice(self, crm_id: str, fields: Mapping[str, str]) -> None:
        """Update an existing invoice with exactly these fields.

        OpenCRM saves a field sent empty as blank, and `crmid=0` creates a record: both are
        refused here, whatever the caller asked.
        """
        if not crm_id or crm_id.strip() in ("", "0"):
            raise ValueError("edit_invoice needs the crmid of an existing invoice")
        empty = [name for name, value in fields.items() if not str(value).strip()]
        if empty or not fields:
            raise ValueError(f"refusing to send empty fields {empty or '(none given)'}")
        await self.call("edit_invoice", crmid=crm_id, **dict(fields))

    async def call(self, method: str, **params: str) -> Any:
        """POST one API method; return the parsed JSON or raise a CrmError.

        One deadline (`timeout`) covers the whole call; httpx's own timeout, given the same
        value, only bounds each read, which a trickling answer never exceeds.
        """
        url = self._base + self._path_template.replace("{method}", method)
        form = {
            "key": self._key.get_secret_value(),
            "passkey": self._passkey.get_secret_value(),
            **params,
        }
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                response, content = await self._post(method, url, form)
        except (TimeoutError, httpx.TimeoutException):
            raise CrmUnavailable(f"OpenCRM {method}: no answer within {self._timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise CrmUnavailable(f"OpenCRM {method}: {type(exc).__name__}") from None
        finally:
            CRM_LATENCY.labels(method).observe(time.perf_counter() - started)
        log.debug("crm.call", method=method, status=response.status_code, size=len(content))
        secrets = (form["key"], form["passkey"])
        return _parse(method, response, content, secrets, self._user_agent)

    async def _post(
        self, method: str, url: str, form: dict[str, str]
    ) -> tuple[httpx.Response, bytes]:
        """The response and its body, read no further than the size cap."""
        cap = self._max_answer_bytes
        async with self._http.stream(
            "POST",
            url,
            data=form,
            headers={"User-Agent": self._user_agent, "Accept": "application/json"},
            timeout=self._timeout,
        ) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise answer_too_large(method, cap)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise answer_too_large(method, cap)
                chunks.append(chunk)
        return response, b"".join(chunks)


def page_ids(page: list[CrmInvoice]) -> list[str]:
    """What tells one page from another: its record ids, in order (records without one by
    their content, so a page of such records is still told apart)."""
    return [r.crm_id or repr(sorted(r.fields.items())) for r in page]


def paging_ignored(method: str, start: int) -> CrmPagingBroken:
    return CrmPagingBroken(
        f"OpenCRM {method} ignores paging: limit_start={start} answered the very records of "
        "the page before, so the list would never end; OpenCRM support must fix its paging"
    )


def too_many_pages(method: str, pages: int) -> CrmPagingBroken:
    return CrmPagingBroken(
        f"OpenCRM {method} gave more than {pages} pages: the list does not end, or is larger "
        "than LEDGERLINK_OPENCRM_MAX_PAGES allows"
    )


def answer_too_large(method: str, cap: int) -> CrmAnswerTooLarge:
    return CrmAnswerTooLarge(
        f"OpenCRM {method}: answer larger than {cap} bytes (LEDGERLINK_OPENCRM_MAX_ANSWER_BYTES), "
        "refused unread"
    )


def _parse(
    method: str,
    response: httpx.Response,
    content: bytes,
    secrets: tuple[str, ...] = (),
    user_agent: str = "",
) -> Any:
    status = response.status_code
    body: Any = None
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        body = None
    error = _redact(_error_text(body), secrets)
    if status == 401 or (error is not None and _AUTH_ERROR.search(error)):
        shown = error or f"HTTP {status}"
        raise CrmAuthError(
            f"OpenCRM refused the API credentials for {method} ({_clip(shown)}): check "
            "LEDGERLINK_OPENCRM_KEY / LEDGERLINK_OPENCRM_PASSKEY, that API access is enabled "
            "and that this address is on the IP allow-list"
        )
    if status == 403:
        raise CrmBlocked(
            f"OpenCRM's firewall rejected {method} (HTTP 403"
            + (f": {_clip(error)}" if error else "")
            + f", not a credentials error): it blocks some user agents (containing 'python' or "
            f"'curl') and addresses; ledgerlink sent User-Agent '{user_agent}' "
            "(LEDGERLINK_OPENCRM_USER_AGENT); ask OpenCRM support to check their firewall",
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    if status == 429 or status >= 500:
        raise CrmUnavailable(
            f"OpenCRM {method}: HTTP {status}" + (f" ({_clip(error)})" if error else ""),
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    if error is not None:
        raise CrmRejected(f"OpenCRM {method} answered an error: {_clip(error)}")
    if status >= 400:
        raise CrmRejected(f"OpenCRM {method}: HTTP {status}")
    if body is None:
        # A proxy, a maintenance page or a login form, not the API: worth another try later.
        kind = response.headers.get("content-type", "no content type")
        raise CrmUnavailable(f"OpenCRM {method}: HTTP {status} answer is not JSON ({kind})")
    return body


def _error_text(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if error in (None, False, "", 0):
        if body.get("success") is False:
            return str(body.get("message") or "success: false")
        return None
    if isinstance(error, dict):
        error = error.get("message") or error.get("description") or error
    return str(error)


def _redact(text: str | None, secrets: tuple[str, ...]) -> str | None:
    """An error that quotes our credentials back must not carry them into logs, /readyz or
    the outbox's last_error."""
    if text is None:
        return None
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def records_in(body: Any) -> list[dict[str, Any]]:
    """The records in an answer whose shape is not documented.

    Accepted: a single record (it carries an id); a list of records; an object holding
    records under a usual key (results, data, records, ...); an object keyed by record id.
    """
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)]
    if not isinstance(body, dict) or not body:
        return []
    if record_id(body) is not None:
        # A record itself (checked first: a record may hold lists, like its line items).
        return [body]
    for key in _LIST_KEYS:
        if key in body:
            inner = body[key]
            if isinstance(inner, dict) and record_id(inner) is not None:
                return [inner]
            return records_in(inner)
    values = list(body.values())
    if all(isinstance(v, dict) for v in values):
        return [v for v in values if isinstance(v, dict)]
    return [body]


def record_id(record: Mapping[str, Any]) -> str | None:
    for key in ID_KEYS:
        value = record.get(key)
        if value not in (None, "", 0, "0"):
            return str(value).strip()
    return None
