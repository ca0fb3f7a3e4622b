"""The `ledgerlink` command: serve, migrate, worker."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.settings import Settings, SettingsError, load_settings, refuse_example_secrets

if TYPE_CHECKING:
    from fastapi import FastAPI

app = typer.Typer(
    help="ledgerlink: Sage 50 payment statuses for OpenCRM, write-offs told apart.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEV_KEY_FILE = "admin-api-key"
# Where `make demo` pushes unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
DEV_SECRET_FILE = "webhook-secret"
DEV_CONSOLE_SECRET_FILE = "console-session-secret"


# The collector's threshold0 in the API process (see serve()).
YOUNG_GENERATION = 50_000


def _settings(*, dev: bool = False, **overrides: object) -> Settings:
    try:
        settings = load_settings(**overrides)
        if not dev:
            refuse_example_secrets(settings)
        return settings
    except SettingsError as exc:
        typer.echo(f"ledgerlink: {exc}", err=True)
        raise typer.Exit(2) from None


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def _dev_credentials(settings: Settings) -> dict[str, object]:
    """For `make run` only: a random admin key and webhook secret, kept under the data dir."""
    overrides: dict[str, object] = {}
    base = f"http://{settings.host}:{settings.port}"
    if not settings.parsed_api_keys:
        key_file = settings.data_dir / DEV_KEY_FILE
        key, created = _read_or_create(key_file, lambda: "ll_" + secrets.token_urlsafe(32))
        overrides["api_keys"] = f'{{"{key}": {{"name": "dev-admin", "scopes": ["admin"]}}}}'
        if created:
            typer.echo(
                f"\n  Created a development admin API key (stored in {key_file}):\n    {key}"
            )
        else:
            typer.echo(f"\n  Using the development admin API key stored in {key_file}")
        typer.echo(f'  Try: curl -H "Authorization: Bearer $(cat {key_file})" {base}/v1/invoices\n')
    if not settings.webhook_secrets:
        secret_file = settings.data_dir / DEV_SECRET_FILE
        secret, created = _read_or_create(secret_file, new_webhook_secret)
        if not _decodes(secret):
            # Dev secrets written by earlier versions were URL-safe text, which is base64
            # only by chance; the exporter and the service would both refuse such a secret.
            secret_file.unlink()
            secret, created = _read_or_create(secret_file, new_webhook_secret)
        overrides["webhook_secrets"] = secret
        verb = "Created" if created else "Using"
        typer.echo(f"  {verb} a development webhook secret (stored in {secret_file}).\n")
    if settings.console_session_secret is None:
        # Kept with the other dev credentials so console sign-ins survive a restart.
        console_file = settings.data_dir / DEV_CONSOLE_SECRET_FILE
        overrides["console_session_secret"], _ = _read_or_create(
            console_file, lambda: secrets.token_urlsafe(32)
        )
    return overrides


def new_webhook_secret() -> str:
    """`whsec_` + standard base64 of 24 random bytes: what Standard Webhooks senders expect."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _decodes(secret: str) -> bool:
    from service.ingest.signature import decode_secret

    try:
        decode_secret(secret)
    except ValueError:
        return False
    return True


