"""The ``provision`` command: parses, calls library code, prints. Exit codes: 0 success,
1 the thing asked failed, 2 bad usage or bad input."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from typer.core import TyperGroup

from services import secret_key
from services.bootstrap import App, ConfigurationError, build_app
from services.keys.adapters import NothingToRevealError
from services.schemas import stale_schemas, write_schemas
from services.usecases.credentials import CredentialsError, reveal_credentials, rotate_credentials
from services.usecases.payloads import InvalidRequestError, parse_payload
from services.usecases.queries import (
    ProjectList,
    ProjectStatus,
    ProjectSummary,
    list_projects,
    project_status,
)
from services.usecases.reconcile import ReconcileAbortedError, ReconcileReport
from services.usecases.reconcile import describe as describe_plan
from services.usecases.reconcile import plan_for as plan_reconcile
from services.usecases.reconcile import reconcile as run_reconcile
from services.usecases.reconcile import repair as repair_drift
from services.usecases.replay import replay as run_replay
from services.usecases.requests import (
    UnknownProjectError,
    request_deprovisioning,
    request_provisioning,
    restore_project,
)
from services.web.auth import TokenConfigError, new_token
from services.worker import run_worker
from shared.crypto import UndecryptableError
from shared.db import migrate as run_migrations
from shared.domain.errors import InvalidTransitionError, ProvisioningError, StoreUnavailableError
from shared.domain.naming import InvalidProjectIdError, normalize_project_id, validate_project_id
from shared.domain.records import ConflictingRequestError, RestoreRefusedError, StepRow
from shared.domain.steps import (
    STEP_KEYS,
    STEPS,
    Chain,
    Stage,
    StepStatus,
    all_topics,
    resolve_step,
    step_by_name,
)
from shared.kafka import ensure_topics
from shared.logging import configure_logging
from shared.settings import Settings


class _WithToolingCommands(TyperGroup):
    """The root command: the product's commands, then those the tooling declares (entry points
    ``provision.commands``), each loaded only when it runs or is listed: the product never
    imports the tooling, and a worker started by `provision worker` loads none of it."""

    # Typed loosely: typer's own click is private to it (typer._click).
    def list_commands(self, ctx: Any) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in _tooling_commands() if name not in own)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _tooling_commands():
            command = _load_tooling_command(_tooling_commands()[cmd_name])
        return command


@functools.cache
def _tooling_commands() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="provision.commands")}


def _load_tooling_command(ep: importlib.metadata.EntryPoint) -> Any:
    """The command of one entry point: a typer.Typer sub-app or a plain command function; one
    whose extra is not installed says so in one line, exit 1."""
    options: dict[str, Any] = {}
    try:
        loaded = ep.load()
    except ImportError as exc:
        extra = ep.extras[0] if ep.extras else "dev"
        message = (
            f"`provision {ep.name}` needs the '{extra}' extra: pip install 'tenant-provisioning[{extra}]' "
            f"({exc.name or exc} is missing)"
        )

        def missing() -> None:
            _die(message, 1)

        loaded = missing
        options = {
            "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
            "add_help_option": False,
            "help": f"Needs the '{extra}' extra.",
        }
    if isinstance(loaded, typer.Typer):
        return typer.main.get_command(loaded)
    single = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False)
    single.command(ep.name, **options)(loaded)
    return typer.main.get_command(single)


app = typer.Typer(
    cls=_WithToolingCommands,
    rich_markup_mode=None,
    help="Tenant provisioning by Kafka choreography: seven step consumers bring a project to life.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _configure() -> None:
    """Log lines go to stderr, warnings and worse unless PROVISION_LOG_LEVEL says otherwise:
    stdout is the command's answer (a connection string, JSON) and nothing else."""
    configure_logging(os.environ.get("PROVISION_LOG_LEVEL", "WARNING"), "auto")


