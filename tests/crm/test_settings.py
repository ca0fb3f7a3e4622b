"""The CRM settings as one group: built from the flat environment, and valid as JSON too (the
shape a company's own CRM settings will take)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from service.crm.opencrm.settings import OpenCrmSettings
from service.crm.settings import CrmMode, CrmSettings
from service.settings import Settings, load_settings

OPENCRM = {"base_url": "https://acme.opencrm.test", "key": "k" * 16, "passkey": "p" * 16}


def test_every_group_field_is_an_environment_variable_with_its_default() -> None:
    flat = Settings.model_fields
    pairs: list[tuple[str, type[BaseModel], str]] = [
        ("crm_" + name, CrmSettings, name) for name in CrmSettings.model_fields
    ]
    pairs += [("opencrm_" + name, OpenCrmSettings, name) for name in OpenCrmSettings.model_fields]
    for env, group, name in pairs:
        if name == "opencrm":
            continue
        assert env in flat, env
        field = group.model_fields[name]
        # What the group requires (the URL, the credentials) is checked by mode in Settings.
        assert flat[env].default == (None if field.is_required() else field.default), env


def test_local_mode_has_no_opencrm_group() -> None:
    settings = load_settings()
    assert settings.crm == CrmSettings()
    assert settings.crm.opencrm is None


def test_opencrm_mode_groups_every_opencrm_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "CRM_MODE": "opencrm",
        "CRM_MAX_ATTEMPTS": "7",
        "CRM_RETRY_BASE_SECONDS": "2",
        "CRM_RETRY_MAX_SECONDS": "30",
        "CRM_READBACK_SECONDS": "0",
        "CRM_LEASE_SECONDS": "90",
        "OPENCRM_BASE_URL": "https://acme.opencrm.test",
        "OPENCRM_KEY": "key-0123456789abcdef",
        "OPENCRM_PASSKEY": "passkey-0123456789abcdef",
        "OPENCRM_PATH_TEMPLATE": "/rest/{method}",
        "OPENCRM_TIMEOUT_SECONDS": "20",
        "OPENCRM_MAX_ANSWER_BYTES": "100000",
        "OPENCRM_MAX_PAGES": "5",
        "OPENCRM_USER_AGENT": "acme-sync/1",
        "OPENCRM_STATUS_FIELD": "status",
        "OPENCRM_NUMBER_FIELD": "invoice_number",
        "OPENCRM_NUMBER_RECORD_FIELD": " ",
        "OPENCRM_OUTSTANDING_FIELD": "amount_outstanding",
        "OPENCRM_MODIFIED_FIELD": "modified_on",
        "OPENCRM_LIST_METHOD": "get_invoice_list_full",
        "OPENCRM_PAGE_SIZE": "50",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"LEDGERLINK_{name}", value)
    crm = load_settings().crm
    assert (crm.mode, crm.max_attempts, crm.retry_base_seconds, crm.retry_max_seconds) == (
        CrmMode.opencrm,
        7,
        2.0,
        30.0,
    )
    assert (crm.readback_seconds, crm.lease_seconds) == (0.0, 90.0)
    opencrm = crm.opencrm
    assert opencrm is not None
    assert opencrm.key.get_secret_value() == "key-0123456789abcdef"
    assert opencrm.passkey.get_secret_value() == "passkey-0123456789abcdef"
    assert opencrm.model_dump(exclude={"key", "passkey"}) == {
        "base_url": "https://acme.opencrm.test",
        "path_template": "/rest/{method}",
        "timeout_seconds": 20.0,
        "max_answer_bytes": 100000,
        "max_pages": 5,
        "user_agent": "acme-sync/1",
        "status_field": "status",
        "number_field": "invoice_number",
        "number_record_field": None,
        "outstanding_field": "amount_outstanding",
        "modified_field": "modified_on",
        "list_method": "get_invoice_list_full",
        "page_size": 50,
    }
    assert opencrm.number_record == "invoice_number"


def test_the_group_is_valid_json() -> None:
    crm = CrmSettings.model_validate_json(
        '{"mode": "opencrm", "readback_seconds": 60, "opencrm": {"base_url": '
        '"https://acme.opencrm.test", "key": "k", "passkey": "p", "number_field": "inv"}}'
    )
    assert crm.opencrm is not None
    assert (crm.readback_seconds, crm.opencrm.number_record, crm.opencrm.page_size) == (
        60.0,
        "inv",
        100,
    )
    assert "'k'" not in repr(crm)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"mode": "opencrm"}, "mode opencrm needs the opencrm settings"),
        ({"mode": "salesforce"}, "mode"),
        ({"opencrm": {**OPENCRM, "page_size": 500}}, "page_size"),
        ({"opencrm": {**OPENCRM, "user_agent": "python-requests/2"}}, "python or curl"),
        ({"opencrm": {**OPENCRM, "path_template": "api"}}, "{method}"),
        ({"opencrm": {"base_url": "https://acme.opencrm.test"}}, "key"),
        ({"lease_seconds": 15, "opencrm": OPENCRM}, "at least twice"),
        ({"mode": "local", "retries": 3}, "retries"),
    ],
)
def test_the_group_refuses_what_the_environment_refuses(data: object, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        CrmSettings.model_validate(data)