@app.command()
def serve(
    dev: Annotated[
        bool,
        typer.Option(help="Development start (make run): create a dev API key and webhook secret."),
    ] = False,
    worker: Annotated[
        bool, typer.Option(help="Run the reconciliation/outbox worker inside this process.")
    ] = True,
    migrate: Annotated[bool, typer.Option(help="Migrate the database to head first.")] = False,
) -> None:
    """Serve the HTTP API (uvicorn, one process)."""
    import uvicorn

    from service.db import Database, database
    from service.main import create_app
    from service.migrate import upgrade_to_head

    settings = _settings(dev=dev)
    overrides: dict[str, object] = {"run_worker": worker and settings.run_worker}
    if dev:
        overrides.update(_dev_credentials(settings))
        if "LEDGERLINK_LOG_FORMAT" not in os.environ:
            overrides["log_format"] = "console"
    if settings.database_url is None:
        _require_embedded()
        from service.embedded import EmbeddedPostgres

        pgdata = EmbeddedPostgres(settings.data_dir).pgdata
        typer.echo(f"  Starting embedded PostgreSQL (data in {pgdata}) ...")
    db: Database | None = None
    try:
        with database(settings, supervised=True) as db:
            settings = _settings(dev=dev, database_url=db.url, **overrides)
            if migrate or dev:
                upgrade_to_head(db.url)
            # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so
            # the embedded PostgreSQL is still stopped on the way out instead of the process dying.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            application = create_app(settings)
            if dev:
                typer.echo(_banner(settings, application))
            # What exists now (modules, routes, schemas) lives as long as the process: keep the
            # collector from rescanning it each time a request's garbage triggers a full
            # collection (a webhook batch allocates thousands of objects).
            gc.freeze()
            # A young generation of 50,000 instead of 700: a batch's thousands of models live
            # until it is stored, so with the default they were scanned again and again by
            # collections that freed nothing (docs/BENCHMARKS.md has the cost). Garbage without
            # cycles goes by reference counting anyway; cycles still trigger a collection once
            # 50,000 objects pile up.
            gc.set_threshold(YOUNG_GENERATION)
            uvicorn.run(
                application,
                host=settings.host,
                port=settings.port,
                forwarded_allow_ips=settings.forwarded_allow_ips,
                log_config=None,
                timeout_graceful_shutdown=int(settings.request_timeout_seconds),
                timeout_keep_alive=5,
                # h11, not httptools: only h11 honours a limit on the size of a request's headers
                # (httptools would take megabytes of them, however slowly they come).
                http="h11",
                h11_max_incomplete_event_size=64 * 1024,
            )
    finally:
        if db is not None and db.supervisor is not None and db.supervisor.failed:
            # Raised here, it replaces the SystemExit(0) of the SIGTERM the supervisor sent.
            typer.echo(
                "ledgerlink: the embedded PostgreSQL died and could not be restarted", err=True
            )
            raise typer.Exit(1)


def _banner(settings: Settings, application: FastAPI) -> str:
    """Where to go next, for a person who just typed `make run`."""
    base = f"http://{settings.host}:{settings.port}"
    paths = {getattr(route, "path", "") for route in application.routes}
    lines = [f"  ledgerlink is starting on {base}"]
    if settings.docs_enabled:
        lines.append(f"    API docs (Swagger UI):  {base}/docs")
    if any(path.startswith("/console") for path in paths):
        lines.append(f"    Finance console:        {base}/console/")
    demo = "make demo" if base == DEFAULT_URL else f"make demo URL={base}"
    lines.append(f"    A demo company:         {demo}   (in another terminal)")
    lines.append("  Ctrl-C stops everything it started.\n")
    return "\n".join(lines)


def _require_embedded() -> None:
    """Stop with one line when no database URL is set and the embedded PostgreSQL is not
    installed (the image has none)."""
    from service.db import NoDatabase, require_embedded

    try:
        require_embedded()
    except NoDatabase as exc:
        typer.echo(f"ledgerlink: {exc}", err=True)
        raise typer.Exit(2) from None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command("migrate")
def migrate_command() -> None:
    """Migrate the database to the newest schema, then exit."""
    from service.db import database
    from service.migrate import upgrade_to_head

    settings = _settings()
    if settings.database_url is None:
        _require_embedded()
    with database(settings) as db:
        upgrade_to_head(db.url)
        typer.echo("ledgerlink: database is at the newest migration")


@app.command("worker")
def worker_command() -> None:
    """Run only the background worker (scale it separately from the API)."""
    from service.db import database
    from service.logging import configure_logging
    from service.main import run_worker
    from service.ops.exposition import MetricsPortTaken

    settings = _settings()
    if settings.database_url is None:
        _require_embedded()
    configure_logging(settings.log_level, settings.log_format)
    try:
        with database(settings) as db:
            asyncio.run(run_worker(settings, db.url))
    except MetricsPortTaken as exc:
        typer.echo(f"ledgerlink: {exc}", err=True)
        raise typer.Exit(2) from None


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    app()


if __name__ == "__main__":
    main()
