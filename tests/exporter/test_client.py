"""Signing and delivering one batch: what is retried, what stops, how long it waits, and what
it says while it does."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
from ledgerlink_exporter.client import (
    BatchRejected,
    DeliveryGaveUp,
    NotLedgerlink,
    RetryPolicy,
    Signer,
    Unreachable,
    WebhookClient,
    retry_after_seconds,
    webhook_url,
)
from standardwebhooks.webhooks import Webhook

from tests.exporter.stand_in import Answer, problem, stand_in
from tests.support.processes import free_port
from tests.support.webhooks import TEST_SECRET

BODY = json.dumps({"source": "sage50-exporter", "postings": [{"tran_number": 1}]}).encode()
NOW = dt.datetime(2025, 3, 20, 12, 0, tzinfo=dt.UTC)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(
    http: httpx.AsyncClient,
    url: str,
    sleeps: Sleeps,
    attempts: int = 4,
    announced: list[str] | None = None,
) -> WebhookClient:
    return WebhookClient(
        http,
        url,
        Signer.from_secret(TEST_SECRET),
        policy=RetryPolicy(max_attempts=attempts, base_delay=1.0, max_delay=8.0),
        sleep=sleeps,
        jitter=lambda low, high: high,
        on_retry=announced.append if announced is not None else None,
    )


def test_signature_verifies_with_standardwebhooks() -> None:
    headers = Signer.from_secret(TEST_SECRET).headers("msg_1", BODY, dt.datetime.now(dt.UTC))
    Webhook(TEST_SECRET).verify(BODY, headers)


def test_a_url_safe_secret_signs_what_the_service_checks() -> None:
    """`make run` creates its secret with token_urlsafe: '-' and '_' in the base64 part."""
    secret = "whsec_AbcD-efGh_ijKlmnOpqrStuvWxyz0123"
    headers = Signer.from_secret(secret).headers("msg_1", BODY, dt.datetime.now(dt.UTC))
    Webhook(secret).verify(BODY, headers)


def test_signature_fails_for_other_bytes() -> None:
    headers = Signer.from_secret(TEST_SECRET).headers("msg_1", BODY, dt.datetime.now(dt.UTC))
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(TEST_SECRET).verify(BODY + b" ", headers)


@pytest.mark.parametrize("secret", ["secret", "whsec_", "whsec_not base64!"])
def test_rejects_a_bad_secret(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        Signer.from_secret(secret)


@pytest.mark.parametrize(
    "url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1/webhooks/sage/postings"]
)
def test_url_may_be_the_base_or_the_webhook(url: str) -> None:
    assert webhook_url(url) == "http://h:8000/v1/webhooks/sage/postings"


async def test_sends_the_signed_body_and_reads_the_answer() -> None:
    sleeps = Sleeps()
    with stand_in([]) as server:
        async with httpx.AsyncClient() as http:
            ack = await client(http, server.url + "/", sleeps).deliver(BODY, "msg_1")
    [request] = server.received
    assert request.body == BODY
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["content-type"] == "application/json"
    assert (ack.replayed, ack.postings_applied, ack.invoices_affected) == (False, 1, 1)
    assert sleeps.calls == []


async def test_a_200_is_a_replay() -> None:
    with stand_in([Answer(200)]) as server:
        async with httpx.AsyncClient() as http:
            ack = await client(http, server.url, Sleeps()).deliver(BODY, "msg_1")
    assert ack.replayed is True


async def test_retries_503_with_backoff_announcing_each_retry() -> None:
    sleeps, announced = Sleeps(), list[str]()
    script = [problem(503, "database unavailable"), problem(503, "database unavailable")]
    with stand_in(script) as server:
        async with httpx.AsyncClient() as http:
            ack = await client(http, server.url, sleeps, announced=announced).deliver(BODY, "msg_1")
    assert len(server.received) == 3
    assert sleeps.calls == [1.0, 2.0]
    assert ack.postings_applied == 1
    assert announced == [
        "retrying 2/4 in 1 s: 503 database unavailable",
        "retrying 3/4 in 2 s: 503 database unavailable",
    ]
    assert {r.headers["webhook-id"] for r in server.received} == {"msg_1"}, "the same delivery"


async def test_retry_after_is_honoured_on_429_and_503() -> None:
    sleeps = Sleeps()
    script = [
        Answer(429, {}, {"retry-after": "7"}),
        Answer(503, {"detail": "unavailable"}, {"Retry-After": "3"}),
    ]
    with stand_in(script) as server:
        async with httpx.AsyncClient() as http:
            await client(http, server.url, sleeps).deliver(BODY, "msg_1")
    assert sleeps.calls == [7.0, 3.0]


async def test_409_same_id_in_progress_is_retried() -> None:
    sleeps = Sleeps()
    with stand_in([problem(409, "being processed")]) as server:
        async with httpx.AsyncClient() as http:
            await client(http, server.url, sleeps).deliver(BODY, "msg_1")
    assert len(server.received) == 2
    assert len(sleeps.calls) == 1


async def test_timeouts_and_dropped_connections_are_retried() -> None:
    announced: list[str] = []
    with stand_in([Answer(delay=1.0), Answer(drop=True)]) as server:
        async with httpx.AsyncClient(timeout=0.3) as http:
            await client(http, server.url, Sleeps(), announced=announced).deliver(BODY, "msg_1")
    assert len(server.received) == 3
    assert announced[0] == "retrying 2/4 in 1 s: the server did not answer in time"
    assert announced[1].startswith(f"retrying 3/4 in 2 s: lost the connection to {server.url}")


async def test_a_refused_connection_is_not_retried_and_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sleeps = Sleeps()
    async with httpx.AsyncClient() as http:
        with pytest.raises(Unreachable) as caught:
            await client(http, url, sleeps).deliver(BODY, "msg_1")
    assert sleeps.calls == []
    message = str(caught.value)
    assert message.startswith(f"cannot connect to {url}/v1/webhooks/sage/postings (")
    assert "--url or LEDGERLINK_URL" in message


async def test_gives_up_after_max_attempts() -> None:
    sleeps = Sleeps()
    with stand_in([], then=problem(500, "boom")) as server:
        async with httpx.AsyncClient() as http:
            with pytest.raises(DeliveryGaveUp, match="gave up after 3 attempts: 500 boom"):
                await client(http, server.url, sleeps, attempts=3).deliver(BODY, "msg_1")
    assert len(server.received) == 3
    assert sleeps.calls == [1.0, 2.0]


async def test_backoff_is_capped() -> None:
    sleeps = Sleeps()
    with stand_in([], then=problem(502, "bad gateway")) as server:
        async with httpx.AsyncClient() as http:
            with pytest.raises(DeliveryGaveUp):
                await client(http, server.url, sleeps, attempts=6).deliver(BODY, "msg_1")
    assert sleeps.calls == [1.0, 2.0, 4.0, 8.0, 8.0]


async def test_stops_on_422_with_the_servers_detail() -> None:
    sleeps = Sleeps()
    errors = [{"loc": ["body", "postings", 0, "date"], "msg": "invalid date"}]
    with stand_in([problem(422, "posting 0 is invalid", errors=errors)]) as server:
        async with httpx.AsyncClient() as http:
            with pytest.raises(BatchRejected) as caught:
                await client(http, server.url, sleeps).deliver(BODY, "msg_1")
    assert len(server.received) == 1
    assert sleeps.calls == []
    assert caught.value.status == 422
    assert caught.value.detail.startswith("posting 0 is invalid (first of 1 errors: ")
    assert "invalid date" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_non_problem_error_still_gives_one_line() -> None:
    with stand_in([Answer(404, raw=b"<html>\nnot\nhere")]) as server:
        async with httpx.AsyncClient() as http:
            with pytest.raises(BatchRejected) as caught:
                await client(http, server.url, Sleeps()).deliver(BODY, "msg_1")
    assert (
        str(caught.value) == "the server rejected the batch (HTTP 404): Not Found <html> not here"
    )


def counts(received: int, applied: int, unchanged: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": "msg_1",
        "postings_received": received,
        "postings_applied": applied,
        "postings_unchanged": unchanged,
        "invoices_affected": 1,
        **extra,
    }


HTML = {"content-type": "text/html"}


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (Answer(200, raw=b"<html>OK</html>", headers=HTML), "(text/html: '<html>OK</html>')"),
        (Answer(202, raw=b"", headers=HTML), "(text/html, empty body)"),
        (Answer(200, {"status": "ok"}), "(event_id null where the service names the delivery"),
        (
            Answer(202, counts(1, 1, 0, event_id="evt_1")),
            '(event_id "evt_1" where the service names the delivery msg_1)',
        ),
        (Answer(202, counts(2, 2, 0)), "(postings_received 2 for a batch of 1 postings)"),
        (Answer(200, counts(1, 0, 0)), "(0 applied and 0 unchanged do not add up to the 1"),
        (Answer(202, counts(1, 1, 0, invoices_affected="1")), '(invoices_affected is "1", not'),
        (Answer(201, counts(1, 1, 0)), "the webhook answers 202, or 200 for a replay)"),
        (Answer(204, raw=b""), "(application/json, empty body; the webhook answers 202"),
    ],
)
async def test_only_the_services_answer_to_this_batch_acknowledges_it(
    answer: Answer, what: str
) -> None:
    """A proxy's page, a captive portal or another service's 2xx is not an acknowledgement:
    the batch may never have reached ledgerlink. Not retried: the same page would come back."""
    sleeps = Sleeps()
    with stand_in([answer]) as server:
        async with httpx.AsyncClient() as http:
            with pytest.raises(NotLedgerlink) as caught:
                await client(http, server.url, sleeps).deliver(BODY, "msg_1")
    assert len(server.received) == 1
    assert sleeps.calls == []
    message = str(caught.value)
    url = f"{server.url}/v1/webhooks/sage/postings"
    assert message.startswith(f"{url} answered HTTP {answer.status} but not as ledgerlink does")
    assert what in message
    assert message.endswith("Check --url or LEDGERLINK_URL, and any proxy in between")
    assert "\n" not in message


async def test_an_answer_counting_unchanged_postings_acknowledges() -> None:
    with stand_in([Answer(202, counts(1, 0, 1))]) as server:
        async with httpx.AsyncClient() as http:
            ack = await client(http, server.url, Sleeps()).deliver(BODY, "msg_1")
    assert (ack.event_id, ack.postings_received, ack.postings_unchanged) == ("msg_1", 1, 1)


def test_retry_after_as_an_http_date() -> None:
    when = "Thu, 20 Mar 2025 12:00:30 GMT"
    response = httpx.Response(503, headers={"retry-after": when})
    assert retry_after_seconds(response, NOW) == 30.0
    assert retry_after_seconds(httpx.Response(503, headers={"retry-after": "soon"}), NOW) is None
