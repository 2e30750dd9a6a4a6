"""The root of `provision`: the table of its commands, each imported only when it runs.

Each command lives in the module of its concern under ``services/cli/``; this table names it
and says what it does in one line, which is all `provision --help` needs. Tooling installs
more commands through the ``provision.commands`` entry points (see :mod:`services.cli.lazy`).
"""

# ruff: noqa: E501 - the table reads best one command a line

from __future__ import annotations

import os

import typer

from services.cli.lazy import LazyCommand, LazyGroup
from shared.logging import configure_logging

_CLI = "services.cli"

COMMANDS = (
    LazyCommand("migrate", f"{_CLI}.setup:migrate", "Apply the control-plane database migrations (idempotent)."),
    LazyCommand("topics", f"{_CLI}.setup:topics", "Create every topic that is missing."),
    LazyCommand("acls", f"{_CLI}.acls:acls", "The broker's ACL set; --apply creates what it lacks (idempotent)."),
    LazyCommand("schemas", f"{_CLI}.schemas:schemas", "Generate the JSON Schemas of every event into schemas/.", extra="api"),
    LazyCommand("worker", f"{_CLI}.serve:worker", "Run a step service's consumers until SIGTERM/SIGINT."),
    LazyCommand("api", f"{_CLI}.api:api", "Serve the HTTP API, its live stream and its page.", extra="api"),
    LazyCommand("api-token", f"{_CLI}.serve:api_token", "Make a bearer token for one caller of the API."),
    LazyCommand("request", f"{_CLI}.requests:request", "Request a project (its seven steps, published at once)."),
    LazyCommand("deprovision", f"{_CLI}.requests:deprovision", "Remove a project by the reverse chain (restorable for a while)."),
    LazyCommand("restore", f"{_CLI}.requests:restore", "Bring a deleted project back within its retention window."),
    LazyCommand("status", f"{_CLI}.status:status", "A project's steps and stage, or every project's (--all)."),
    LazyCommand("replay", f"{_CLI}.operate:replay", "Re-drive failed and stranded steps once their cause is fixed."),
    LazyCommand("deadletters", f"{_CLI}.deadletters:deadletters", "The dead letters: list, show, redrive once fixed, purge by age."),
    LazyCommand("clusters", f"{_CLI}.operate:clusters", "The tenant clusters: region, tenants placed, capacity."),
    LazyCommand("reconcile", f"{_CLI}.operate:reconcile", "Report drift between the record and the clusters; --apply repairs."),
    LazyCommand("keys", f"{_CLI}.secrets:keys", "API keys of a project."),
    LazyCommand("credentials", f"{_CLI}.secrets:credentials", "The tenant's own database credentials."),
    LazyCommand("db-roles", f"{_CLI}.dbroles:db_roles", "The least-privileged database roles: plan, or --apply."),
    LazyCommand("secret-key", f"{_CLI}.secrets:secret_key_group", "The control plane's secret key: fingerprint, rotation."),
)  # fmt: skip


class _Root(LazyGroup):
    lazy_commands = COMMANDS


app = typer.Typer(
    cls=_Root,
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


def main() -> None:
    """Console-script entry point."""
    app()
