"""The operator's side of deploy/: compose.yaml against the Compose Specification, Prometheus
configuration and alert rules checked and unit-tested by promtool, the Grafana dashboard's
queries parsed and matched against what the processes export, the PodMonitor against its CRD.

promtool comes from Debian's `prometheus` package (.ci/run installs it when missing); the
schemas are vendored in tests/deploy/schemas/, so nothing here needs the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

import service.metrics  # noqa: F401  (registers every metric, as a process does)
from tests.support.metrics import exported

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ledgerlink.json"
PODMONITOR = REPO / "deploy" / "k8s" / "monitoring" / "podmonitor.yaml"
SCHEMAS = Path(__file__).parent / "schemas"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: install Debian's `prometheus` package"
)
# A metric name inside a PromQL expression (label values and strings are removed first).
_METRIC = re.compile(r"\b(ledgerlink_[a-z0-9_]+|process_[a-z0-9_]+|up)\b")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
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
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    published = [
        (name, port) for name, service in services.items() for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"api", "prometheus", "grafana"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_secrets_come_from_dotenv_and_nowhere_else() -> None:
    text = COMPOSE.read_text()
    example = (REPO / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {
        "POSTGRES_PASSWORD",
        "LEDGERLINK_WEBHOOK_SECRET",
        "LEDGERLINK_ADMIN_API_KEY",
        "LEDGERLINK_CONSOLE_SESSION_SECRET",
        "GRAFANA_ADMIN_PASSWORD",
    }
    for name in required:
        assert re.search(rf"^{name}=\S+", example, re.MULTILINE), f"{name} not in .env.example"
    assert "CHANGE-ME" not in text
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_compose_mounts_exist() -> None:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("prometheus", "grafana"):
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
    guide = (REPO / "docs" / "OPERATIONS.md").read_text()
    tests = (PROMETHEUS / "alerts.test.yml").read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert f"### {name}" in guide, f"docs/OPERATIONS.md has no runbook entry for {name}"
        assert rule["annotations"]["runbook_url"] == f"docs/OPERATIONS.md#{name.lower()}"
        assert f"alertname: {name}" in tests, f"alerts.test.yml never tests {name}"
        assert rule["labels"]["severity"] in {"warning", "critical"}


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
