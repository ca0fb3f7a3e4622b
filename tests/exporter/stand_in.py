"""A stand-in for the service's webhook on a real socket, answering from a script, for the
cases the real service cannot be made to produce on demand (a 429, a dropped connection,
an answer that never comes). It checks every request's signature as the service would.
Everything else about delivery is tested against the real service."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from standardwebhooks.webhooks import Webhook

from tests.support.webhooks import TEST_SECRET

# An answer's body: the service's acknowledgement of the request it answers (its webhook-id,
# every posting received and applied, one invoice affected).
ACKNOWLEDGE: Any = object()


def acknowledgement(payload: Any, headers: dict[str, str]) -> dict[str, Any]:
    received = len(payload["postings"]) if isinstance(payload, dict) else 0
    return {
        "event_id": headers["webhook-id"],
        "postings_received": received,
        "postings_applied": received,
        "postings_unchanged": 0,
        "invoices_affected": 1,
    }


@dataclass(frozen=True)
class Answer:
    status: int = 202
    body: Any = ACKNOWLEDGE
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Close the connection without answering.
    drop: bool = False
    raw: bytes | None = None


def problem(status: int, detail: str, **extra: Any) -> Answer:
    body = {"type": "about:blank", "title": "Error", "status": status, "detail": detail, **extra}
    return Answer(status, body, {"content-type": "application/problem+json"})


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


class StandIn:
    def __init__(self, script: list[Answer], *, then: Answer | None = None) -> None:
        self.script = list(script)
        self.then = then or Answer()
        self.received: list[Received] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_answer(self, body: bytes, headers: dict[str, str]) -> Answer:
        payload = Webhook(TEST_SECRET).verify(body, headers)
        self.received.append(Received(body, headers))
        answer = self.answer(payload, body, headers)
        if answer.body is ACKNOWLEDGE:
            return dataclasses.replace(answer, body=acknowledgement(payload, headers))
        return answer

    def answer(self, payload: Any, body: bytes, headers: dict[str, str]) -> Answer:
        return self.script.pop(0) if self.script else self.then


@contextmanager
def stand_in(script: list[Answer], *, then: Answer | None = None) -> Iterator[StandIn]:
    with serving(StandIn(script, then=then)) as server:
        yield server


Server = TypeVar("Server", bound=StandIn)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up mid-answer (after its timeout, say) is part of the script; the
        test asserts on what the exporter saw, so no traceback on the test's stderr."""


@contextmanager
def serving(server_state: Server) -> Iterator[Server]:

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            answer = server_state.next_answer(body, {k.lower(): v for k, v in self.headers.items()})
            time.sleep(answer.delay)
            if answer.drop:
                self.close_connection = True
                return
            payload = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
            self.send_response(answer.status)
            headers = {"content-type": "application/json", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server_state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
