"""Every label set known in advance exists, at 0, from the moment a process starts: a series born
at its first event hides that event from `increase()` (12 bad signatures read as 0, and the
alert never fired). The known label sets (service/metrics.py KNOWN_LABELS) must be the ones the
code counts: checked here against every `.labels(...)` call under service/."""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.metrics import MetricWrapperBase

from service import metrics
from service.ingest.rejections import REJECT_REASONS
from service.main import http_operations, known_values
from service.settings import Settings, load_settings
from tests.faults.support import eventually
from tests.support.factories import deliver, si
from tests.support.keys import ADMIN_KEY, auth
from tests.support.metrics import Samples, samples
from tests.support.processes import LedgerlinkProcess
from tests.support.settings import make_settings
from tests.support.webhooks import OLD_SECRET

SERVICE = Path(__file__).resolve().parents[2] / "service"
WILDCARD = None  # a label value worked out at run time
Pattern = tuple[str | None, ...]


def _labelled() -> dict[str, MetricWrapperBase]:
    """service.metrics' labelled metrics by their constant's name."""
    return {
        constant: value
        for constant, value in vars(metrics).items()
        if isinstance(value, MetricWrapperBase) and value._labelnames
    }


def _opencrm() -> Settings:
    # OpenCRM mode: the settings under which every label set exists.
    return load_settings(
        crm_mode="opencrm",
        opencrm_base_url="https://crm.example.com",
        opencrm_key="k" * 16,
        opencrm_passkey="p" * 16,
    )


def _known(metric: MetricWrapperBase, settings: Settings, *, api: bool) -> list[tuple[str, ...]]:
    return [
        tuple(labels) for labels in metrics.KNOWN_LABELS[metric](known_values(settings, api=api))
    ]


