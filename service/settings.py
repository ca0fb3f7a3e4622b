"""Every setting of the service, read once from the environment (prefix LEDGERLINK_)."""

from __future__ import annotations

from copy import copy
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.crm.opencrm.settings import ListMethod, OpenCrmSettings
from service.crm.settings import CrmMode, CrmSettings
from service.keys import ApiKey, parse_api_keys
from service.ledger.settings import LedgerSettings, comma_separated


def _grouped(group: type[BaseModel], name: str) -> Any:
    """A field of a settings group as a flat environment field: the group's default, bounds and
    checks, defined once for both."""
    return copy(group.model_fields[name])


class Settings(BaseSettings, LedgerSettings):
    """The process's settings; the ledger's (service.ledger.settings) are declared there and
    handed on together as `ledger`."""

    model_config = SettingsConfigDict(
        env_prefix="LEDGERLINK_",
        extra="ignore",
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    database_url: SecretStr | None = None
    data_dir: Path = Path(".data")

    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # All request bodies being received at once, together: past it a request gets 503 with
    # Retry-After instead of more memory (the API pod's limit is 512 MiB).
    max_inflight_body_bytes: int = Field(default=48 * 1024 * 1024, ge=1024)

    api_keys: SecretStr | None = None

    # The CRM settings, flat as environment variables (in the order they always were, which
    # is the order their errors are found in). CRM code is handed them grouped (`crm` below),
    # and each one's default, bounds and checks are defined in its group. The URL and the
    # credentials are required in opencrm mode only (checked below).
    crm_mode: CrmMode = _grouped(CrmSettings, "mode")
    opencrm_base_url: str | None = None
    opencrm_key: SecretStr | None = None
    opencrm_passkey: SecretStr | None = None
    opencrm_outstanding_field: str | None = _grouped(OpenCrmSettings, "outstanding_field")
    opencrm_status_field: str = _grouped(OpenCrmSettings, "status_field")
    opencrm_number_field: str = _grouped(OpenCrmSettings, "number_field")
    opencrm_number_record_field: str | None = _grouped(OpenCrmSettings, "number_record_field")
    opencrm_modified_field: str | None = _grouped(OpenCrmSettings, "modified_field")
    opencrm_list_method: ListMethod = _grouped(OpenCrmSettings, "list_method")
    opencrm_page_size: int = _grouped(OpenCrmSettings, "page_size")
    opencrm_user_agent: str | None = _grouped(OpenCrmSettings, "user_agent")
    opencrm_timeout_seconds: float = _grouped(OpenCrmSettings, "timeout_seconds")
    opencrm_max_answer_bytes: int = _grouped(OpenCrmSettings, "max_answer_bytes")
    opencrm_max_pages: int = _grouped(OpenCrmSettings, "max_pages")
    opencrm_path_template: str = _grouped(OpenCrmSettings, "path_template")
    crm_max_attempts: int = _grouped(CrmSettings, "max_attempts")
    crm_retry_base_seconds: float = _grouped(CrmSettings, "retry_base_seconds")
    crm_retry_max_seconds: float = _grouped(CrmSettings, "retry_max_seconds")
    crm_readback_seconds: float = _grouped(CrmSettings, "readback_seconds")
    crm_lease_seconds: float = _grouped(CrmSettings, "lease_seconds")

    console_session_secret: SecretStr | None = None
    console_session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    docs_enabled: bool = True
    run_worker: bool = True
    worker_batch_size: int = Field(default=2000, ge=1, le=100_000)
    worker_sweep_seconds: float = Field(default=5.0, gt=0)
    # `ledgerlink worker` serves /metrics and /healthz here, on LEDGERLINK_HOST (9464: the
    # port Prometheus exporters conventionally use; an API process reports on its own port).
    worker_metrics_port: int = Field(default=9464, ge=1, le=65535)
    bulk_sync_limit: int = Field(default=1000, ge=1)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    # The proxies whose X-Forwarded-For gives the client's address (comma-separated addresses
    # or networks, `*` for every peer); unset: uvicorn's FORWARDED_ALLOW_IPS, else 127.0.0.1.
    forwarded_allow_ips: str | None = None

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _comma_separated_secrets(cls, value: Any) -> Any:
        return comma_separated(value)

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            if not secret.get_secret_value().startswith("whsec_"):
                raise ValueError("each secret must start with 'whsec_'")
        return value

    @field_validator("console_session_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgresql+asyncpg://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _body_budget_fits_a_body(self) -> Settings:
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                "MAX_INFLIGHT_BODY_BYTES must be at least MAX_BODY_BYTES, or a body of the "
                "largest size allowed could never be received"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> Settings:
        if self.crm_lease_seconds < 2 * self.opencrm_timeout_seconds:
            raise ValueError(
                "CRM_LEASE_SECONDS must be at least twice OPENCRM_TIMEOUT_SECONDS: a delivery "
                "makes two or three calls, each up to the timeout, within its lease"
            )
        return self

    @model_validator(mode="after")
    def _opencrm_complete(self) -> Settings:
        if self.crm_mode is CrmMode.opencrm:
            missing = [
                name
                for name, val in (
                    ("LEDGERLINK_OPENCRM_BASE_URL", self.opencrm_base_url),
                    ("LEDGERLINK_OPENCRM_KEY", self.opencrm_key),
                    ("LEDGERLINK_OPENCRM_PASSKEY", self.opencrm_passkey),
                )
                if not val
            ]
            if missing:
                raise ValueError(f"CRM_MODE=opencrm needs {', '.join(missing)}")
        return self

    @cached_property
    def parsed_api_keys(self) -> dict[str, ApiKey]:
        if self.api_keys is None:
            return {}
        return parse_api_keys(self.api_keys.get_secret_value())

    @cached_property
    def ledger(self) -> LedgerSettings:
        """The ledger's settings alone, for code that needs nothing else."""
        return LedgerSettings.model_construct(
            **{name: getattr(self, name) for name in LedgerSettings.model_fields}
        )

    @property
    def number_record_field(self) -> str:
        return self.opencrm_number_record_field or self.opencrm_number_field

    @cached_property
    def crm(self) -> CrmSettings:
        """The CRM settings grouped: `crm_X` is `crm.X`, `opencrm_X` is `crm.opencrm.X` (present
        in opencrm mode only)."""
        opencrm = None
        if self.crm_mode is CrmMode.opencrm:
            opencrm = OpenCrmSettings.model_validate(self._flat(OpenCrmSettings, "opencrm_"))
        return CrmSettings.model_validate({**self._flat(CrmSettings, "crm_"), "opencrm": opencrm})

    def _flat(self, group: type[BaseModel], prefix: str) -> dict[str, Any]:
        """The values of a group's fields, from the flat fields named `prefix` + the field."""
        fields = type(self).model_fields
        return {
            name: getattr(self, prefix + name)
            for name in group.model_fields
            if prefix + name in fields
        }


class SettingsError(Exception):
    """A setting is wrong; the message is one line naming it."""


# The example secrets of .env.example (shaped like real ones, so the file works as it stands)
# and the CHANGE-ME marker of deploy/k8s/secret.example.yaml. Anyone can read them in the
# repository, so only `serve --dev` may run with them.
EXAMPLE_SECRETS: tuple[str, ...] = (
    "pg_example_5c8e2f7a9b1d4e60",
    "whsec_ZXhhbXBsZS13ZWJob29rLXNlY3JldC03ZDQxYzllMmE2ZjM=",
    "ll_example_3f9a6c1e8d2b7f40a5e9c3d1",
    "console_example_9d2f4b7a1c6e83f05a2d7c4b9e1f6a38",
    "CHANGE-ME",
)


def refuse_example_secrets(settings: Settings) -> None:
    """Stop start-up, naming the setting, when a secret is still a published example value."""
    secrets: list[tuple[str, SecretStr | None]] = [
        ("DATABASE_URL", settings.database_url),
        ("API_KEYS", settings.api_keys),
        ("OPENCRM_KEY", settings.opencrm_key),
        ("OPENCRM_PASSKEY", settings.opencrm_passkey),
        ("CONSOLE_SESSION_SECRET", settings.console_session_secret),
        *(("WEBHOOK_SECRETS", secret) for secret in settings.webhook_secrets),
    ]
    for name, secret in secrets:
        value = secret.get_secret_value() if secret is not None else ""
        if any(example in value for example in EXAMPLE_SECRETS):
            raise SettingsError(
                f"invalid setting LEDGERLINK_{name}: it holds an example value published with "
                "ledgerlink (.env.example, secret.example.yaml); generate a real one "
                "(only `ledgerlink serve --dev` accepts examples)"
            )


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        setting = f"LEDGERLINK_{str(first['loc'][0]).upper()}" if first["loc"] else "settings"
        message = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {setting}: {message}") from None