keys_app = typer.Typer(help="API keys of a project.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
credentials_app = typer.Typer(help="The tenant's own database credentials.", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")
secret_key_app = typer.Typer(
    help="The control plane's secret key: its fingerprint, its rotation.", no_args_is_help=True
)
app.add_typer(secret_key_app, name="secret-key")
out = Console()
err = Console(stderr=True)

REPO_SCHEMAS = Path("schemas")


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


class Failure(Exception):
    """The thing asked failed: one line, exit code 1."""


LocalFlag = Annotated[
    bool,
    typer.Option(
        "--local",
        help="Use the local servers of `provision infra up` for an unset KAFKA_BOOTSTRAP_SERVERS or "
        "DATABASE_URL (same as PROVISION_LOCAL=1).",
    ),
]


BrokerTimeout = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.1, help="Give up on an unanswering Kafka broker after this many seconds."
    ),
]


def _settings(*, local: bool = False) -> Settings:
    """The settings from the environment; ``local`` turns local mode on (never off)."""
    try:
        return Settings(local=True) if local else Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        name = "PROVISION_" + "_".join(str(p) for p in first["loc"]).upper()
        raise UsageError(f"bad setting {name}: {first['msg']}") from None


def _app(*, local: bool = False) -> App:
    """The app of one command; refuses (ConfigurationError, exit 2) when a server address is
    missing and local mode is off."""
    app = build_app(_settings(local=local))
    app.one_shot = True
    return app


def _keyed_app(*, local: bool = False) -> App:
    """The app of a command that encrypts or decrypts: refuses (ConfigurationError, exit 2)
    before doing anything when the secret key is missing or not the control plane's."""
    app = _app(local=local)
    _ = app.box
    return app


