"""`provision db-roles`: the least-privileged database roles, planned or made (see
:mod:`services.usecases.dbroles`)."""

from __future__ import annotations

import json
import os
from typing import Annotated

import psycopg
import typer
from rich.markup import escape

from services.cli.common import Failure, LocalFlag, errors, out, read_settings
from services.usecases.dbroles import PASSWORD_ENV, DbRolesError, ensure_db_roles, role_targets


def db_roles(
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the roles; without it, print the plan.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The plan (or what was done) as JSON.")] = False,
    admin_url: Annotated[
        str | None,
        typer.Option(
            "--admin-url",
            help="A superuser's URL of the control-plane database (default DATABASE_URL); tenant "
            "clusters' admin URLs come from the cluster map or TENANT_DATABASE_URL.",
        ),
    ] = None,
    local: LocalFlag = False,
) -> None:
    """Create provision_owner and provision_app on the control plane and provision_tenant_admin on
    each tenant cluster (idempotent). A new role's password comes from PROVISION_OWNER_PASSWORD,
    PROVISION_APP_PASSWORD or PROVISION_TENANT_ADMIN_PASSWORD, else is generated and printed once."""

    with errors():
        control, tenants = role_targets(read_settings(local=local), admin_url, os.environ)
        passwords = {role: os.environ[name] for role, name in PASSWORD_ENV.items() if os.environ.get(name)}
        try:
            report = ensure_db_roles(control, tenants, passwords, apply=apply)
        except DbRolesError as exc:
            raise Failure(str(exc)) from None
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Failure(f"db-roles failed: {first}") from None
    if as_json:
        out.print_json(json.dumps(report.as_json()))
        return
    for cluster in report.clusters:
        out.print(f"-- {cluster.cluster}", highlight=False, soft_wrap=True)
        for statement in cluster.statements:
            out.print(escape(statement) + ";", highlight=False, soft_wrap=True)
        for role, url in cluster.urls.items():
            out.print(f"-- {role}: {escape(url)}  (shown once)", highlight=False, soft_wrap=True)
    if not apply:
        out.print("-- a plan: nothing was changed; --apply makes it so", highlight=False)
