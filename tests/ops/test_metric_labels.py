"""Every label value of the HTTP metrics comes from a fixed set, whatever clients send."""

from __future__ import annotations

import re

import httpx

_HTTP_SERIES = re.compile(r"^ledgerlink_http_\w+\{(?P<labels>[^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


def _label_values(text: str, name: str) -> set[str]:
    values = set()
    for series in _HTTP_SERIES.finditer(text):
        labels = dict(_LABEL.findall(series["labels"]))
        if name in labels:
            values.add(labels[name])
    return values


async def test_made_up_methods_and_paths_add_no_series(client: httpx.AsyncClient) -> None:
    for n in range(20):
        await client.request(f"BREW{n}", "/healthz")
        await client.request(f"X-{n}", f"/v1/invoices/{n}")
        await client.get(f"/scan/{n}/wp-admin.php")
    text = (await client.get("/metrics")).text

    methods = _label_values(text, "method")
    assert methods <= METHODS, methods - METHODS
    assert "OTHER" in methods
    # Route labels are templates ("/v1/invoices/{invoice_number:path}"), never paths sent.
    routes = _label_values(text, "route")
    sent = [r for r in routes if "wp-admin" in r or re.fullmatch(r"/v1/invoices/\d+", r)]
    assert sent == []
    assert "<unmatched>" in routes