def _die(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every error a user can cause into one line and an exit code."""

    try:
        yield
    except (
        UsageError,
        InvalidRequestError,
        ConflictingRequestError,
        InvalidTransitionError,
        InvalidProjectIdError,
        ConfigurationError,
        UndecryptableError,
    ) as exc:
        _die(str(exc), 2)
    except (Failure, ProvisioningError) as exc:
        _die(str(exc), 1)
    except (OperationalError, StoreUnavailableError) as exc:
        cause = exc.orig if isinstance(exc, OperationalError) else exc
        first = (str(cause or exc).strip().splitlines() or [type(exc).__name__])[0]
        _die(f"cannot reach the control-plane database ({first}); is `provision infra up` running?", 1)
    except KafkaException as exc:
        _die(f"Kafka did not answer ({_kafka_reason(exc)}); is the broker up?", 1)
    except KeyboardInterrupt:
        _die("interrupted", 130)


def _kafka_reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


@app.command()
def migrate(local: LocalFlag = False) -> None:
    """Apply the control-plane database migrations (idempotent)."""

    with _errors():
        applied = run_migrations(_app(local=local).engine)
    out.print(f"applied {', '.join(applied)}" if applied else "database is up to date")


@app.command()
def topics(local: LocalFlag = False, timeout: BrokerTimeout = 10.0) -> None:
    """Create every topic that is missing (partitions and replication from settings)."""

    with _errors():
        a = _app(local=local)
        outcome = ensure_topics(
            a.bootstrap_servers,
            all_topics(),
            partitions=a.settings.topic_partitions,
            replication=a.settings.topic_replication,
            min_insync_replicas=a.settings.topic_min_insync_replicas,
            timeout=timeout,
        )
    created = [t for t, state in outcome.items() if state == "created"]
    out.print(f"{len(outcome)} topics: {len(created)} created, {len(outcome) - len(created)} already there")


@app.command()
def schemas(
    check: Annotated[
        bool, typer.Option("--check", help="Fail (exit 1) if schemas/ is stale; write nothing.")
    ] = False,
    directory: Annotated[Path, typer.Option(help="Where the schemas live.")] = REPO_SCHEMAS,
) -> None:
    """Generate the JSON Schemas of every event into schemas/."""

    with _errors():
        if check:
            stale = stale_schemas(directory)
            if stale:
                raise Failure(f"schemas are stale: {', '.join(stale)}; run `provision schemas`")
            out.print(f"{directory}/ is current")
            return
        changed = write_schemas(directory)
    out.print(
        f"wrote {len(changed)} schema file(s) to {directory}/" if changed else f"{directory}/ is current"
    )


# --- workers ------------------------------------------------------------------------------


@app.command()
def worker(
    step: Annotated[
        str,
        typer.Argument(
            help=f"The step service to run: {'|'.join(STEP_KEYS)} (or one removal step: "
            "deprovision-keys, ..., purge-database)."
        ),
    ],
    chain: Annotated[
        str,
        typer.Option(help="Which chain's consumer to run: all, provisioning, deprovisioning or purge."),
    ] = "all",
    local: LocalFlag = False,
) -> None:
    """Run a step service's consumers until SIGTERM/SIGINT: its provisioning step, its
    deprovisioning step and (the database service) the purge, each its own consumer group, on
    threads of one process."""

    with _errors():
        chains = tuple(Chain) if chain == "all" else None
        if chains is None:
            try:
                chains = (Chain(chain),)
            except ValueError:
                names = ", ".join(c.value for c in Chain)
                raise UsageError(f"unknown chain {chain!r}; expected all, {names}") from None
        try:
            key = resolve_step(step).key
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        run_worker(key, _settings(local=local), chains=chains)


# --- the HTTP front door ------------------------------------------------------------------


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    insecure_local: Annotated[
        bool,
        typer.Option(
            "--insecure-local",
            help="Serve without tokens (only on a loopback address): for a machine of one's own.",
        ),
    ] = False,
    local: LocalFlag = False,
) -> None:
    """Serve the HTTP API, its live stream and its page until SIGTERM/SIGINT.

    Callers present `Authorization: Bearer <token>`; the tokens' hashes come from
    PROVISION_API_TOKENS or PROVISION_API_TOKENS_FILE (entries from `provision api-token`).
    Without one it refuses to start unless --insecure-local."""

    with _errors():
        try:
            from services.web.server import serve  # noqa: PLC0415 - the api extra is optional
        except ImportError as exc:
            raise UsageError(
                f"the API needs the api extra ({exc.name} is missing): pip install 'tenant-provisioning[api]'"
            ) from None
        serve(_settings(local=local), host=host, port=port, insecure_local=insecure_local)


@app.command("api-token")
def api_token(
    caller: Annotated[str, typer.Argument(help="Who the token is for (a name for the logs).")],
) -> None:
    """Make a bearer token for one caller of the API: prints the token (shown once; give it to
    the caller) and the entry to add to PROVISION_API_TOKENS(_FILE), which holds only its hash."""

    with _errors():
        try:
            token, entry = new_token(caller)
        except TokenConfigError as exc:
            raise UsageError(str(exc)) from None
    out.print(f"token: {token}", highlight=False, soft_wrap=True)
    out.print(f"entry: {entry}", highlight=False, soft_wrap=True)


# --- requesting and following -------------------------------------------------------------


@app.command()
def request(
    project_id: Annotated[
        str, typer.Argument(help="The project id: a UUID, or lower-case letters, digits and hyphens.")
    ],
    region: Annotated[
        str | None, typer.Option(help="Target region, e.g. us-east-1 (required unless --payload has one).")
    ] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Do not register with auth.")] = False,
    no_realtime: Annotated[
        bool, typer.Option("--no-realtime", help="Do not register with realtime.")
    ] = False,
    no_storage: Annotated[bool, typer.Option("--no-storage", help="Do not register with storage.")] = False,
    keys: Annotated[int | None, typer.Option("--keys", help="Number of API keys.")] = None,
    key_prefix: Annotated[
        str | None, typer.Option("--key-prefix", help="Visible prefix of the API keys.")
    ] = None,
    payload: Annotated[
        Path | None, typer.Option(help="A JSON file with the full ProvisionProjectPayload.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the provisioning until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 300.0,
    local: LocalFlag = False,
) -> None:
    """Request a project: recorded with its seven steps and published in one go."""

    with _errors():
        body = _payload_from(project_id, region, payload)
        services = body.setdefault("services", {})
        for name, off in (("auth", no_auth), ("realtime", no_realtime), ("storage", no_storage)):
            if off:
                services[name] = False
        if keys is not None or key_prefix is not None:
            api_keys = body.setdefault("api_keys", {})
            if keys is not None:
                api_keys["count"] = keys
            if key_prefix is not None:
                api_keys["prefix"] = key_prefix
        model = parse_payload(body)  # a bad payload is refused before any server is needed
        a = _app(local=local)
        receipt = request_provisioning(model, app=a)
        note = "" if receipt.published else " (broker unreachable: queued in the outbox, published later)"
        verb = "requested" if receipt.status == "requested" else "already requested (same payload)"
        out.print(f"{receipt.project_id}: {verb}; correlation_id {receipt.correlation_id}{note}")
        if wait:
            _follow(a, receipt.project_id, timeout)


@app.command()
def deprovision(
    project_id: Annotated[str, typer.Argument(help="The project to remove.")],
    reason: Annotated[str | None, typer.Option(help="Why, kept with the project's tombstone.")] = None,
    purge_now: Annotated[
        bool,
        typer.Option(
            "--purge-now",
            help="Do not keep the archive for the retention window: purge it as soon as the reverse "
            "chain is done. It cannot be restored afterwards; asks for the project id twice.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="With --purge-now: do not ask.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the reverse chain until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 300.0,
    local: LocalFlag = False,
) -> None:
    """Remove a project by the reverse chain: revoke its keys, deregister it from storage,
    realtime and auth, end its sessions and archive its database (renamed, closed, its role
    NOLOGIN), and mark it DELETED (its rows kept for audit). The archive is kept for the
    retention window (PROVISION_RETENTION_SECONDS, 7 days), when `provision restore` brings the
    project back, then purged. A project still provisioning is cancelled first: the step
    running finishes and is undone, the steps not started never run. Asking twice is one
    deprovisioning (with --purge-now, of a project already deleted too, its purge is brought
    forward)."""

    with _errors():
        project_id = validate_project_id(project_id)
        if purge_now and not yes:
            _confirm_purge(project_id)
        a = _app(local=local)
        try:
            receipt = request_deprovisioning(project_id, reason=reason, app=a, purge_now=purge_now)
        except UnknownProjectError as exc:
            raise Failure(str(exc)) from None
        note = "" if receipt.published else " (broker unreachable: queued in the outbox, published later)"
        if receipt.status == "requested":
            verb = "deprovisioning requested"
        elif receipt.deleted_at is not None:
            verb = f"already deleted at {receipt.deleted_at.isoformat(timespec='seconds')}"
        else:
            verb = "already being deprovisioned"
        if purge_now:
            verb += "; its archive is purged as soon as it is deleted"
        out.print(f"{receipt.project_id}: {verb}; correlation_id {receipt.correlation_id}{note}")
        if wait:
            _follow(a, receipt.project_id, timeout)


def _confirm_purge(project_id: str) -> None:
    """The project id typed twice, or UsageError: a purge cannot be taken back."""
    if not sys.stdin.isatty():
        raise UsageError(
            "--purge-now cannot be taken back: type the project id twice at a terminal, or add --yes"
        )
    err.print(f"--purge-now removes {project_id} for good: its data cannot be restored afterwards.")
    for prompt in ("type the project id to purge", "type it again"):
        typed = typer.prompt(prompt, err=True)
        if typed.strip() != project_id:
            raise UsageError(f"{typed.strip()!r} is not {project_id!r}; nothing was done")


@app.command()
def restore(
    project_id: Annotated[str, typer.Argument(help="The deleted project to bring back.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the provisioning until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 300.0,
    local: LocalFlag = False,
) -> None:
    """Bring a deleted project back within its retention window: its archived database is
    renamed back with its data, its role gets a new password (`provision credentials reveal`),
    the services register it again and new API keys are made (`provision keys reveal`); the
    project is COMPLETED again. After the window (or once purged), one line says so, exit 1."""

    with _errors():
        project_id = validate_project_id(project_id)
        a = _app(local=local)
        try:
            receipt = restore_project(project_id, app=a)
        except RestoreRefusedError as exc:
            raise Failure(str(exc)) from None
        note = "" if receipt.published else " (broker unreachable: queued in the outbox, published later)"
        out.print(f"{project_id}: restore requested; correlation_id {receipt.correlation_id}{note}")
        if wait:
            _follow(a, project_id, timeout)


def _payload_from(project_id: str, region: str | None, path: Path | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{path} must hold a JSON object")
        body = loaded
        if body.get("project_id", project_id) != project_id:
            raise UsageError(f"{path} names project {body['project_id']!r}, the command {project_id!r}")
    body["project_id"] = project_id
    if region is not None:
        body["region"] = region
    if "region" not in body:
        raise UsageError("--region is required (or a region in --payload)")
    return body


@app.command()
def status(
    project_id: Annotated[
        str | None, typer.Argument(help="The project id (or --all for every project).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Follow live until the project is ready, deleted or failed."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --watch: give up after this many seconds.")] = 600.0,
    all_projects: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every project by stage, the longest unchanged first, flagging what is stuck "
            "(running past its lease) or stranded (pending with no message to move it).",
        ),
    ] = False,
    stage: Annotated[str | None, typer.Option(help="With --all: only projects at this stage.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --all: list at most this many.")] = 50,
    local: LocalFlag = False,
) -> None:
    """The project's steps (seven, and the seven reverse ones and the purge once deprovisioning
    is asked): status, timing, retries, errors, and its stage (a deleted project's: until when it
    can be restored, or when it was purged); or, with --all, every project's stage and how long it
    has stood there."""

    with _errors():
        if all_projects == (project_id is not None):
            raise UsageError("give a project id or --all" + (", not both" if all_projects else ""))
        if not all_projects and (stage is not None or limit != 50):
            raise UsageError("--stage and --limit go with --all")
        if all_projects and watch:
            raise UsageError("--watch follows one project; not with --all")
        a = _app(local=local)
        if project_id is None:
            _print_overview(list_projects(stage, limit=limit, app=a), as_json=as_json)
            return
        if watch:
            _follow(a, project_id, timeout)
            return
        state = project_status(project_id, app=a)
        if not state.exists:
            raise Failure(f"no project {project_id!r}")
        if as_json:
            out.print_json(json.dumps(_status_json(state)))
        else:
            out.print(_status_table(state))
        if state.stage is Stage.FAILED:
            raise typer.Exit(1)


def _print_overview(listing: ProjectList, *, as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        body = {
            "counts": {stage.value: n for stage, n in listing.counts.items()},
            "projects": [
                {
                    "project_id": p.project_id,
                    "stage": p.stage.value,
                    "created_at": _iso(p.created_at),
                    "last_change": _iso(p.last_change),
                    "stuck": p.stuck,
                    "stranded": p.stranded,
                }
                for p in listing.projects
            ],
        }
        out.print_json(json.dumps(body))
        return
    table = Table("project", "stage", "unchanged for", "created", "attention")
    for p in listing.projects:
        since = now - (p.last_change or p.created_at)
        table.add_row(
            p.project_id,
            p.stage.value,
            _age(since.total_seconds()),
            p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _attention(p),
        )
    out.print(table)
    stranded = sum(p.stranded for p in listing.projects)
    if stranded:
        out.print(
            f"{stranded} stranded (a pending step no message will move): provision replay re-drives them",
            highlight=False,
        )
    counts = ", ".join(f"{stage.value} {n}" for stage, n in sorted(listing.counts.items()))
    out.print(f"{sum(listing.counts.values())} projects: {counts or 'none'}", highlight=False)


def _attention(p: ProjectSummary) -> str:
    if p.stuck:
        return "stuck: lease expired"
    if p.stranded:
        return "stranded: provision replay"
    return ""


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _status_json(state: ProjectStatus) -> dict[str, Any]:
    return {
        "project_id": state.project_id,
        "stage": state.stage.value,
        "ready": state.ready,
        "removal": {
            "deleted_at": _iso(state.deleted_at),
            "purge_after": _iso(state.purge_after),
            "purged_at": _iso(state.purged_at),
            "restored_at": _iso(state.restored_at),
            "restorable": state.restorable,
        },
        "steps": [
            {
                "step": row.step_name,
                "status": row.status.value,
                "started_at": _iso(row.started_at),
                "completed_at": _iso(row.completed_at),
                "duration_ms": _duration_ms(row),
                "retry_count": row.retry_count,
                "error_message": row.error_message,
                "error_details": row.error_details,
                "stuck": _stuck(row),
            }
            for row in state.steps
        ],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _duration_ms(row: StepRow) -> float | None:
    if row.started_at is None or row.completed_at is None:
        return None
    return round((row.completed_at - row.started_at).total_seconds() * 1000, 1)


def _stuck(row: StepRow) -> bool:
    """Running past its lease: its consumer died, and a redelivery will take it over."""
    return row.status is StepStatus.RUNNING and row.lease_expired


_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "success": "green",
    "failed": "red",
    "skipped": "cyan",
    "cancelled": "magenta",
}
_TERMINAL = (Stage.COMPLETED, Stage.FAILED, Stage.DELETED, Stage.CANCELLED)


def _removal_note(state: ProjectStatus) -> str:
    """Where a deleted project's archive stands, for the status title."""
    if state.purged_at is not None:
        return f" (purged at {state.purged_at.strftime('%Y-%m-%d %H:%M:%S')})"
    if state.restorable and state.purge_after is not None:
        until = state.purge_after.strftime("%Y-%m-%d %H:%M:%S")
        return f" (archived: `provision restore` brings it back until {until} UTC)"
    if state.deleted_at is not None:
        return " (archived: its retention window is over, it is being purged)"
    return ""


