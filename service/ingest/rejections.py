"""Why a webhook delivery is refused: one reason per refusal, in the problem body and in the
label of its metric."""

from __future__ import annotations

from typing import Any, Literal, get_args

from service.errors import ServiceError
from service.ingest.signature import SignatureReason
from service.metrics import WEBHOOK_DELIVERIES
from service.middleware.refusal import BodyRefusal

# Why a delivery is refused: the `reason` of the problem body and of the metric label
# (`ledgerlink_webhook_deliveries_total{outcome="rejected"}`), which starts at 0 for each.
RejectReason = Literal[
    SignatureReason,  # service/ingest/signature.py
    BodyRefusal,  # the body, refused by service/middleware/ while the webhook reads it
    "not_configured",
    "in_flight",
    "id_reused",
    "invalid_json",
    "invalid_batch",
]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)


class InvalidBody(ServiceError):
    status_code = 400
    title = "Invalid body"


def rejected(
    error: type[ServiceError],
    reason: RejectReason,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ServiceError:
    """A refusal whose `reason` is both in the problem body and the metric label."""
    return error(detail, errors=errors, headers=headers, extra={"reason": reason, **extra})


def count_rejection(exc: ServiceError) -> None:
    reason = exc.extra.get("reason") or type(exc).__name__.lower()
    WEBHOOK_DELIVERIES.labels("rejected", str(reason)).inc()
