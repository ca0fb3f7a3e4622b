"""Links built from route names: each path parameter one encoded segment, dot segments never
in a path, and every link a path on the host the browser used."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request

from service.console.links import account_path, invoice_path, path_for
from service.main import create_app
from service.settings import load_settings


@pytest.fixture(scope="module")
def request_() -> Request:
    app: FastAPI = create_app(load_settings(log_level="WARNING"))
    return Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})


@pytest.mark.parametrize(
    ("number", "path"),
    [
        ("INV-1", "/console/invoices/INV-1"),
        ("A/B", "/console/invoices/A%2FB"),
        ("a?b#c", "/console/invoices/a%3Fb%23c"),
        ("50%2F", "/console/invoices/50%252F"),
        ("x/../y", "/console/invoices/x%2F..%2Fy"),
        ("...", "/console/invoices/..."),
        ("..", "/console/invoice?number=.."),
        (".", "/console/invoice?number=."),
    ],
)
def test_an_invoice_link_names_that_invoice(request_: Request, number: str, path: str) -> None:
    assert invoice_path(request_, number) == path


def test_a_dot_segment_is_never_a_path_parameter(request_: Request) -> None:
    for value in (".", ".."):
        with pytest.raises(ValueError, match="cannot be a path segment"):
            path_for(request_, "console.invoice", invoice_number=value)


def test_links_are_paths_of_named_routes(request_: Request) -> None:
    assert path_for(request_, "console.overview") == "/console/"
    assert path_for(request_, "console.static", path="console.css") == "/console/static/console.css"
    assert path_for(request_, "console.retry_message", message_id=7) == "/console/outbox/7/retry"
    assert account_path(request_, "ODD/1?&#") == "/console/invoices?account_ref=ODD%2F1%3F%26%23"
