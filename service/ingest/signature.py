"""Standard Webhooks verification (https://www.standardwebhooks.com): HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{raw body}` with any of the configured secrets.

Why not `standardwebhooks.Webhook.verify`: its timestamp tolerance is fixed at five minutes
(ours is LEDGERLINK_WEBHOOK_TOLERANCE_SECONDS), it decodes the body as UTF-8 and signs the
re-encoded text rather than the bytes received, it takes one secret, and malformed headers raise
errors other than its own. The cryptography is one `hmac` call; the tests check interoperability
against the package's own signer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

SECRET_PREFIX = "whsec_"
MAX_WEBHOOK_ID = 255

SignatureReason = Literal[
    "missing_headers", "malformed_headers", "stale_timestamp", "future_timestamp", "bad_signature"
]


class SignatureRejected(Exception):
    """Why a delivery is not authentic; `reason` is a metric label, `str()` is for people."""

    def __init__(self, reason: SignatureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SignedHeaders:
    webhook_id: str
    timestamp: int
    signatures: tuple[bytes, ...]


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` -> key bytes, read as the standardwebhooks package reads it."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "==")
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("a webhook secret is not whsec_ followed by base64")
    return key


class Verifier:
    def __init__(self, secrets: list[SecretStr], tolerance_seconds: int) -> None:
        self._keys = [decode_secret(s.get_secret_value()) for s in secrets]
        self._tolerance = tolerance_seconds

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def check_headers(
        self, webhook_id: str | None, timestamp: str | None, signature: str | None, *, now: float
    ) -> SignedHeaders:
        """Everything that can be judged before the body is read."""
        if not webhook_id or not timestamp or not signature:
            missing = [
                name
                for name, value in (
                    ("webhook-id", webhook_id),
                    ("webhook-timestamp", timestamp),
                    ("webhook-signature", signature),
                )
                if not value
            ]
            raise SignatureRejected(
                "missing_headers", f"missing Standard Webhooks header(s): {', '.join(missing)}"
            )
        if len(webhook_id) > MAX_WEBHOOK_ID:
            raise SignatureRejected(
                "malformed_headers", f"webhook-id is longer than {MAX_WEBHOOK_ID} characters"
            )
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise SignatureRejected(
                "malformed_headers", "webhook-timestamp must be a Unix time in whole seconds"
            )
        sent_at = int(timestamp)
        skew = sent_at - int(now)
        if skew < -self._tolerance:
            raise SignatureRejected(
                "stale_timestamp",
                f"webhook-timestamp is {-skew}s old; at most {self._tolerance}s is accepted "
                "(check the sender's clock, then sign and send again)",
            )
        if skew > self._tolerance:
            raise SignatureRejected(
                "future_timestamp",
                f"webhook-timestamp is {skew}s in the future; at most {self._tolerance}s "
                "of clock skew is accepted",
            )
        return SignedHeaders(webhook_id, sent_at, _v1_signatures(signature))

    def verify(self, headers: SignedHeaders, body: bytes) -> None:
        """Any `v1` signature made with any configured secret over the exact bytes received."""
        if not headers.signatures:
            raise SignatureRejected(
                "bad_signature", "webhook-signature holds no v1,<base64> signature"
            )
        prefix = f"{headers.webhook_id}.{headers.timestamp}.".encode()
        matched = False
        for key in self._keys:
            mac = hmac.new(key, prefix, hashlib.sha256)
            mac.update(body)
            expected = mac.digest()
            for candidate in headers.signatures:
                # No early exit: the time taken says nothing about which secret matched.
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureRejected(
                "bad_signature",
                "no webhook-signature matches the body with a configured secret",
            )


def _v1_signatures(header: str) -> tuple[bytes, ...]:
    found = []
    for item in header.split():
        version, _, encoded = item.partition(",")
        if version != "v1" or not encoded:
            continue  # other schemes (v1a) and junk are skipped, as the spec asks
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return tuple(found)
