"""Every advisory lock the service takes, so no two features ever share a key.

PostgreSQL keeps advisory locks taken with two int4 keys apart from those taken with one
bigint, so the two forms cannot meet. The two-key locks are named by their first key, a
namespace spelling four letters ("LL" and two of the feature's), the second key being a hash
of what is locked. The one-key locks are hashes of a text that names the feature first.
All are transaction-level (`pg_*advisory_xact_lock`): released at commit or rollback, never
left behind by a killed process.
"""

from __future__ import annotations

import hashlib

# A Global Update job, held by the worker running it for the whole of its transaction: the
# SKIP LOCKED of the jobs queue (the job row itself stays free for its progress). Second key:
# hashtext of the job id.
JOBS = 0x4C4C4A42  # "LLJB"
# An invoice the CRM dispatcher claims, for its claiming transaction. Second key: hashtext of
# the invoice number.
CRM_INVOICE = 0x4C4C4352  # "LLCR"
# Ingest mirroring invoice numbers: one of MIRROR_SLOTS slots per number (its hash), taken in
# slot order. A lock per number ran PostgreSQL's shared lock table out
# (max_locks_per_transaction x connections, for everyone) under concurrent batches of new
# invoices; two batches whose numbers share a slot merely take turns.
MIRROR = 0x4C4C494E  # "LLIN"
MIRROR_SLOTS = 64
# The console's sign-in back-off, one sign-in at a time per client address. Second key:
# hashtext of the address.
SIGN_IN = 0x4C4C5349  # "LLSI"


def webhook_delivery_sql(webhook_id: str) -> str:
    """The one-key lock of a webhook delivery (`webhook_id`, an SQL expression): held while
    it is applied, so a second delivery of it answers "in flight" at once."""
    return f"hashtextextended('ledgerlink.webhook:' || {webhook_id}, 0)"


def idempotency_key(actor: str, key: str) -> int:
    """The one-key lock of a Global Update's Idempotency-Key, scoped by the API key's name:
    held until the request's transaction ends, so a second request with the same key meanwhile
    does not get it."""
    digest = hashlib.sha256(f"idempotency\n{actor}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
