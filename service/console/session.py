"""Console sessions: an API key signs a person in; the browser holds only a signed cookie.

The cookie carries a fingerprint of the key (an HMAC under the session secret), never the
key, so neither the cookie, a URL nor browser storage ever holds it; the key's scopes are
looked up on every request, so removing a key from LEDGERLINK_API_KEYS ends its sessions.
The cookie is HttpOnly, SameSite=Strict, Secure behind TLS, and expires after
LEDGERLINK_CONSOLE_SESSION_MINUTES (the signature carries its time; the browser's expiry
alone is not trusted). Every form that changes something carries a CSRF token derived from
the session's random nonce (a new nonce at every sign-in).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from service.errors import Forbidden
from service.logging import get_logger
from service.settings import Principal, Settings

log = get_logger(__name__)

COOKIE = "ledgerlink_console"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class ConsoleSession:
    nonce: str
    principal: Principal | None


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class SessionKeys:
    """The server side of sessions: the secret, the signer, the key fingerprints."""

    def __init__(self, settings: Settings) -> None:
        configured = settings.console_session_secret
        if configured is None:
            log.warning(
                "console.ephemeral_secret",
                detail="LEDGERLINK_CONSOLE_SESSION_SECRET is unset: console sessions end when "
                "this process stops and are not shared between replicas",
            )
        self.secret = (
            configured.get_secret_value() if configured else secrets.token_urlsafe(32)
        ).encode()
        self.settings = settings
        self.max_age = settings.console_session_minutes * 60
        self.signer = URLSafeTimedSerializer(self.secret, salt="ledgerlink-console-session")

    def fingerprint(self, api_key: str) -> str:
        return _mac(self.secret, f"api-key\n{api_key}")

    def csrf_token(self, session: ConsoleSession) -> str:
        return _mac(self.secret, f"csrf\n{session.nonce}")

    def read(self, request: Request) -> ConsoleSession | None:
        """The session the cookie names, or None (absent, forged, expired)."""
        raw = request.cookies.get(COOKIE)
        if raw is None:
            return None
        try:
            data = self.signer.loads(raw, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        fingerprint = data.get("k")
        principal = self._principal(fingerprint) if isinstance(fingerprint, str) else None
        if fingerprint is not None and principal is None:
            return None  # the key was removed from the configuration
        return ConsoleSession(nonce=data["n"], principal=principal)

    def _principal(self, fingerprint: str) -> Principal | None:
        found: Principal | None = None
        for key in self.settings.parsed_api_keys.values():
            # Every key is compared, always: the time taken says nothing about which matched.
            if hmac.compare_digest(self.fingerprint(key.secret), fingerprint):
                found = Principal(name=key.name, scopes=key.scopes)
        return found

    def new_session(self, *, api_key: str | None) -> tuple[ConsoleSession, str]:
        """A new session (a new nonce, so a new CSRF token) and its signed cookie value."""
        nonce = secrets.token_urlsafe(24)
        fingerprint = None if api_key is None else self.fingerprint(api_key)
        return ConsoleSession(nonce=nonce, principal=None), self.signer.dumps(
            {"n": nonce, "k": fingerprint}
        )

    def set_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE,
            value,
            max_age=self.max_age,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=behind_tls(request),
        )

    def clear(self, request: Request, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=behind_tls(request)
        )

    def check_csrf(self, session: ConsoleSession | None, presented: str | None) -> None:
        if session is None or presented is None:
            raise Forbidden(CSRF_REFUSED)
        if not hmac.compare_digest(self.csrf_token(session), presented):
            raise Forbidden(CSRF_REFUSED)


CSRF_REFUSED = (
    "this form was not sent from a page of this console session (missing or stale CSRF "
    "token); reload the page and submit it again"
)


def behind_tls(request: Request) -> bool:
    """Served over HTTPS, directly or behind a TLS-terminating proxy."""
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip().lower() == "https"
