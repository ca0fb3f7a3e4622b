from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.settings import SettingsError, load_settings
from tests.support.webhooks import TEST_SECRET


def test_defaults_match_the_design() -> None:
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.webhook_tolerance_seconds == 300
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.protected_statuses == ["Written Off", "Paid/Written Off"]
    assert settings.nominal_ranges == [("8100", "8199")]
    assert settings.base_currency == "GBP"
    assert settings.exchange_variance_ranges == [("7906", "7906")]
    assert settings.status_labels["paid_written_off"] == "Paid/Written Off"
    assert settings.crm_readback_seconds == 300
    assert settings.crm_lease_seconds == 60
    assert settings.opencrm_max_answer_bytes == 8 * 1024 * 1024
    assert settings.opencrm_max_pages == 1000
    assert settings.number_record_field == settings.opencrm_number_field == "invoice_no"


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("LEDGERLINK_PORT", "abc", "LEDGERLINK_PORT"),
        ("LEDGERLINK_PORT", "70000", "LEDGERLINK_PORT"),
        ("LEDGERLINK_CRM_MODE", "salesforce", "LEDGERLINK_CRM_MODE"),
        ("LEDGERLINK_WRITE_OFF_NOMINALS", "8199-8100", "ends before it starts"),
        ("LEDGERLINK_WRITE_OFF_PATTERN", "(unclosed", "LEDGERLINK_WRITE_OFF_PATTERN"),
        ("LEDGERLINK_BASE_CURRENCY", "gbp", "LEDGERLINK_BASE_CURRENCY"),
        ("LEDGERLINK_EXCHANGE_VARIANCE_NOMINALS", "79O6", "LEDGERLINK_EXCHANGE_VARIANCE_NOMINALS"),
        ("LEDGERLINK_WEBHOOK_SECRETS", "plainsecret", "whsec_"),
        ("LEDGERLINK_API_KEYS", "not json", "LEDGERLINK_API_KEYS"),
        ("LEDGERLINK_API_KEYS", '{"short": ["read"]}', "shorter than 16"),
        ("LEDGERLINK_API_KEYS", '{"0123456789abcdefXX": ["root"]}', "read/write/admin"),
        ("LEDGERLINK_STATUS_LABELS", '{"bogus": "X"}', "unknown derived states"),
        ("LEDGERLINK_DATABASE_URL", "mysql://x", "postgresql://"),
        ("LEDGERLINK_OPENCRM_USER_AGENT", "python-requests/2.32", "LEDGERLINK_OPENCRM_USER_AGENT"),
        ("LEDGERLINK_OPENCRM_USER_AGENT", "curl/8.5", "python or curl"),
        ("LEDGERLINK_OPENCRM_PAGE_SIZE", "500", "LEDGERLINK_OPENCRM_PAGE_SIZE"),
        ("LEDGERLINK_CRM_READBACK_SECONDS", "-1", "LEDGERLINK_CRM_READBACK_SECONDS"),
        ("LEDGERLINK_CRM_LEASE_SECONDS", "15", "twice OPENCRM_TIMEOUT_SECONDS"),
        ("LEDGERLINK_OPENCRM_MAX_PAGES", "1", "LEDGERLINK_OPENCRM_MAX_PAGES"),
        ("LEDGERLINK_OPENCRM_MAX_ANSWER_BYTES", "100", "LEDGERLINK_OPENCRM_MAX_ANSWER_BYTES"),
    ],
)
def test_bad_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_the_number_field_has_a_query_name_and_a_record_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGERLINK_OPENCRM_NUMBER_FIELD", "invoice_number")
    monkeypatch.setenv("LEDGERLINK_OPENCRM_NUMBER_RECORD_FIELD", "invoice_no")
    settings = load_settings()
    assert (settings.opencrm_number_field, settings.number_record_field) == (
        "invoice_number",
        "invoice_no",
    )


def test_opencrm_mode_requires_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERLINK_CRM_MODE", "opencrm")
    with pytest.raises(SettingsError, match="LEDGERLINK_OPENCRM_BASE_URL"):
        load_settings()


def test_api_key_scopes_imply_lower_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LEDGERLINK_API_KEYS",
        '{"0123456789abcdefAA": {"name": "ops", "scopes": ["admin"]},'
        ' "0123456789abcdefBB": ["read"]}',
    )
    keys = load_settings().parsed_api_keys
    assert keys["0123456789abcdefAA"].name == "ops"
    assert keys["0123456789abcdefAA"].scopes == {"read", "write", "admin"}
    assert keys["0123456789abcdefBB"].scopes == {"read"}
    assert keys["0123456789abcdefBB"].name.startswith("key-")


def test_status_labels_merge_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERLINK_STATUS_LABELS", '{"paid": "Settled"}')
    labels = load_settings().status_labels
    assert labels["paid"] == "Settled"
    assert labels["unpaid"] == "Unpaid"


def test_secrets_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERLINK_WEBHOOK_SECRETS", "whsec_c2VjcmV0LXZhbHVlLTEyMzQ=")
    monkeypatch.setenv("LEDGERLINK_OPENCRM_PASSKEY", "very-secret-passkey")
    text = repr(load_settings())
    assert "c2VjcmV0" not in text
    assert "very-secret-passkey" not in text


def test_cli_refuses_bad_setting_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env={"LEDGERLINK_PORT": "abc", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "ledgerlink: invalid setting LEDGERLINK_PORT: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def _dotenv_example() -> dict[str, str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return dict(pairs)


@pytest.mark.parametrize(
    ("env", "template", "variable"),
    [
        (
            "LEDGERLINK_DATABASE_URL",
            "postgresql://ledgerlink:{}@db/ledgerlink",
            "POSTGRES_PASSWORD",
        ),
        ("LEDGERLINK_WEBHOOK_SECRETS", "{}", "LEDGERLINK_WEBHOOK_SECRET"),
        ("LEDGERLINK_API_KEYS", '{{"{}": ["admin"]}}', "LEDGERLINK_ADMIN_API_KEY"),
        ("LEDGERLINK_OPENCRM_KEY", "CHANGE-ME-opencrm-key", None),
        ("LEDGERLINK_CONSOLE_SESSION_SECRET", "{}", "LEDGERLINK_CONSOLE_SESSION_SECRET"),
    ],
)
def test_start_up_refuses_published_example_secrets_outside_dev(
    monkeypatch: pytest.MonkeyPatch, env: str, template: str, variable: str | None
) -> None:
    from typer.testing import CliRunner

    from service import cli

    value = template.format(_dotenv_example()[variable]) if variable else template
    for name in [n for n in os.environ if n.startswith("LEDGERLINK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(env, value)
    # Valid in shape: only the refusal stops it.
    assert load_settings() is not None
    for command in (["migrate"], ["worker"]):
        result = CliRunner().invoke(cli.app, command)
        assert result.exit_code == 2, result.output
        assert f"invalid setting {env}: it holds an example value" in result.output
    # `serve --dev` (make run) may use them.
    assert cli._settings(dev=True) is not None


def test_real_secrets_are_not_mistaken_for_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import refuse_example_secrets

    monkeypatch.setenv("LEDGERLINK_WEBHOOK_SECRETS", TEST_SECRET)
    monkeypatch.setenv("LEDGERLINK_API_KEYS", '{"ll_Zq81nV0c3XfS7yKpA2mR": ["admin"]}')
    refuse_example_secrets(load_settings())
