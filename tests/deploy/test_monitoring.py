"""The operator's side of deploy/: compose.yaml against the Compose Specification, Prometheus
configuration and alert rules checked and unit-tested by promtool, the Alertmanager
configuration and its routing checked by amtool, the Grafana dashboard's queries parsed and
matched against what the processes export, the PodMonitor against its CRD.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages
(.ci/run installs them when missing); the schemas are vendored in tests/deploy/schemas/, so
nothing here needs the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

import service.metrics  # noqa: F401  (registers every metric, as a process does)
from tests.deploy.test_deploy import dotenv, interpolate
from tests.support.metrics import exported

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ledgerlink.json"
PODMONITOR = REPO / "deploy" / "k8s" / "monitoring" / "podmonitor.yaml"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
GUIDE = REPO / "docs" / "OPERATIONS.md"
SCHEMAS = Path(__file__).parent / "schemas"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: install Debian's `prometheus` package"
)
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool missing: install Debian's `prometheus-alertmanager` package"
)
# How an alert rule names the base of its runbook URL (prometheus.yml's external label).
RUNBOOK_BASE = "{{ $externalLabels.ledgerlink_runbooks }}"
# A metric name inside a PromQL expression (label values and strings are removed first).
_METRIC = re.compile(r"\b(ledgerlink_[a-z0-9_]+|process_[a-z0-9_]+|up)\b")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def amtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run(
        [AMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def exported_metrics() -> dict[str, str]:
    """What an API or worker process exports (they share one definition; the worker test in
    tests/ops checks that both export the same)."""
    return exported(generate_latest().decode(), prefix="")


def metrics_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(_METRIC.findall(re.sub(r"\{[^}]*\}", "", without_ranges)))
    return {_HISTOGRAM_SERIES.sub("", name) for name in names}


def dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def compose_requires() -> set[str]:
    """What compose refuses to start without: each `${NAME:?...}`, and each secret read from
    the environment."""
    text = COMPOSE.read_text()
    secrets = yaml.safe_load(text).get("secrets", {})
    from_environment = {
        secret["environment"] for secret in secrets.values() if "environment" in secret
    }
    return set(re.findall(r"\$\{(\w+):\?", text)) | from_environment


def external_labels() -> dict[str, str]:
    """prometheus.yml's external labels as the compose Prometheus has them: `${VAR}` expanded
    from its environment, as --enable-feature=expand-external-labels does, with .env copied
    from .env.example."""
    labels = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"][
        "external_labels"
    ]
    values = dotenv(REPO / ".env.example")
    environment = {
        name: interpolate(str(value), values)
        for name, value in compose_services()["prometheus"]["environment"].items()
    }
    return {name: interpolate(str(value), environment) for name, value in labels.items()}


def rendered_runbook_url(rule: dict[str, Any], labels: dict[str, str]) -> str:
    """The rule's runbook_url with its external label filled in; any other template left in
    it stays, so it cannot pass for an absolute URL."""
    url: str = rule["annotations"]["runbook_url"]
    return url.replace(RUNBOOK_BASE, labels.get("ledgerlink_runbooks", ""))


def is_absolute(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in {"http", "https"} and bool(parts.netloc) and "{{" not in url


# ------------------------------------------------------------------ compose --


def compose_schema_errors(document: object) -> list[str]:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_schema_rejects_a_typo() -> None:
    """Control: the schema check below must be able to fail."""
    assert compose_schema_errors({"services": {"api": {"imgae": "x"}}})
    condition = {"depends_on": {"db": {"condition": "whenever"}}}
    assert compose_schema_errors({"services": {"api": condition}})


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_schema_errors(yaml.safe_load(COMPOSE.read_text())) == []


def test_compose_config_accepts_the_file_when_docker_compose_is_installed(
    tmp_path: Path,
) -> None:
    docker = shutil.which("docker")
    probe = (
        subprocess.run(
            [docker or "docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if docker
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip(
            "the Docker CLI's compose plugin (docker-compose-plugin) is missing; "
            "test_compose_file_follows_the_compose_specification validates the file instead"
        )
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    result = subprocess.run(
        [docker or "docker", "compose", "-f", str(COMPOSE), "--env-file",
         str(tmp_path / ".env"), "config", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_compose_publishes_ports_on_loopback_only() -> None:
    services = compose_services()
    published = [
        (name, port) for name, service in services.items() for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"api", "prometheus", "alertmanager", "grafana"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_secrets_come_from_dotenv_and_nowhere_else() -> None:
    text = COMPOSE.read_text()
    example = (REPO / ".env.example").read_text()
    required = compose_requires()
    assert required == {
        "POSTGRES_PASSWORD",
        "LEDGERLINK_WEBHOOK_SECRET",
        "LEDGERLINK_ADMIN_API_KEY",
        "LEDGERLINK_CONSOLE_SESSION_SECRET",
        "GRAFANA_ADMIN_PASSWORD",
        "ALERTMANAGER_WEBHOOK_URL",
        "LEDGERLINK_RUNBOOK_URL",
    }
    for name in required:
        assert re.search(rf"^{name}=\S+", example, re.MULTILINE), f"{name} not in .env.example"
    assert "CHANGE-ME" not in text
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_operations_guide_lists_everything_compose_needs_from_dotenv() -> None:
    """The guide's list of what `.env` must hold is the list compose refuses to start without
    (it once left out LEDGERLINK_CONSOLE_SESSION_SECRET)."""
    text = GUIDE.read_text()
    table = text[text.index("| `.env` | what it is |") :].split("\n\n")[0]
    listed = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert len(listed) == len(set(listed))
    assert set(listed) == compose_requires()


def test_compose_mounts_exist() -> None:
    services = compose_services()
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "ledgerlink.yml").read_text()
    )["providers"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == providers[0]["options"]["path"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    uids = {ds["uid"] for ds in datasources}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert used == uids


# --------------------------------------------------------------- prometheus --


@needs_promtool
def test_prometheus_config_and_rules_pass_promtool_check() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Control: a unit test expecting an alert that the series cannot raise must fail."""
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "wrong.test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["alerts.yml"],
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": "ledgerlink_outbox_dead", "values": "0x10"}],
                        "alert_rule_test": [
                            {
                                "eval_time": "5m",
                                "alertname": "LedgerlinkDeadLetters",
                                "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    assert promtool("test", "rules", "wrong.test.yml", cwd=tmp_path).returncode != 0


def test_every_alert_has_a_runbook_entry_and_the_unit_tests_cover_it() -> None:
    guide = GUIDE.read_text()
    tests = (PROMETHEUS / "alerts.test.yml").read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert f"### {name}" in guide, f"docs/OPERATIONS.md has no runbook entry for {name}"
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"
        assert f"alertname: {name}" in tests, f"alerts.test.yml never tests {name}"
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_every_runbook_url_is_absolute() -> None:
    """A notification is read far from the repository: a relative runbook_url leads nowhere."""
    labels = external_labels()
    base = labels["ledgerlink_runbooks"]
    assert is_absolute(base), base
    for rule in alert_rules():
        url = rendered_runbook_url(rule, labels)
        assert is_absolute(url), f"{rule['alert']}: runbook_url {url!r} is not absolute"
        assert url == f"{base}#{rule['alert'].lower()}"


def test_a_relative_runbook_url_is_caught() -> None:
    """Control: the check above fails on the paths the rules once had, and on a template it
    cannot fill in."""
    labels = {"ledgerlink_runbooks": "https://docs.example.invalid/OPERATIONS.md"}
    for url in (
        "docs/OPERATIONS.md#ledgerlinkdown",
        "#ledgerlinkdown",
        "{{ $externalLabels.other }}#ledgerlinkdown",
    ):
        assert not is_absolute(rendered_runbook_url({"annotations": {"runbook_url": url}}, labels))
    # Without the external label, the rules' own URLs come out relative.
    assert not is_absolute(rendered_runbook_url(alert_rules()[0], {}))


def test_compose_prometheus_expands_the_runbook_base_from_dotenv() -> None:
    prometheus = compose_services()["prometheus"]
    assert "--enable-feature=expand-external-labels" in prometheus["command"]
    raw = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"]
    assert raw["external_labels"]["ledgerlink_runbooks"] == "${LEDGERLINK_RUNBOOK_URL}"
    assert "LEDGERLINK_RUNBOOK_URL" in prometheus["environment"]


def test_alert_unit_tests_expect_absolute_runbook_urls() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    urls = [
        alert["exp_annotations"]["runbook_url"]
        for group in tests
        for case in group["alert_rule_test"]
        for alert in case.get("exp_alerts", [])
    ]
    assert urls
    assert all(is_absolute(url) for url in urls), urls


# ------------------------------------------------------------------ alertmanager --


def test_prometheus_sends_its_alerts_to_the_compose_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = [
        target
        for alertmanager in config["alerting"]["alertmanagers"]
        for static in alertmanager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    services = compose_services()
    assert "alertmanager" in services["prometheus"]["depends_on"]
    alertmanager = services["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:v")
    mounts = dict(volume.split(":")[:2] for volume in alertmanager["volumes"])
    config_file = next(a.split("=", 1)[1] for a in alertmanager["command"] if "config.file" in a)
    assert mounts["./deploy/alertmanager/alertmanager.yml"] == config_file


def test_the_receiver_reads_its_url_from_the_secret_compose_hands_over() -> None:
    """The webhook URL (it carries a token) is a compose secret read from .env, never written
    in the configuration."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (receiver,) = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    (slack,) = receiver["slack_configs"]
    assert "api_url" not in slack
    secrets = compose_services()["alertmanager"]["secrets"]
    assert slack["api_url_file"] in {f"/run/secrets/{name}" for name in secrets}
    declared = yaml.safe_load(COMPOSE.read_text())["secrets"]
    assert {declared[name]["environment"] for name in secrets} == {"ALERTMANAGER_WEBHOOK_URL"}
    # Each message links the runbook.
    assert "runbook_url" in slack["text"]


@needs_amtool
def test_alertmanager_config_passes_amtool_check() -> None:
    result = amtool("check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_amtool
def test_amtool_check_can_fail(tmp_path: Path) -> None:
    """Control: a route to a receiver that does not exist is refused."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["route"]["receiver"] = "nobody"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    assert amtool("check-config", str(tmp_path / "alertmanager.yml")).returncode != 0


@needs_amtool
def test_every_alert_reaches_the_operators() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (receiver,) = (r["name"] for r in config["receivers"])
    for rule in alert_rules():
        labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}"]
        result = amtool(
            "config", "routes", "test", f"--config.file={ALERTMANAGER}",
            f"--verify.receivers={receiver}", *labels,
        )  # fmt: skip
        assert result.returncode == 0, rule["alert"] + result.stdout + result.stderr


@needs_amtool
def test_the_message_names_the_alert_and_links_its_runbook(tmp_path: Path) -> None:
    """The receiver's templates rendered by Alertmanager's own code, for a firing alert."""
    (slack,) = yaml.safe_load(ALERTMANAGER.read_text())["receivers"][0]["slack_configs"]
    rule = next(r for r in alert_rules() if r["alert"] == "LedgerlinkDeadLetters")
    runbook = rendered_runbook_url(rule, external_labels())
    labels = {"alertname": rule["alert"], "severity": rule["labels"]["severity"]}
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": "2 CRM outbox message(s) are dead letters",
                        "description": "OpenCRM never received these", "runbook_url": runbook},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
    }  # fmt: skip
    data = {
        "receiver": "ledgerlink-operators",
        "status": "firing",
        "alerts": [alert],
        "groupLabels": {"alertname": rule["alert"]},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://127.0.0.1:9093",
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "none.tmpl").write_text("")
    shown = []
    for field in ("title", "text"):
        result = amtool(
            "template", "render", f"--template.glob={tmp_path / 'none.tmpl'}",
            f"--template.data={tmp_path / 'data.json'}", f"--template.text={slack[field]}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        shown.append(result.stdout)
    title, text = shown
    assert "[FIRING] LedgerlinkDeadLetters (warning)" in title
    assert "2 CRM outbox message(s) are dead letters" in text
    assert f"Runbook: {runbook}" in text


def test_alerts_read_only_metrics_the_processes_export() -> None:
    known = set(exported_metrics()) | {"up"}
    for rule in alert_rules():
        assert metrics_in(rule["expr"]) <= known, rule["alert"]


# ------------------------------------------------------------------ grafana --


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ledgerlink"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["description"], panel["title"]


def test_dashboard_shows_what_an_operator_watches() -> None:
    shown = set().union(*(metrics_in(expr) for _, expr in dashboard_targets()))
    assert {
        "ledgerlink_postings_total",
        "ledgerlink_ingest_duration_seconds",
        "ledgerlink_posting_to_status_seconds",
        "ledgerlink_dirty_invoices",
        "ledgerlink_dirty_oldest_age_seconds",
        "ledgerlink_outbox_pending",
        "ledgerlink_outbox_oldest_age_seconds",
        "ledgerlink_outbox_dead",
        "ledgerlink_crm_deliveries_total",
        "ledgerlink_conflicts_total",
        "ledgerlink_reconcile_run_duration_seconds",
        "ledgerlink_bulk_jobs_total",
        "ledgerlink_db_pool_connections",
        "ledgerlink_ready",
    } <= shown


def test_dashboard_queries_read_only_metrics_the_processes_export() -> None:
    known = set(exported_metrics()) | {"up"}
    for title, expr in dashboard_targets():
        assert metrics_in(expr) <= known, f"{title}: {expr}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses every expression of a rules file: each query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(dashboard_targets())
    ]
    for rule in rules:
        rule["expr"] = rule["expr"].replace("$__range", "1h")
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------- kubernetes --


