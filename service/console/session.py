"""Console sessions: an API key signs a person in; the browser holds a signed cookie naming a
session the server keeps (table console_sessions).

The cookie carries the session's random id and a fingerprint of the key (an HMAC under the
session secret), never the key, so neither the cookie, a URL nor browser storage ever holds
it. The server's row holds the SHA-256 of the id, the key's fingerprint and the expiry; every
request needs a row that is neither signed out nor expired, whose key is still configured (the
key's scopes are looked up each time, so removing a key from LEDGERLINK_API_KEYS ends its
sessions at once, and a new session secret ends every session). Signing out marks the row, so
every other copy of the cookie stops working too, on every replica.
The cookie is HttpOnly, SameSite=Strict, Secure behind TLS, and expires after
LEDGERLINK_CONSOLE_SESSION_MINUTES (the signature carries its time too; the browser's expiry
alone is not trusted). Every form that changes something carries a CSRF token derived from
the session's random id (a new id at every sign-in); before sign-in, from a random nonce the
cookie carries (no row: a visitor costs no write).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.ext.asyncio import AsyncConnection

from service.console import repository, throttle
from service.errors import Forbidden
from service.keys import ApiKey, Principal
from service.logging import get_logger
from service.settings import Settings

log = get_logger(__name__)

COOKIE = "ledgerlink_console"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class ConsoleSession:
    """What a cookie says. `nonce` is the session id once signed in (`fingerprint` set); the
    principal is None before sign-in or when the key is no longer configured."""

    nonce: str
    fingerprint: str | None
    principal: Principal | None

    @property
    def id_hash(self) -> str:
        return hashlib.sha256(self.nonce.encode()).hexdigest()


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
        # The sign-in's back-off, as far as this process has seen it (throttle.py).
        self.waiting = throttle.Waiting()

    def fingerprint(self, api_key: str) -> str:
        return _mac(self.secret, f"api-key\n{api_key}")

    def csrf_token(self, session: ConsoleSession) -> str:
        return _mac(self.secret, f"csrf\n{session.nonce}")

    def read(self, request: Request) -> ConsoleSession | None:
        """What the cookie claims, or None (absent, forged, too old). A signed-in claim still
        needs `is_live` (the server's row) before it is believed."""
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
        if fingerprint is not None and not isinstance(fingerprint, str):
            return None
        principal = None if fingerprint is None else self._principal(fingerprint)
        return ConsoleSession(nonce=data["n"], fingerprint=fingerprint, principal=principal)

    def _principal(self, fingerprint: str) -> Principal | None:
        found: Principal | None = None
        for key in self.settings.parsed_api_keys.values():
            # Every key is compared, always: the time taken says nothing about which matched.
            if hmac.compare_digest(self.fingerprint(key.secret), fingerprint):
                found = Principal(name=key.name, scopes=key.scopes)
        return found

    def new_session(self, *, api_key: str | None) -> tuple[ConsoleSession, str]:
        """A new session (a new random id, so a new CSRF token) and its signed cookie value;
        with a key, `start` must store it before the cookie is of any use."""
        nonce = secrets.token_urlsafe(32)
        fingerprint = None if api_key is None else self.fingerprint(api_key)
        return ConsoleSession(nonce=nonce, fingerprint=fingerprint, principal=None), (
            self.signer.dumps({"n": nonce, "k": fingerprint})
        )

    async def start(self, conn: AsyncConnection, key: ApiKey) -> str:
        """A session signed in with `key`, stored; the cookie value that names it."""
        session, cookie = self.new_session(api_key=key.secret)
        assert session.fingerprint is not None
        await repository.insert_session(
            conn,
            id_hash=session.id_hash,
            key_fingerprint=session.fingerprint,
            key_name=key.name[:100],
            minutes=self.settings.console_session_minutes,
        )
        return cookie

    async def sign_in(self, conn: AsyncConnection, previous: ConsoleSession, key: ApiKey) -> str:
        """A new session for `key` (its cookie value); the one this browser had, if any, ends:
        a new id at every sign-in. Sessions past their expiry are deleted, a few each time."""
        await self.end(conn, previous)
        await repository.delete_ended_sessions(conn, limit=throttle.CLEANUP_BATCH)
        return await self.start(conn, key)

    @staticmethod
    async def is_live(conn: AsyncConnection, session: ConsoleSession) -> bool:
        """The server started this session, and it is neither signed out nor expired."""
        if session.fingerprint is None or session.principal is None:
            return False
        stored = await repository.live_session_key(conn, session.id_hash)
        return stored is not None and hmac.compare_digest(stored, session.fingerprint)

    @staticmethod
    async def end(conn: AsyncConnection, session: ConsoleSession) -> None:
        """Sign out: no copy of the cookie opens anything any more, on any replica."""
        if session.fingerprint is not None:
            await repository.revoke_session(conn, session.id_hash)

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
