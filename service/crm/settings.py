"""The CRM feature's settings, as one model that CRM code is handed (never the whole Settings).

Built from the LEDGERLINK_CRM_* and LEDGERLINK_OPENCRM_* variables today
(`service.settings.Settings.crm`); a plain model, valid as a JSON object too, so that each
company can carry its own. A CRM's own settings are a group of their own, present when the mode
names that CRM.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.crm.opencrm.settings import OpenCrmSettings


class CrmMode(StrEnum):
    # Nothing is called: every outbox message counts as delivered.
    local = "local"
    opencrm = "opencrm"


class CrmSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: CrmMode = CrmMode.local
    max_attempts: int = Field(default=20, ge=1, le=100)
    # Full-jitter exponential backoff between delivery attempts: up to base * 2^(n-1), capped.
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=900.0, gt=0)
    # How often statuses are read back from the CRM (0: never).
    readback_seconds: float = Field(default=300.0, ge=0)
    # How long outbox messages (or the read-back cursor) stay claimed by the worker calling the
    # CRM for them, with no transaction open meanwhile; a killed worker's claim runs out then.
    lease_seconds: float = Field(default=60.0, gt=0)
    opencrm: OpenCrmSettings | None = None

    @model_validator(mode="after")
    def _vendor_settings_present(self) -> CrmSettings:
        if self.mode is CrmMode.opencrm and self.opencrm is None:
            raise ValueError("mode opencrm needs the opencrm settings")
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> CrmSettings:
        if self.opencrm is not None and self.lease_seconds < 2 * self.opencrm.timeout_seconds:
            raise ValueError(
                "lease_seconds must be at least twice opencrm.timeout_seconds: a delivery makes "
                "two or three calls, each up to the timeout, within its lease"
            )
        return self