def _status_table(state: ProjectStatus) -> Table:
    table = Table(
        title=f"{state.project_id}: {state.stage.value}{_removal_note(state)}", title_justify="left"
    )
    for column in ("step", "status", "started", "duration", "retries", "error"):
        table.add_column(column)
    for row in state.steps:
        status_text = f"[{_STYLE[row.status.value]}]{row.status.value}[/]"
        if _stuck(row):
            status_text += " [red](stuck: lease expired)[/]"
        duration = _duration_ms(row)
        table.add_row(
            row.step_name,
            status_text,
            row.started_at.strftime("%H:%M:%S.%f")[:-3] if row.started_at else "",
            f"{duration:.0f} ms" if duration is not None else "",
            str(row.retry_count),
            (row.error_message or "")[:80],
        )
    return table


def _follow(a: App, project_id: str, timeout: float) -> None:
    """Live progress until the project completes or is deleted (exit 0), or fails (exit 1)."""

    deadline = time.monotonic() + timeout
    state = project_status(project_id, app=a)
    project_id = state.project_id
    if not state.exists:
        raise Failure(f"no project {project_id!r}")
    with Live(_progress_view(state), console=out, refresh_per_second=8, transient=False) as live:
        while True:
            state = project_status(project_id, app=a)
            live.update(_progress_view(state))
            if state.stage in _TERMINAL:
                break
            if time.monotonic() > deadline:
                raise Failure(f"{project_id} still {state.stage.value} after {timeout:g} s")
            time.sleep(0.1)
    if not out.is_terminal:  # off a terminal, Live leaves the last line unterminated
        out.line()
    if state.stage is Stage.FAILED:
        failed = next(r for r in state.steps if r.status.value == "failed")
        raise Failure(f"{project_id} failed at {failed.step_name}: {failed.error_message}")


