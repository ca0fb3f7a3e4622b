"""Signing test deliveries the way the Sage exporter does (Standard Webhooks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

import orjson

TEST_SECRET = "whsec_" + base64.b64encode(b"ledgerlink-test-secret-0123456789").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"ledgerlink-old-secret-9876543210").decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_request(
    payload: object,
    *,
    secret: str = TEST_SECRET,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }
    return body, headers
