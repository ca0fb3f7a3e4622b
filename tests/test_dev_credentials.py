"""`make run`'s development credentials: a webhook secret both sides can decode, kept between
runs, and a console session secret so sign-ins survive a restart."""

from __future__ import annotations

from pathlib import Path

from service.cli import DEV_CONSOLE_SECRET_FILE, DEV_SECRET_FILE, _dev_credentials
from service.ingest.signature import decode_secret
from service.settings import load_settings


def test_every_generated_webhook_secret_decodes(tmp_path: Path) -> None:
    # A URL-safe token is base64 only by chance (about one in four failed); standard base64 of
    # random bytes always decodes, to the 24 bytes it was made from.
    for i in range(300):
        settings = load_settings(data_dir=tmp_path / str(i))
        secret = _dev_credentials(settings)["webhook_secrets"]
        assert isinstance(secret, str)
        assert len(decode_secret(secret)) == 24


def test_credentials_are_kept_between_runs(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    first = _dev_credentials(settings)
    again = _dev_credentials(settings)
    assert first == again
    assert (tmp_path / DEV_CONSOLE_SECRET_FILE).read_text().strip() == first[
        "console_session_secret"
    ]
    assert load_settings(**again).console_session_secret is not None


def test_a_stored_secret_that_does_not_decode_is_replaced(tmp_path: Path) -> None:
    # What earlier versions could write: URL-safe text with 29 base64 characters.
    (tmp_path / DEV_SECRET_FILE).write_text("whsec_VyBUGK-wieWCG34iQLXgJein_bwx_GSh\n")
    secret = _dev_credentials(load_settings(data_dir=tmp_path))["webhook_secrets"]
    assert isinstance(secret, str)
    decode_secret(secret)
    assert (tmp_path / DEV_SECRET_FILE).read_text().strip() == secret


def test_configured_secrets_are_left_alone(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        api_keys='{"ll_configured_key_0000000": ["admin"]}',
        webhook_secrets="whsec_" + "A" * 32,
        console_session_secret="c" * 40,
    )
    assert _dev_credentials(settings) == {}
    assert list(tmp_path.iterdir()) == []