def _progress_view(state: ProjectStatus) -> Table:
    """The table, with a bar of the chain in progress (the reverse one once it exists)."""
    reverse = [r for r in state.steps if step_by_name(r.step_name).chain is Chain.DEPROVISIONING]
    chain = reverse or state.steps
    done = sum(1 for r in chain if r.status.value in ("success", "skipped"))
    total = len(chain) or len(STEPS)
    bar = "█" * done * 4 + "░" * (total - done) * 4
    table = _status_table(state)
    table.caption = f"{bar} {done}/{total} {'reverse steps' if reverse else 'steps'}"
    return table


# --- replay and keys ----------------------------------------------------------------------


@app.command()
def replay(
    step: Annotated[str | None, typer.Option(help=f"Only this step ({'|'.join(STEP_KEYS)}).")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be replayed; change nothing.")
    ] = False,
    max_replays: Annotated[int | None, typer.Option("--max", min=1, help="Replay at most N steps.")] = None,
    local: LocalFlag = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """Re-drive failed steps from the failed topics, once their cause is fixed, and stranded
    steps (pending, with no message that will move them: see status --all) from the record."""

    with _errors():
        key = None
        if step is not None:
            try:
                key = resolve_step(step).key
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        decisions = run_replay(
            _app(local=local),
            step_key=key,
            project_id=project,
            dry_run=dry_run,
            max_replays=max_replays,
            progress=lambda d: out.print(
                f"{d.action:>12}  {d.project_id} {d.step}: {d.reason}", highlight=False
            ),
            timeout=timeout,
        )
    acted = sum(1 for d in decisions if d.action != "skipped")
    verb = "would replay" if dry_run else "replayed"
    out.print(
        f"{verb} {acted}, skipped {len(decisions) - acted} (of {len(decisions)} failed or stranded)",
        highlight=False,
    )


@app.command()
def clusters(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    local: LocalFlag = False,
) -> None:
    """The tenant clusters of the map (PROVISION_CLUSTERS_FILE, or the one-cluster shorthand):
    each one's region, tenants placed on it (deleted ones not counted) and capacity."""

    with _errors():
        a = _app(local=local)
        try:
            fills = a.placements.cluster_fill()
            hosts = {c.name: c for c in a.tenant_cluster_map.clusters}
        finally:
            a.close()
    rows: list[dict[str, Any]] = [
        {
            "name": f.name,
            "region": f.region or "any",
            "tenants": f.used,
            "capacity": f.capacity,
            "address": _address_of(hosts[f.name].admin_url),
        }
        for f in fills
    ]
    if as_json:
        out.print_json(json.dumps({"clusters": rows}))
        return
    table = Table("cluster", "region", "tenants", "capacity", "address")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("name", "region", "tenants", "capacity", "address")))
    out.print(table)


