"""Signing and delivering one batch: what is retried, what stops, and how long it waits."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import httpx
import orjson
import pytest
import respx
from standardwebhooks.webhooks import Webhook

from service.exporter.client import (
    BatchRejected,
    DeliveryGaveUp,
    RetryPolicy,
    WebhookClient,
    make_webhook,
    retry_after_seconds,
    signed_headers,
)

SECRET = "whsec_" + base64.b64encode(b"exporter-test-secret-32-bytes!!!").decode()
BASE = "http://ledgerlink.test"
ENDPOINT = f"{BASE}/v1/webhooks/sage/postings"
BODY = orjson.dumps({"source": "sage50-exporter", "postings": [{"tran_number": 1}]})
ACCEPTED = {
    "event_id": "evt_1",
    "postings_received": 1,
    "postings_applied": 1,
    "postings_unchanged": 0,
    "invoices_affected": 1,
}
NOW = dt.datetime(2025, 3, 20, 12, 0, tzinfo=dt.UTC)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(http: httpx.AsyncClient, sleeps: Sleeps, attempts: int = 4) -> WebhookClient:
    return WebhookClient(
        http,
        BASE + "/",
        make_webhook(SECRET),
        policy=RetryPolicy(max_attempts=attempts, base_delay=1.0, max_delay=8.0),
        sleep=sleeps,
        jitter=lambda low, high: high,
    )


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": "Error", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


def test_signature_verifies_with_standardwebhooks() -> None:
    now = dt.datetime.now(dt.UTC)
    headers = signed_headers(make_webhook(SECRET), "msg_abc", BODY, now)
    assert Webhook(SECRET).verify(BODY, headers) == orjson.loads(BODY)
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")


def test_signature_fails_for_other_bytes() -> None:
    headers = signed_headers(make_webhook(SECRET), "msg_abc", BODY, dt.datetime.now(dt.UTC))
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(SECRET).verify(BODY.replace(b"1", b"2"), headers)


@pytest.mark.parametrize("secret", ["not-a-secret", "whsec_", "whsec_%%%%"])
def test_rejects_a_bad_secret(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        make_webhook(secret)


async def test_sends_the_signed_body_and_reads_the_answer() -> None:
    sleeps = Sleeps()
    with respx.mock(assert_all_called=True) as router:
        route = router.post(ENDPOINT).mock(return_value=httpx.Response(202, json=ACCEPTED))
        async with httpx.AsyncClient() as http:
            ack = await client(http, sleeps).deliver(BODY, "msg_1")
    request = route.calls.last.request
    assert request.content == BODY
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["content-type"] == "application/json"
    Webhook(SECRET).verify(request.content, dict(request.headers))
    assert (ack.replayed, ack.postings_applied, ack.invoices_affected) == (False, 1, 1)
    assert sleeps.calls == []


async def test_a_200_is_a_replay() -> None:
    with respx.mock() as router:
        router.post(ENDPOINT).mock(return_value=httpx.Response(200, json=ACCEPTED))
        async with httpx.AsyncClient() as http:
            ack = await client(http, Sleeps()).deliver(BODY, "msg_1")
    assert ack.replayed is True


async def test_retries_503_with_backoff_then_succeeds() -> None:
    sleeps = Sleeps()
    with respx.mock() as router:
        route = router.post(ENDPOINT).mock(
            side_effect=[
                problem(503, "database unavailable"),
                problem(503, "database unavailable"),
                httpx.Response(202, json=ACCEPTED),
            ]
        )
        async with httpx.AsyncClient() as http:
            ack = await client(http, sleeps).deliver(BODY, "msg_1")
    assert route.call_count == 3
    assert sleeps.calls == [1.0, 2.0]
    assert ack.postings_applied == 1
    ids = {call.request.headers["webhook-id"] for call in route.calls}
    assert ids == {"msg_1"}, "a retry is the same delivery"


async def test_retry_after_is_honoured_on_429_and_503() -> None:
    sleeps = Sleeps()
    with respx.mock() as router:
        router.post(ENDPOINT).mock(
            side_effect=[
                httpx.Response(429, headers={"retry-after": "7"}),
                httpx.Response(503, json={"detail": "unavailable"}, headers={"Retry-After": "3"}),
                httpx.Response(202, json=ACCEPTED),
            ]
        )
        async with httpx.AsyncClient() as http:
            await client(http, sleeps).deliver(BODY, "msg_1")
    assert sleeps.calls == [7.0, 3.0]


async def test_409_same_id_in_progress_is_retried() -> None:
    sleeps = Sleeps()
    with respx.mock() as router:
        route = router.post(ENDPOINT).mock(
            side_effect=[problem(409, "being processed"), httpx.Response(202, json=ACCEPTED)]
        )
        async with httpx.AsyncClient() as http:
            await client(http, sleeps).deliver(BODY, "msg_1")
    assert route.call_count == 2
    assert len(sleeps.calls) == 1


async def test_timeouts_and_connection_errors_are_retried() -> None:
    sleeps = Sleeps()
    with respx.mock() as router:
        route = router.post(ENDPOINT).mock(
            side_effect=[
                httpx.ReadTimeout("slow"),
                httpx.ConnectError("refused"),
                httpx.Response(202, json=ACCEPTED),
            ]
        )
        async with httpx.AsyncClient() as http:
            await client(http, sleeps).deliver(BODY, "msg_1")
    assert route.call_count == 3


async def test_gives_up_after_max_attempts() -> None:
    sleeps = Sleeps()
    with respx.mock() as router:
        route = router.post(ENDPOINT).mock(return_value=problem(500, "boom"))
        async with httpx.AsyncClient() as http:
            with pytest.raises(DeliveryGaveUp, match="gave up after 3 attempts: HTTP 500: boom"):
                await client(http, sleeps, attempts=3).deliver(BODY, "msg_1")
    assert route.call_count == 3
    assert sleeps.calls == [1.0, 2.0]


async def test_backoff_is_capped() -> None:
    sleeps = Sleeps()
    with respx.mock() as router:
        router.post(ENDPOINT).mock(return_value=problem(502, "bad gateway"))
        async with httpx.AsyncClient() as http:
            with pytest.raises(DeliveryGaveUp):
                await client(http, sleeps, attempts=6).deliver(BODY, "msg_1")
    assert sleeps.calls == [1.0, 2.0, 4.0, 8.0, 8.0]


async def test_stops_on_422_with_the_servers_detail() -> None:
    sleeps = Sleeps()
    errors = [{"loc": ["body", "postings", 0, "date"], "msg": "invalid date"}]
    with respx.mock() as router:
        route = router.post(ENDPOINT).mock(
            return_value=problem(422, "posting 0 is invalid", errors=errors)
        )
        async with httpx.AsyncClient() as http:
            with pytest.raises(BatchRejected) as caught:
                await client(http, sleeps).deliver(BODY, "msg_1")
    assert route.call_count == 1
    assert sleeps.calls == []
    assert caught.value.status == 422
    assert caught.value.detail.startswith("posting 0 is invalid (first of 1 errors: ")
    assert "invalid date" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_non_problem_error_still_gives_one_line() -> None:
    with respx.mock() as router:
        router.post(ENDPOINT).mock(return_value=httpx.Response(404, text="<html>\nnot\nhere"))
        async with httpx.AsyncClient() as http:
            with pytest.raises(BatchRejected) as caught:
                await client(http, Sleeps()).deliver(BODY, "msg_1")
    assert (
        str(caught.value) == "the server rejected the batch (HTTP 404): Not Found <html> not here"
    )


def test_retry_after_as_an_http_date() -> None:
    when = "Thu, 20 Mar 2025 12:00:30 GMT"
    response = httpx.Response(503, headers={"retry-after": when})
    assert retry_after_seconds(response, NOW) == 30.0
    assert retry_after_seconds(httpx.Response(503, headers={"retry-after": "soon"}), NOW) is None
