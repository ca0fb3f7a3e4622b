"""A small fake OpenCRM for tests: a real HTTP server on a local port, invoices in memory.

It speaks what public code written against OpenCRM shows of the API (docs/CRM.md): form-encoded
POSTs to `/api/rest/{method}`, credentials `key`/`passkey`, `get_invoice_list` and
`get_invoice_list_full` (query_string `FIELD|=|VALUE` or `FIELD|BEGINS|VALUE`, which, like the
real API, it does not validate: an unknown field filters nothing; `limit_start`/`limit_end` as
an end index, at most 100 records a call), `get_invoice`, `edit_invoice` (a field sent empty is
saved blank; `crmid=0` creates), errors as `{"error": ...}` with HTTP 200, and a firewall that
answers 403 with an HTML page to user agents containing "python" or "curl". A field can have a
query name other than its record key (`query_names`). Every record carries a modification time
that edits (ours and a person's) move on. It records every request and can be told to fail
(5xx, 429 with Retry-After, "Unauthorized"), to hold a call, to ignore `limit_start` (always
the first page), or to go down entirely. Answers are JSON with non-ASCII escaped, so a record
may carry anything JSON can say (a lone surrogate included: `add_record`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tests.support.processes import free_port

KEY = "fake-opencrm-key-0001"
PASSKEY = "fake-opencrm-passkey-0001"
NUMBER_FIELD = "invoice_no"
STATUS_FIELD = "invoicestatus"
OUTSTANDING_FIELD = "amount_outstanding"
MODIFIED_FIELD = "modifiedtime"
MAX_PAGE = 100
# A fake ignoring paging answers this many list calls, then errors: a client that pages for
# ever fails its test instead of hanging it.
RUNAWAY_LIST_CALLS = 200
BLOCKED_AGENTS = re.compile(r"python|curl", re.IGNORECASE)


_FIREWALL_PAGE = (
    "<html><head><title>403 Forbidden</title></head><body>Request blocked</body></html>"
)


@dataclass(frozen=True)
class Recorded:
    """One request, without its credentials."""

    method: str
    params: dict[str, str]
    user_agent: str
    credentials_ok: bool
    answered: int


@dataclass(frozen=True)
class Edit:
    """One applied edit_invoice and what the invoice showed after it."""

    crm_id: str
    invoice_number: str
    fields: dict[str, str]
    status: str
    outstanding: str


@dataclass
class _Failure:
    status: int
    retry_after: str | None = None
    error: str | None = None


class _EscapedJSON(JSONResponse):
    """JSON with every non-ASCII character escaped, so that a lone surrogate goes on the wire
    as `\\ud800` (valid JSON text) instead of failing to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