def _address_of(url: str) -> str:
    """host:port of an admin URL (never its password)."""
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


@app.command()
def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing (the default).")
    ] = False,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Repair through the choreography: re-run the steps whose work is missing, remove an "
            "orphan seen twice a grace period apart. A live project is never removed.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    local: LocalFlag = False,
) -> None:
    """Report drift between the record and the clusters; with --apply, repair it forward.

    Lists every project, tenant database, archive and role, each service's tenants and the API
    keys, then reports what one side has and the other lacks. If a source cannot be listed, or
    lists wholesale less than the record says it holds (empty, or more than
    PROVISION_RECONCILE_MAX_MISSING_SHARE of it absent), nothing is judged and nothing changed.
    With --apply: a live project missing a registration, its role, its keys (or the database of
    one never ready) has those steps re-run, then verify; a missing database of a project that
    was ready is reported as data loss, never repaired by removal; an orphan (a tenant database,
    role or registration no project has) is deprovisioned by the reverse chain once seen orphaned
    in two runs PROVISION_RECONCILE_GRACE_SECONDS apart (until then the run says when). Exit 0
    when there is no drift, 1 when there is (even once repairs are requested) or when a source
    cannot be listed or trusted."""

    with _errors():
        if dry_run and apply:
            raise UsageError("--dry-run and --apply exclude each other")
        a = _app(local=local)
        try:
            report = run_reconcile(a)
            planned = plan_reconcile(a, report) if report.drift else []
            repairs = repair_drift(a, planned) if apply else [describe_plan(p) for p in planned]
        except ReconcileAbortedError as exc:
            raise Failure(str(exc)) from None
        finally:
            a.close()
    if as_json:
        body = _reconcile_json(report)
        body["mode"] = "apply" if apply else "dry-run"
        body["repairs"] = [
            {"project_id": r.project_id, "action": r.action, "reason": r.reason} for r in repairs
        ]
        out.print_json(json.dumps(body))
    else:
        if report.findings:
            out.print(_reconcile_table(report))
        out.print(report.summary(), highlight=False, soft_wrap=True)
        for r in repairs:
            out.print(
                f"{r.action}  {escape(r.project_id)}: {escape(r.reason)}", highlight=False, soft_wrap=True
            )
        if report.drift and not apply:
            out.print("dry run: nothing changed (--apply does what the lines above say)", highlight=False)
    if report.drift:
        raise typer.Exit(1)


