"""A claim held without a transaction: what a worker calling the CRM holds meanwhile."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """A claim on outbox messages (or the read-back cursor) held without a transaction: the
    rows carry `token` and are not due again for `seconds`; an outcome is recorded only while
    they still carry it."""

    token: uuid.UUID
    seconds: float

    @classmethod
    def new(cls, seconds: float) -> Lease:
        return cls(uuid.uuid4(), seconds)
