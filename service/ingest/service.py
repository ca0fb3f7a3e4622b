"""The webhook's rules: who may deliver, what a batch must hold, and that each delivery is
applied exactly once, whole, before it is acknowledged. (HTTP lives in router.py, SQL in
repository.py.)"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import Conflict, ServiceUnavailable, Unauthorized, Unprocessable
from service.ingest import repository
from service.ingest.parsing import parse_batch, received_postings
from service.ingest.rejections import RejectReason, rejected
from service.ingest.schemas import IngestResult, PostingBatch
from service.ingest.signature import SignatureRejected, SignedHeaders, Verifier
from service.logging import get_logger
from service.metrics import BATCH_SIZE, INGEST_LATENCY, POSTINGS, WEBHOOK_DELIVERIES
from service.settings import Settings

log = get_logger(__name__)

# Deadlocks between concurrent batches touching the same invoices are resolved by PostgreSQL
# aborting one of them; the whole delivery is simply run again, up to this many more times.
RETRIES = 2


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: bytes
    replayed: bool


@dataclass(frozen=True)
class Delivery:
    """A signed delivery whose batch passed validation."""

    webhook_id: str
    body: bytes
    body_sha256: bytes
    batch: PostingBatch
    # perf_counter() when it arrived, for the ingest latency.
    started: float


class WebhookIngest:
    """One per app: the verifier is built from the settings once. A delivery is verified,
    applied in a transaction the router begins (retried after a deadlock: RETRIES), and
    answered; one applied before is answered from what was stored."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.misconfigured: str | None = None
        try:
            self.verifier = Verifier(settings.webhook_secrets, settings.webhook_tolerance_seconds)
        except ValueError as exc:
            self.verifier = Verifier([], settings.webhook_tolerance_seconds)
            self.misconfigured = f"LEDGERLINK_WEBHOOK_SECRETS: {exc}"

    def check_headers(
        self, webhook_id: str | None, timestamp: str | None, signature: str | None
    ) -> SignedHeaders:
        if not self.verifier.configured:
            why = (
                self.misconfigured or "no webhook secret is configured (LEDGERLINK_WEBHOOK_SECRETS)"
            )
            refused = ServiceUnavailable(
                f"{why}, so no delivery can be authenticated; nothing was stored",
                retry_after=60,
            )
            reason: RejectReason = "not_configured"
            refused.extra["reason"] = reason
            raise refused
        try:
            return self.verifier.check_headers(webhook_id, timestamp, signature, now=time.time())
        except SignatureRejected as exc:
            raise rejected(Unauthorized, exc.reason, exc.detail) from None

    def verified(self, headers: SignedHeaders, body: bytes) -> Delivery:
        """The delivery, its signature checked and its batch validated (nothing stored yet)."""
        started = time.perf_counter()
        try:
            self.verifier.verify(headers, body)
        except SignatureRejected as exc:
            raise rejected(Unauthorized, exc.reason, exc.detail) from None
        batch = parse_batch(body, base_currency=self.settings.base_currency)
        return Delivery(headers.webhook_id, body, hashlib.sha256(body).digest(), batch, started)

    async def apply(self, conn: AsyncConnection, delivery: Delivery) -> IngestResult | None:
        """The delivery applied in the caller's transaction, with its answer recorded; None
        when it was applied before (committed by an earlier transaction). The transaction may
        run it again after a deadlock: it has no effect outside the database."""
        webhook_id, batch = delivery.webhook_id, delivery.batch
        claim = await repository.claim_delivery(
            conn, webhook_id, delivery.body_sha256, batch.source, len(batch.postings)
        )
        if claim is repository.Claim.IN_FLIGHT:
            raise rejected(
                Conflict,
                "in_flight",
                f"delivery {webhook_id} is being processed right now; "
                "retry shortly to get its answer",
                headers={"Retry-After": "1"},
            )
        if claim is repository.Claim.DELIVERED:
            return None
        outcome = await repository.store(
            conn,
            batch.postings,
            event_id=webhook_id,
            settings=self.settings.ledger,
            notify=False,
            received=received_postings(delivery.body, batch),
        )
        result = IngestResult(
            event_id=webhook_id,
            postings_received=len(batch.postings),
            postings_applied=outcome.applied,
            postings_unchanged=outcome.unchanged,
            invoices_affected=outcome.invoices_affected,
        )
        await repository.record_answer(conn, webhook_id, result, wake=outcome.wake)
        return result

    def applied(self, delivery: Delivery, result: IngestResult) -> Answer:
        """The answer to a delivery `apply` stored, once its transaction committed: only then
        is it acknowledged."""
        received = len(delivery.batch.postings)
        POSTINGS.labels("received").inc(received)
        POSTINGS.labels("applied").inc(result.postings_applied)
        POSTINGS.labels("unchanged").inc(result.postings_unchanged)
        BATCH_SIZE.observe(received)
        WEBHOOK_DELIVERIES.labels("accepted", "").inc()
        INGEST_LATENCY.observe(time.perf_counter() - delivery.started)
        return Answer(202, result.model_dump_json().encode(), replayed=False)

    async def replayed(self, conn: AsyncConnection, delivery: Delivery) -> Answer:
        """The stored answer to a delivery applied before, if its body is the same."""
        webhook_id = delivery.webhook_id
        stored = await repository.stored_delivery(conn, webhook_id)
        if stored is None:  # pragma: no cover - the row was committed before we looked
            raise rejected(Conflict, "in_flight", f"delivery {webhook_id}: retry shortly")
        stored_sha256, response = stored
        if stored_sha256 != delivery.body_sha256:
            raise rejected(
                Unprocessable,
                "id_reused",
                f"webhook-id {webhook_id} was already delivered with a different body; "
                "a new batch needs a new webhook-id",
            )
        result = IngestResult.model_validate(response)
        WEBHOOK_DELIVERIES.labels("replayed", "").inc()
        return Answer(200, result.model_dump_json().encode(), replayed=True)