def _reconcile_json(report: ReconcileReport) -> dict[str, Any]:
    return {
        "drift": report.drift,
        "findings": [
            {"kind": f.kind.value, "subject": f.subject, "service": f.service, "detail": f.detail}
            for f in report.findings
        ],
        "counts": report.counts(),
        "inventory": {
            "projects": report.projects,
            "databases": report.databases,
            "roles": report.roles,
            "archives": report.archives,
            "registrations": dict(report.registrations),
        },
    }


def _reconcile_table(report: ReconcileReport) -> Table:
    table = Table(title="drift", title_justify="left")
    for column in ("kind", "subject", "service", "detail"):
        table.add_column(column, overflow="fold")
    for f in report.findings:
        table.add_row(f.kind.value, escape(f.subject), f.service or "", escape(f.detail))
    return table


@keys_app.command("reveal")
def keys_reveal(
    project_id: Annotated[str, typer.Argument(help="The project id.")], local: LocalFlag = False
) -> None:
    """Show the project's API key secrets, once: they are erased as they are shown."""

    with _errors():
        a = _keyed_app(local=local)
        project_id = normalize_project_id(project_id)
        if a.projects.project(project_id) is None:
            raise Failure(f"no project {project_id!r}")
        try:
            revealed = a.key_store.reveal(project_id)
        except NothingToRevealError as exc:
            raise Failure(f"{exc.args[0]} (secrets are shown once)") from None
    for key in revealed:
        out.print(f"{key.info.key_id}  {key.secret}", highlight=False)
    err.print("these secrets are now erased from the control plane; store them safely")


