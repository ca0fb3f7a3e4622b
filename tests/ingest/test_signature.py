"""Standard Webhooks verification, without HTTP: edges of the tolerance, rotation, header
shapes, and interoperability with the standardwebhooks package's own signer."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from service.ingest.signature import SignatureRejected, Verifier, decode_secret
from tests.support.webhooks import OLD_SECRET, TEST_SECRET, sign

NOW = 1_800_000_000
BODY = b'{"postings": []}'


def verifier(*secrets: str, tolerance: int = 300) -> Verifier:
    return Verifier([SecretStr(s) for s in secrets], tolerance)


def check(
    v: Verifier, ts: int, signature: str, *, msg_id: str = "msg_1", body: bytes = BODY
) -> None:
    headers = v.check_headers(msg_id, str(ts), signature, now=NOW)
    v.verify(headers, body)


def reason(v: Verifier, ts: int, signature: str, **kw: object) -> str:
    with pytest.raises(SignatureRejected) as caught:
        check(v, ts, signature, **kw)  # type: ignore[arg-type]
    return caught.value.reason


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamps_within_tolerance_are_accepted(offset: int) -> None:
    ts = NOW + offset
    check(verifier(TEST_SECRET), ts, sign(TEST_SECRET, "msg_1", ts, BODY))


@pytest.mark.parametrize(
    ("offset", "expected"), [(-301, "stale_timestamp"), (301, "future_timestamp")]
)
def test_timestamps_just_outside_tolerance_are_rejected(offset: int, expected: str) -> None:
    ts = NOW + offset
    assert reason(verifier(TEST_SECRET), ts, sign(TEST_SECRET, "msg_1", ts, BODY)) == expected


def test_tolerance_is_configurable() -> None:
    ts = NOW - 30
    signature = sign(TEST_SECRET, "msg_1", ts, BODY)
    check(verifier(TEST_SECRET, tolerance=30), ts, signature)
    assert reason(verifier(TEST_SECRET, tolerance=29), ts, signature) == "stale_timestamp"


def test_rotation_accepts_old_and_new_secret_and_nothing_else() -> None:
    v = verifier(TEST_SECRET, OLD_SECRET)
    check(v, NOW, sign(TEST_SECRET, "msg_1", NOW, BODY))
    check(v, NOW, sign(OLD_SECRET, "msg_1", NOW, BODY))
    stranger = "whsec_" + "c3RyYW5nZXItc2VjcmV0LTAxMjM0NTY3ODk="
    assert reason(v, NOW, sign(stranger, "msg_1", NOW, BODY)) == "bad_signature"


def test_any_of_several_signatures_in_the_header_may_match() -> None:
    good = sign(TEST_SECRET, "msg_1", NOW, BODY)
    wrong = sign(OLD_SECRET, "msg_1", NOW, BODY)
    check(verifier(TEST_SECRET), NOW, f"{wrong} v1a,c2lnbmF0dXJl junk {good}")


@pytest.mark.parametrize(
    "tamper",
    [
        {"body": BODY + b" "},
        {"msg_id": "msg_2"},
    ],
)
def test_signature_covers_id_and_exact_body(tamper: dict[str, object]) -> None:
    signature = sign(TEST_SECRET, "msg_1", NOW, BODY)
    assert reason(verifier(TEST_SECRET), NOW, signature, **tamper) == "bad_signature"


def test_signature_covers_the_timestamp() -> None:
    signature = sign(TEST_SECRET, "msg_1", NOW, BODY)
    assert reason(verifier(TEST_SECRET), NOW + 1, signature) == "bad_signature"


@pytest.mark.parametrize(
    "signature", ["", "v1,", "v1,not base64!", "v2," + "A" * 44, "garbage", "v1a,abc"]
)
def test_malformed_signature_headers_are_rejected_not_crashed(signature: str) -> None:
    assert reason(verifier(TEST_SECRET), NOW, signature) in {"bad_signature", "missing_headers"}


@pytest.mark.parametrize(
    ("msg_id", "ts", "expected"),
    [
        (None, str(NOW), "missing_headers"),
        ("msg_1", None, "missing_headers"),
        ("msg_1", "soon", "malformed_headers"),
        ("msg_1", "1.8e9", "malformed_headers"),
        ("msg_1", "-5", "malformed_headers"),
        ("x" * 256, str(NOW), "malformed_headers"),
    ],
)
def test_header_shapes(msg_id: str | None, ts: str | None, expected: str) -> None:
    with pytest.raises(SignatureRejected) as caught:
        verifier(TEST_SECRET).check_headers(msg_id, ts, "v1,abc", now=NOW)
    assert caught.value.reason == expected


def test_body_with_invalid_utf8_is_verified_as_bytes() -> None:
    body = b'{"x": "\xff\xfe"}'
    check(verifier(TEST_SECRET), NOW, sign(TEST_SECRET, "msg_1", NOW, body), body=body)


def test_signatures_of_the_standardwebhooks_package_verify() -> None:
    signer = Webhook(TEST_SECRET)
    when = dt.datetime.fromtimestamp(NOW, tz=dt.UTC)
    signature = signer.sign("msg_std", when, BODY.decode())
    check(verifier(TEST_SECRET), NOW, signature, msg_id="msg_std")


def test_secret_is_read_as_the_package_reads_it() -> None:
    assert decode_secret(TEST_SECRET) == Webhook(TEST_SECRET)._whsecret
    with pytest.raises(ValueError, match="base64"):
        decode_secret("whsec_")
