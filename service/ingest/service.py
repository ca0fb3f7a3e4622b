"""The webhook's rules: who may deliver, what a batch must hold, and that each delivery is
applied exactly once, whole, before it is acknowledged. (HTTP lives in router.py, SQL in
repository.py.)"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import Conflict, ServiceUnavailable, Unauthorized, Unprocessable
from service.ingest import repository
from service.ingest.parsing import parse_batch, received_postings
from service.ingest.rejections import RejectReason, rejected
from service.ingest.schemas import IngestResult, PostingBatch
from service.ingest.signature import SignatureRejected, SignedHeaders, Verifier
from service.logging import get_logger
from service.metrics import BATCH_SIZE, INGEST_LATENCY, POSTINGS, WEBHOOK_DELIVERIES
from service.settings import Settings
from service.transaction import run_in_transaction

log = get_logger(__name__)

# Deadlocks between concurrent batches touching the same invoices are resolved by PostgreSQL
# aborting one of them; the whole delivery is simply run again, up to this many more times.
RETRIES = 2


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: bytes
    replayed: bool


class WebhookIngest:
    """One per app: the verifier is built from the settings once."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
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

    async def receive(self, headers: SignedHeaders, body: bytes) -> Answer:
        started = time.perf_counter()
        try:
            self.verifier.verify(headers, body)
        except SignatureRejected as exc:
            raise rejected(Unauthorized, exc.reason, exc.detail) from None
        batch = parse_batch(body, base_currency=self.settings.base_currency)
        answer = await self._apply_once(headers.webhook_id, body, batch)
        if answer.replayed:
            WEBHOOK_DELIVERIES.labels("replayed", "").inc()
        else:
            WEBHOOK_DELIVERIES.labels("accepted", "").inc()
            INGEST_LATENCY.observe(time.perf_counter() - started)
        return answer

    async def _apply_once(self, webhook_id: str, body: bytes, batch: PostingBatch) -> Answer:
        body_sha256 = hashlib.sha256(body).digest()
        received = len(batch.postings)

        async def apply(conn: AsyncConnection) -> IngestResult | None:
            claim = await repository.claim_delivery(
                conn, webhook_id, body_sha256, batch.source, received
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
                settings=self.settings,
                notify=False,
                received=received_postings(body, batch),
            )
            result = IngestResult(
                event_id=webhook_id,
                postings_received=received,
                postings_applied=outcome.applied,
                postings_unchanged=outcome.unchanged,
                invoices_affected=outcome.invoices_affected,
            )
            await repository.record_answer(conn, webhook_id, result, wake=outcome.wake)
            return result

        result = await run_in_transaction(self.engine, apply, retries=RETRIES, name="webhook")
        if result is None:
            return await self._replay(webhook_id, body_sha256)
        # Only here, after the commit, is the delivery acknowledged.
        POSTINGS.labels("received").inc(received)
        POSTINGS.labels("applied").inc(result.postings_applied)
        POSTINGS.labels("unchanged").inc(result.postings_unchanged)
        BATCH_SIZE.observe(received)
        return Answer(202, result.model_dump_json().encode(), replayed=False)

    async def _replay(self, webhook_id: str, body_sha256: bytes) -> Answer:
        async with self.engine.connect() as conn:
            stored = await repository.stored_delivery(conn, webhook_id)
        if stored is None:  # pragma: no cover - the row was committed before we looked
            raise rejected(Conflict, "in_flight", f"delivery {webhook_id}: retry shortly")
        stored_sha256, response = stored
        if stored_sha256 != body_sha256:
            raise rejected(
                Unprocessable,
                "id_reused",
                f"webhook-id {webhook_id} was already delivered with a different body; "
                "a new batch needs a new webhook-id",
            )
        result = IngestResult.model_validate(response)
        return Answer(200, result.model_dump_json().encode(), replayed=True)