def _values(node: ast.expr) -> list[str | None]:
    """What an argument can be: its string constants (both sides of an `a if c else b`), or a
    wildcard for anything worked out at run time."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _values(node.body) + _values(node.orelse)
    return [WILDCARD]


def _patterns(args: list[ast.expr]) -> Iterator[Pattern]:
    combos: list[Pattern] = [()]
    for arg in args:
        combos = [(*combo, value) for combo in combos for value in _values(arg)]
    yield from combos


def counted() -> dict[str, set[Pattern]]:
    """Every label set the code counts, by metric constant: each `METRIC.labels(...)` call,
    the outcomes the CRM dispatcher tallies in `work.outcomes[...]` before counting them, and
    the OpenCRM methods the client calls."""
    found: dict[str, set[Pattern]] = {name: set() for name in _labelled()}
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                if node.func.attr == "labels" and isinstance(target, ast.Name):
                    if target.id in found:
                        found[target.id].update(_patterns(node.args))
                elif node.func.attr == "call" and path.name == "client.py" and node.args:
                    found["CRM_LATENCY"].update(_patterns(node.args[:1]))
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "outcomes"
            ):
                found["CRM_DELIVERIES"].update(_patterns([node.slice]))
    # The list method is handed in from the settings (LEDGERLINK_OPENCRM_LIST_METHOD).
    found["CRM_LATENCY"].add((_opencrm().opencrm_list_method,))
    return found


def _matches(pattern: Pattern, labels: tuple[str, ...]) -> bool:
    return len(pattern) == len(labels) and all(
        wanted in (WILDCARD, value) for wanted, value in zip(pattern, labels, strict=True)
    )


# --------------------------------------------------------------------- the definitions --


def test_every_labelled_metric_says_which_label_sets_it_has_from_start_up() -> None:
    labelled = _labelled()
    assert len(labelled) >= 10, "the scan found too few labelled metrics to mean anything"
    for constant, metric in labelled.items():
        assert metric in metrics.KNOWN_LABELS, f"{constant} has no entry in KNOWN_LABELS"
        for labels in _known(metric, _opencrm(), api=True):
            assert len(labels) == len(metric._labelnames), (constant, labels)


def test_the_known_label_sets_are_the_ones_the_code_counts() -> None:
    """Both ways: every label set written in the code is known (else its first burst is lost),
    and every known one is counted somewhere (else it is a typo that exports a dead series)."""
    found = counted()
    for constant, metric in _labelled().items():
        known = _known(metric, _opencrm(), api=True)
        patterns = found[constant]
        assert patterns, f"nothing counts {constant}"
        for pattern in patterns:
            if WILDCARD not in pattern:
                assert any(_matches(pattern, labels) for labels in known), (constant, pattern)
        vouching = [pattern for pattern in patterns if any(v is not WILDCARD for v in pattern)]
        for labels in known if vouching else []:
            assert any(_matches(pattern, labels) for pattern in vouching), (constant, labels)


def test_the_scan_finds_the_label_sets_written_in_the_code() -> None:
    """Control: the scan above sees literal, conditional and worked-out label values."""
    found = counted()
    assert ("bulk", WILDCARD) in found["STATUS_CHANGES"]
    assert ("rejected", WILDCARD) in found["WEBHOOK_DELIVERIES"]
    assert {("auth_failed",), ("misconfigured",), ("superseded",)} <= found["CRM_DELIVERIES"]
    assert {("get_invoice",), ("edit_invoice",)} <= found["CRM_LATENCY"]
    assert ("api", "failed") in found["RECONCILE_RUNS"]


def test_every_reject_reason_is_one_the_code_gives() -> None:
    """The reasons are typed (mypy refuses a refusal with an unlisted one); each listed one
    must also be written where a delivery is refused, not only in the list."""
    given: set[str] = set()
    for path in [
        *SERVICE.joinpath("ingest").glob("*.py"),
        *SERVICE.joinpath("middleware").glob("*.py"),
    ]:
        tree = ast.parse(path.read_text())
        listed = {
            id(constant)
            for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "Literal"
            for constant in ast.walk(node.slice)
        }
        given |= {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            if id(node) not in listed
        }
    assert set(REJECT_REASONS) <= given, set(REJECT_REASONS) - given
    assert {"bad_signature", "too_large", "timeout"} <= set(REJECT_REASONS)


def test_status_changes_start_for_every_status_a_change_can_set() -> None:
    settings = _opencrm()
    known = set(_known(metrics.STATUS_CHANGES, settings, api=False))
    labels = set(settings.status_labels.values()) | set(settings.protected_statuses)
    for source in ("sync", "manual", "bulk"):
        assert {(source, label) for label in labels} <= known


def test_the_crm_label_sets_exist_only_where_opencrm_is_called() -> None:
    local = load_settings(crm_mode="local")
    assert _known(metrics.CRM_LATENCY, local, api=False) == []
    assert _known(metrics.CRM_READBACK, local, api=False) == []
    assert _known(metrics.CRM_DELIVERIES, local, api=False) != []
    assert ("get_invoice_list",) in _known(metrics.CRM_LATENCY, _opencrm(), api=False)


async def test_http_label_sets_are_the_ones_requests_are_counted_under(
    client: httpx.AsyncClient,
) -> None:
    """The route label is the route's template (`{invoice_number:path}`), which the OpenAPI
    document spells without its converter: each request lands on a known series."""
    answered = [
        ("/v1/invoices/{invoice_number:path}", "GET", await client.get("/v1/invoices/A/1")),
        ("/v1/invoices", "GET", await client.get("/v1/invoices", headers=auth(ADMIN_KEY))),
        (
            "/v1/webhooks/sage/postings",
            "POST",
            await deliver(client, si(1, "I"), secret=OLD_SECRET),
        ),
        ("/healthz", "GET", await client.get("/healthz")),
    ]
    scraped = samples((await client.get("/metrics")).text)
    operations = set(http_operations())
    for route, method, response in answered:
        labels = {"route": route, "method": method, "status": str(response.status_code)}
        assert (route, method, labels["status"]) in operations
        assert ("ledgerlink_http_requests_total", frozenset(labels.items())) in scraped
    assert ("/v1/webhooks/sage/postings", "POST", "401") in operations


# ------------------------------------------------------------------ fresh processes --


def _missing(
    scraped: Samples, name: str, label_sets: list[tuple[str, ...]], names: list[str]
) -> list[dict[str, str]]:
    series = {labels for sample, labels in scraped if sample == name}
    wanted = [dict(zip(names, labels, strict=True)) for labels in label_sets]
    return [labels for labels in wanted if frozenset(labels.items()) not in series]


def _series_name(metric: MetricWrapperBase) -> str:
    """The sample that shows a label set: a counter's `_total`, a histogram's `_count`."""
    (family,) = metric.describe()
    suffix = {"counter": "_total", "histogram": "_count"}.get(family.type, "")
    return f"{family.name}{suffix}"


def _check_fresh(scraped: Samples, settings: Settings, *, api: bool) -> None:
    for constant, metric in _labelled().items():
        label_sets = _known(metric, settings, api=api)
        missing = _missing(scraped, _series_name(metric), label_sets, list(metric._labelnames))
        assert missing == [], f"{constant}: {missing[:5]}"


async def test_a_fresh_api_process_exports_every_known_label_set_at_zero(
    database_url: str,
) -> None:
    service = LedgerlinkProcess(database_url)
    await asyncio.to_thread(service.start, "--no-worker")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            scraped = samples((await http.get(f"{service.base_url}/metrics")).text)
    finally:
        await asyncio.to_thread(service.stop)
    _check_fresh(scraped, make_settings(database_url), api=True)
    # What the issue saw read as 0: the first bad signatures, the first status changes.
    for name, labels in [
        ("ledgerlink_webhook_deliveries_total", {"outcome": "rejected", "reason": "bad_signature"}),
        (
            "ledgerlink_http_requests_total",
            {"route": "/v1/webhooks/sage/postings", "method": "POST", "status": "401"},
        ),
        ("ledgerlink_status_changes_total", {"source": "sync", "status": "Paid"}),
    ]:
        assert scraped.get((name, frozenset(labels.items()))) == 0, (name, labels)


async def test_a_fresh_worker_process_exports_every_known_label_set_at_zero(
    database_url: str,
) -> None:
    worker = LedgerlinkProcess(database_url, command="worker")
    worker.start()
    try:
        url = f"{worker.metrics_url}/metrics"

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient(timeout=5) as http:
                    return (await http.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answers, within=30, what="worker /metrics")
        async with httpx.AsyncClient(timeout=10) as http:
            scraped = samples((await http.get(url)).text)
    finally:
        await asyncio.to_thread(worker.stop)
    _check_fresh(scraped, make_settings(database_url), api=False)
    labels = {"source": "sync", "status": "Paid"}
    assert scraped.get(("ledgerlink_status_changes_total", frozenset(labels.items()))) == 0
    assert not [name for name, _ in scraped if name.startswith("ledgerlink_http_")]


def test_the_api_guide_lists_every_reject_reason() -> None:
    guide = (SERVICE.parent / "docs" / "API.md").read_text()
    paragraph = guide[guide.index("Errors are RFC 9457") :].split("\n\n")[0]
    reasons = paragraph.split("):", 1)[1].split("For an invalid batch")[0]
    listed = re.findall(r"`([a-z_]+)`", reasons)
    assert sorted(listed) == sorted(REJECT_REASONS)
