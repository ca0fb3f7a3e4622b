"""Options both commands take, checked before anything is read or sent."""

from __future__ import annotations

from typing import NoReturn

import click
import httpx

from ledgerlink_exporter.client import SECRET_ENV, URL_ENV, Signer
from ledgerlink_exporter.output import log


class InputError(Exception):
    """A wrong option or a missing secret; `str()` is one line."""


def check_url(url: str) -> str:
    if not url:
        raise InputError(f"no service URL: pass --url or set {URL_ENV}")
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        host = ""
    if not url.startswith(("http://", "https://")) or not host:
        raise InputError(f"--url must be an http:// or https:// URL, got '{url}'")
    return url


def signer_for(secret: str | None) -> Signer:
    if not secret:
        raise InputError(f"no webhook secret: pass --secret or set {SECRET_ENV}")
    try:
        return Signer.from_secret(secret.strip())
    except ValueError as exc:
        raise InputError(str(exc)) from None


def fail(message: str, code: int) -> NoReturn:
    log(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)