@dataclass
class Hold:
    """The next edit (or list call) waits here: `reached` is set when it arrives, it goes on
    on `release`.

    An edit whose caller hung up meanwhile is dropped (counted in `FakeOpenCrm.dropped`), as if
    the crash had lost it: only a sender that delivers at least once gets it through.
    """

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeOpenCrm:
    def __init__(
        self,
        *,
        key: str = KEY,
        passkey: str = PASSKEY,
        query_names: dict[str, str] | None = None,
    ) -> None:
        self.key = key
        self.passkey = passkey
        # query_string name -> record key, where they differ (OpenCRM's field reference).
        self.query_names = dict(query_names or {})
        self.invoices: dict[str, dict[str, Any]] = {}
        # The CRM's clock for modification times; tests move it to another day.
        self.clock = datetime(2026, 11, 20, 9, 0, 0)
        self.requests: list[Recorded] = []
        self.edits: list[Edit] = []
        self.created: list[dict[str, str]] = []
        self.dropped = 0
        self.unauthorized = False
        # Like a CRM that ignores limit_start: every list call answers the first page.
        self.ignore_paging = False
        # Requests touching these invoice numbers answer this HTTP status, until cleared.
        self.failing_invoices: dict[str, int] = {}
        self._failures: deque[_Failure] = deque()
        self._hold: Hold | None = None
        self._list_hold: Hold | None = None
        self._runaway = 0
        self._ids = itertools.count(4001)
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = free_port()
        self.app = self._build_app()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Data ----------------------------------------------------------------------------------

    def add_invoice(
        self, number: str, status: str = "Unpaid", outstanding: str = "0.00", **fields: str
    ) -> str:
        crm_id = str(next(self._ids))
        with self._lock:
            self.invoices[crm_id] = {
                "crmid": crm_id,
                NUMBER_FIELD: number,
                "subject": f"Invoice {number}",
                STATUS_FIELD: status,
                OUTSTANDING_FIELD: outstanding,
                MODIFIED_FIELD: self._tick(),
                **fields,
            }
        return crm_id

    def add_record(self, record: dict[str, Any]) -> str:
        """A record exactly as given (any JSON value in any field), with a new crmid."""
        crm_id = str(next(self._ids))
        with self._lock:
            self.invoices[crm_id] = {"crmid": crm_id, **record}
        return crm_id

    def _tick(self) -> str:
        """The next modification time (called with the lock held)."""
        self.clock += timedelta(seconds=1)
        return self.clock.strftime("%Y-%m-%d %H:%M:%S")

    def invoice(self, number: str) -> dict[str, Any]:
        with self._lock:
            for record in self.invoices.values():
                if record.get(NUMBER_FIELD) == number:
                    return dict(record)
        raise KeyError(number)

    def set_by_person(self, number: str, **fields: str) -> None:
        """A person editing the invoice in OpenCRM's own screens."""
        with self._lock:
            for record in self.invoices.values():
                if record.get(NUMBER_FIELD) == number:
                    record.update(fields)
                    record[MODIFIED_FIELD] = self._tick()
                    return
        raise KeyError(number)

    def edits_for(self, number: str) -> list[Edit]:
        with self._lock:
            return [e for e in self.edits if e.invoice_number == number]

    def calls(self, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    # Faults --------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500, *, retry_after: str | None = None) -> None:
        with self._lock:
            self._failures.extend(_Failure(status, retry_after) for _ in range(count))

    def hold_next_edit(self) -> Hold:
        hold = Hold()
        with self._lock:
            self._hold = hold
        return hold

    def hold_next_list(self) -> Hold:
        hold = Hold()
        with self._lock:
            self._list_hold = hold
        return hold

    # Server --------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on self.port (the same port again after `stop`)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-opencrm", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenCRM did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Go down: the port refuses connections until `start` again."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)

    # The API -------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/rest/{method}")
        async def api(method: str, request: Request) -> Response:
            params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            key, passkey = params.pop("key", None), params.pop("passkey", None)
            credentials_ok = key == self.key and passkey == self.passkey
            response = await self._answer(method, params, credentials_ok, request)
            with self._lock:
                self.requests.append(
                    Recorded(
                        method,
                        params,
                        request.headers.get("user-agent", ""),
                        credentials_ok,
                        response.status_code,
                    )
                )
            return response

        return app

    async def _answer(
        self, method: str, params: dict[str, str], credentials_ok: bool, request: Request
    ) -> Response:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
            touched = self._invoice_number_of(params)
            persistent = self.failing_invoices.get(touched) if touched else None
        if failure is None and persistent is not None:
            failure = _Failure(persistent)
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            return _EscapedJSON(
                {"error": f"fake failure {failure.status}"},
                status_code=failure.status,
                headers=headers,
            )
        if BLOCKED_AGENTS.search(request.headers.get("user-agent", "")):
            return HTMLResponse(_FIREWALL_PAGE, status_code=403)
        if self.unauthorized or not credentials_ok:
            return _EscapedJSON({"error": "Unauthorized"})
        if method in ("get_invoice_list", "get_invoice_list_full"):
            with self._lock:
                hold, self._list_hold = self._list_hold, None
            if hold is not None:
                hold.reached.set()
                await asyncio.get_running_loop().run_in_executor(None, hold.release.wait, 30)
            return _EscapedJSON(self._list(params))
        if method == "get_invoice":
            with self._lock:
                record = self.invoices.get(params.get("crmid", ""))
                found = dict(record) if record is not None else None
            return _EscapedJSON(found if found is not None else {"error": "Record not found"})
        if method == "edit_invoice":
            return _EscapedJSON(await self._edit(params, request))
        return _EscapedJSON({"error": f"Unknown method {method}"})

    def _invoice_number_of(self, params: dict[str, str]) -> str | None:
        query = params.get("query_string")
        if query:
            return query.split("|")[-1]
        record = self.invoices.get(params.get("crmid", ""))
        return record.get(NUMBER_FIELD) if record else None

    def _list(self, params: dict[str, str]) -> dict[str, Any]:
        field_name, operator, value = ((params.get("query_string") or "") + "||").split("|")[:3]
        start = int(params.get("limit_start") or 0)
        end = min(int(params.get("limit_end") or MAX_PAGE), start + MAX_PAGE)
        if self.ignore_paging:
            with self._lock:
                self._runaway += 1
                if self._runaway > RUNAWAY_LIST_CALLS:
                    return {"error": f"fake: more than {RUNAWAY_LIST_CALLS} list calls"}
            start, end = 0, min(end - start, MAX_PAGE)
        with self._lock:
            records = [dict(r) for r in self.invoices.values()]
        key = self.query_names.get(field_name)
        if key is None and field_name not in self.query_names.values():
            key = field_name
        # Like the real API, a field it does not know filters nothing.
        if key and any(key in r for r in records):
            if operator == "BEGINS":
                records = [r for r in records if str(r.get(key, "")).startswith(value)]
            else:
                records = [r for r in records if r.get(key) == value]
        return {"total": len(records), "results": records[start:end]}

    async def _edit(self, params: dict[str, str], request: Request) -> dict[str, Any]:
        crm_id = params.pop("crmid", "")
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.reached.set()
            await asyncio.get_running_loop().run_in_executor(None, hold.release.wait, 30)
            if await request.is_disconnected():
                with self._lock:
                    self.dropped += 1
                return {"error": "the caller hung up"}
        with self._lock:
            if crm_id in ("", "0"):
                self.created.append(dict(params))
                return {"error": "creating invoices is not expected in these tests"}
            record = self.invoices.get(crm_id)
            if record is None:
                return {"error": "Record not found"}
            record.update(params)  # an empty value blanks the field, as OpenCRM does
            record[MODIFIED_FIELD] = self._tick()
            self.edits.append(
                Edit(
                    crm_id,
                    record.get(NUMBER_FIELD, ""),
                    dict(params),
                    record.get(STATUS_FIELD, ""),
                    record.get(OUTSTANDING_FIELD, ""),
                )
            )
        return {"success": True, "crmid": crm_id}