def _strict(schema: Any) -> Any:
    """Unknown fields are errors, as with `kubectl apply --validate=strict`."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


def podmonitor_errors(document: dict[str, Any]) -> list[str]:
    schema = _strict(json.loads((SCHEMAS / "podmonitor-v1.json").read_text()))
    # metadata is ObjectMeta, which the CRD leaves to the API server.
    schema["properties"]["metadata"] = {"type": "object"}
    return [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(document)]


def test_podmonitor_schema_rejects_a_typo() -> None:
    document = yaml.safe_load(PODMONITOR.read_text())
    document["spec"]["podMetricsEndpoints"][0]["pth"] = "/metrics"
    assert podmonitor_errors(document)


def test_podmonitor_is_valid_and_scrapes_the_api_and_the_worker() -> None:
    document = yaml.safe_load(PODMONITOR.read_text())
    assert document["apiVersion"] == "monitoring.coreos.com/v1"
    assert document["kind"] == "PodMonitor"
    assert podmonitor_errors(document) == []
    assert "namespace" not in document["metadata"]
    k8s = REPO / "deploy" / "k8s"
    ports: dict[str, str] = {}
    for name in ("api-deployment.yaml", "worker-deployment.yaml"):
        deployment = yaml.safe_load((k8s / name).read_text())
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert document["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]:
            ports[port["name"]] = labels["app.kubernetes.io/component"]
    scraped = {endpoint["port"] for endpoint in document["spec"]["podMetricsEndpoints"]}
    assert {ports[port] for port in scraped} == {"api", "worker"}
    kustomization = yaml.safe_load((PODMONITOR.parent / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [PODMONITOR.name]
