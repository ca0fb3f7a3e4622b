"""Who is using the console in a request, and what they may do: the dependencies the page
routes take.

A page needs a session the server started and has not ended (read in the route's own
transaction: FastAPI hands the route the same connection). A form also needs its CSRF token
and the scope of its action, both checked from the cookie alone, after FastAPI has read the
form and before the request takes a connection from the pool: a forged or refused form
holds no pooled connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request

from service.console.session import CSRF_FIELD, ConsoleSession, SessionKeys
from service.deps import ConnDep, runtime_of
from service.errors import Forbidden
from service.keys import Principal, Scope


class SignInRequired(Exception):
    """No valid session: GET pages send the person to the sign-in page."""


@dataclass(frozen=True)
class ConsoleUser:
    """A person signed in to the console: their session and the key's name and scopes."""

    request: Request
    keys: SessionKeys
    session: ConsoleSession
    principal: Principal

    @property
    def csrf(self) -> str:
        return self.keys.csrf_token(self.session)

    def can(self, scope: Scope) -> bool:
        return scope in self.principal.scopes

    def need(self, scope: Scope) -> None:
        if not self.can(scope):
            raise Forbidden(
                f"this needs the '{scope}' scope and the key you signed in with "
                f"({self.principal.name}) lacks it; sign in with another key"
            )


def session_keys(request: Request) -> SessionKeys:
    return runtime_of(request.app).console_keys


def claimed_user(request: Request) -> ConsoleUser | None:
    """Who the cookie says is signed in, from the cookie alone (no database)."""
    keys = session_keys(request)
    session = keys.read(request)
    if session is None or session.principal is None:
        return None
    return ConsoleUser(request, keys, session, session.principal)


async def claimed(request: Request) -> ConsoleUser:
    user = claimed_user(request)
    if user is None:
        raise SignInRequired
    return user


ClaimedDep = Annotated[ConsoleUser, Depends(claimed)]


async def signed_in(user: ClaimedDep, conn: ConnDep) -> ConsoleUser:
    if not await user.keys.is_live(conn, user.session):
        raise SignInRequired
    return user


UserDep = Annotated[ConsoleUser, Depends(signed_in)]
CsrfToken = Annotated[str | None, Form(alias=CSRF_FIELD)]


def form_sender(scope: Scope | None, *, live: bool = True) -> Callable[..., Awaitable[ConsoleUser]]:
    """The dependency of a form's route: the person who sent it, holding `scope`, with the
    form's CSRF token checked; with `live`, a session still live on the server."""

    async def checked_from_cookie(user: ClaimedDep, csrf_token: CsrfToken = None) -> ConsoleUser:
        if scope is not None:
            user.need(scope)
        user.keys.check_csrf(user.session, csrf_token)
        return user

    # A default, not an annotation: the annotation is a string (future annotations), which
    # FastAPI resolves in the module's namespace, where `checked_from_cookie` is not.
    async def live_session(
        *, user: ConsoleUser = Depends(checked_from_cookie), conn: ConnDep
    ) -> ConsoleUser:
        if not await user.keys.is_live(conn, user.session):
            raise SignInRequired
        return user

    return live_session if live else checked_from_cookie


# Signing out needs the cookie and its CSRF token, not a live session: ending one that has
# ended already just clears the cookie.
SignOutSender = Annotated[ConsoleUser, Depends(form_sender(None, live=False))]
WriteSender = Annotated[ConsoleUser, Depends(form_sender("write"))]
AdminSender = Annotated[ConsoleUser, Depends(form_sender("admin"))]