@credentials_app.command("reveal")
def credentials_reveal(
    project_id: Annotated[str, typer.Argument(help="The project id.")], local: LocalFlag = False
) -> None:
    """Show the tenant's database connection string with its password, once."""

    with _errors():
        try:
            credentials = reveal_credentials(project_id, app=_keyed_app(local=local))
        except CredentialsError as exc:
            raise Failure(str(exc)) from None
    out.print(credentials.connection_string, highlight=False, soft_wrap=True)
    err.print("shown once; `provision credentials rotate` sets a new password to show")


@credentials_app.command("rotate")
def credentials_rotate(
    project_id: Annotated[str, typer.Argument(help="The project id.")], local: LocalFlag = False
) -> None:
    """Give the tenant's role a new password (then shown once by `credentials reveal`).
    Safe to run again after any failure: it finishes the same rotation."""

    with _errors():
        try:
            role = rotate_credentials(project_id, app=_keyed_app(local=local))
        except CredentialsError as exc:
            raise Failure(str(exc)) from None
    out.print(f"{project_id}: new password set on role {role}; `provision credentials reveal` shows it once")


@secret_key_app.command("fingerprint")
def secret_key_fingerprint(local: LocalFlag = False) -> None:
    """Show the fingerprints of the configured keys (newest first) and the one the control
    plane recorded; exit 1 when they disagree. Records nothing."""

    with _errors():
        a = _app(local=local)
        recorded = secret_key.recorded_fingerprint(a.engine)
        out.print(f"recorded:   {recorded or 'none yet (the first process that uses a key records it)'}")
        keys = a.secret_keys
        out.print(f"configured: {', '.join(secret_key.fingerprint(k) for k in keys)}")
        if recorded is not None and recorded not in {secret_key.fingerprint(k) for k in keys}:
            raise Failure("the configured keys do not include the control plane's key")


@secret_key_app.command("rotate")
def secret_key_rotate(
    local: LocalFlag = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows re-encrypted per transaction.")] = 100,
) -> None:
    """Re-encrypt every stored secret under the newest key of PROVISION_SECRET_KEY (newest
    first, the old key after it), then record the newest key's fingerprint. Safe to run again."""

    with _errors():
        a = _keyed_app(local=local)
        newest = a.secret_keys[0]

        def progress(step: secret_key.Progress) -> None:
            err.print(f"{step.table}: {step.done}/{step.total} secrets re-encrypted", highlight=False)

        count = secret_key.rotate(a.engine, a.box, newest, batch_size=batch_size, on_progress=progress)
    out.print(
        f"{count} secrets re-encrypted under {secret_key.fingerprint(newest)}, now the recorded key; "
        "drop the old key from PROVISION_SECRET_KEY once no process encrypts with it"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
