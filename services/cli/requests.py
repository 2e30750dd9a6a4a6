"""`provision request`, `deprovision` and `restore`: ask for a project, its removal, its return."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import (
    Failure,
    LocalFlag,
    UsageError,
    command_app,
    err,
    errors,
    out,
    refused_unless_published,
)
from services.cli.follow import follow
from services.usecases.payloads import parse_payload
from services.usecases.requests import (
    UnknownProjectError,
    request_deprovisioning,
    request_provisioning,
    restore_project,
)
from shared.domain.naming import validate_project_id
from shared.domain.records import RestoreRefusedError


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

    with errors():
        body = payload_from(project_id, region, payload)
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
        a = command_app(local=local)
        receipt = request_provisioning(model, app=a, requested_by=cli_requester())
        refused_unless_published(receipt.published)
        note = "" if receipt.published else " (broker unreachable: queued in the outbox, published later)"
        verb = "requested" if receipt.status == "requested" else "already requested (same payload)"
        out.print(f"{receipt.project_id}: {verb}; correlation_id {receipt.correlation_id}{note}")
        if wait:
            follow(a, receipt.project_id, timeout)


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

    with errors():
        project_id = validate_project_id(project_id)
        if purge_now and not yes:
            confirm_purge(project_id)
        a = command_app(local=local)
        try:
            receipt = request_deprovisioning(
                project_id, reason=reason, app=a, purge_now=purge_now, requested_by=cli_requester()
            )
        except UnknownProjectError as exc:
            raise Failure(str(exc)) from None
        refused_unless_published(receipt.published)
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
            follow(a, receipt.project_id, timeout)


def cli_requester() -> str:
    """Who asks from the command line, as the control plane records it: ``cli:<OS user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = "unknown"
    return f"cli:{user}"


def confirm_purge(project_id: str) -> None:
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

    with errors():
        project_id = validate_project_id(project_id)
        a = command_app(local=local)
        try:
            receipt = restore_project(project_id, app=a)
        except RestoreRefusedError as exc:
            raise Failure(str(exc)) from None
        refused_unless_published(receipt.published)
        note = "" if receipt.published else " (broker unreachable: queued in the outbox, published later)"
        out.print(f"{project_id}: restore requested; correlation_id {receipt.correlation_id}{note}")
        if wait:
            follow(a, project_id, timeout)


def payload_from(project_id: str, region: str | None, path: Path | None) -> dict[str, Any]:
    """The request body: the --payload file (if any) with the command's id and region."""
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
