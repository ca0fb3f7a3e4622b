"""Signing in to the console with an API key, and out.

The sign-in form's CSRF token comes from a nonce the visitor's cookie carries; its key is
checked only once the address has waited out its back-off (throttle.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from service.auth import find_key
from service.console import throttle
from service.console.access import CsrfToken, SignOutSender, session_keys
from service.console.links import path_for
from service.console.pages import redirect, render
from service.console.route import Answered, console_router
from service.console.session import ConsoleSession, SessionKeys
from service.deps import ConnDep, SettingsDep
from service.logging import get_logger

log = get_logger(__name__)
router = console_router()

HOME = "/console/"


class SignInFields(BaseModel):
    api_key: str | None = None
    # Where to go after signing in: the page that asked for it.
    next: str | None = None


@dataclass(frozen=True)
class SignInAttempt:
    """The sign-in form as sent, its CSRF token checked against the visitor's cookie."""

    request: Request
    keys: SessionKeys
    session: ConsoleSession
    fields: SignInFields
    client: str

    @property
    def next_url(self) -> str:
        return local(self.fields.next or HOME)

    def again(self, status: int, error: str, wait: int = 0) -> Response:
        """The sign-in page again, with `error`; after a wrong key, how long to wait."""
        if wait:
            error += f" Too many wrong keys from your address: wait {_duration(wait)} before "
            error += "trying again."
        return render(
            self.request,
            "sign_in.html",
            status,
            headers={"Retry-After": str(wait)} if wait else None,
            csrf=self.keys.csrf_token(self.session),
            next=self.next_url,
            error=error.strip(),
        )

    def must_wait(self, seconds: int) -> Answered:
        """Refused unread: this address sent too many wrong keys and has not waited yet."""
        self.keys.waiting.note(self.client, seconds)
        return Answered(self.again(429, "", seconds))


async def sign_in_attempt(
    request: Request,
    fields: Annotated[SignInFields, Form()],
    csrf_token: CsrfToken = None,
) -> SignInAttempt:
    keys = session_keys(request)
    session = keys.read(request)
    keys.check_csrf(session, csrf_token)
    assert session is not None  # the CSRF check needs one
    attempt = SignInAttempt(request, keys, session, fields, throttle.client_of(request))
    # Known to this process already: refused before the request takes a connection, so a
    # flood of guesses from one address does not tie up the pool.
    if wait := keys.waiting.remaining(attempt.client):
        raise attempt.must_wait(wait)
    return attempt


@router.get("/sign-in", name="console.sign_in")
async def sign_in_page(request: Request, next: str = HOME) -> HTMLResponse:
    keys = session_keys(request)
    session = keys.read(request)
    cookie = None
    if session is None:
        session, cookie = keys.new_session(api_key=None)
    response = render(
        request, "sign_in.html", csrf=keys.csrf_token(session), next=local(next), error=None
    )
    if cookie is not None:
        keys.set_cookie(request, response, cookie)
    return response


@router.post("/sign-in", name="console.sign_in_submit")
async def sign_in(
    attempt: Annotated[SignInAttempt, Depends(sign_in_attempt)],
    conn: ConnDep,
    settings: SettingsDep,
) -> Response:
    keys, client = attempt.keys, attempt.client
    if wait := await throttle.hold(conn, client):
        raise attempt.must_wait(wait)
    await throttle.forget_old(conn)
    key = find_key(settings, (attempt.fields.api_key or "").strip())
    if key is None:
        wait = await throttle.record_failure(conn, client)
        keys.waiting.note(client, wait)
        log.warning("console.sign_in_refused", client=client, wait_seconds=wait)
        return attempt.again(
            401, "That key is not one this service knows. Check it and try again.", wait
        )
    response = redirect(attempt.next_url)
    keys.set_cookie(attempt.request, response, await keys.sign_in(conn, attempt.session, key))
    return response


@router.post("/sign-out", name="console.sign_out")
async def sign_out(user: SignOutSender, conn: ConnDep) -> Response:
    await user.keys.end(conn, user.session)
    response = redirect(path_for(user.request, "console.sign_in"))
    user.keys.clear(user.request, response)
    return response


def local(url: str) -> str:
    """Only a console path: never an open redirect."""
    return url if url.startswith(HOME) and not url.startswith("//") else HOME


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"
