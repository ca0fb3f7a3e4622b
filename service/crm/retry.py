"""When a failed CRM call is tried again: the backoff shared by deliveries and the read-back."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from service.crm.settings import CrmSettings

# While halted on refused credentials, try again this often (fixing the CRM's side, such as
# re-enabling API access, needs no restart; new credentials come with a restart anyway).
AUTH_RECHECK_SECONDS = 60.0
# A long Retry-After is honoured up to this.
MAX_RETRY_AFTER_SECONDS = 3600.0
DEFAULT_LEASE_SECONDS = 60.0


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, a cap on attempts, Retry-After honoured."""

    max_attempts: int
    base_seconds: float
    max_seconds: float
    auth_recheck_seconds: float = AUTH_RECHECK_SECONDS
    max_retry_after_seconds: float = MAX_RETRY_AFTER_SECONDS
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, crm: CrmSettings) -> RetryPolicy:
        return cls(
            max_attempts=crm.max_attempts,
            base_seconds=crm.retry_base_seconds,
            max_seconds=crm.retry_max_seconds,
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`, after `attempt` failed ones (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_seconds)
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempt - 1, 0))
        return self.rng.uniform(0.0, ceiling)
