"""`provision worker` and `provision api-token`: run a step service; make an API caller's token."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.common import LocalFlag, UsageError, errors, out, read_settings
from services.web.auth import TokenConfigError, new_token
from services.worker import run_worker
from shared.domain.steps import STEP_KEYS, Chain, resolve_step


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

    with errors():
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
        run_worker(key, read_settings(local=local), chains=chains)


def api_token(
    caller: Annotated[str, typer.Argument(help="Who the token is for (a name for the logs).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="What the token may do, once per scope: read, provision, deprovision, replay, "
            "admin (every scope over every caller's projects).",
        ),
    ] = None,
    all_projects: Annotated[
        bool,
        typer.Option(
            "--all-projects",
            help="Over every caller's projects, not only those this caller requested.",
        ),
    ] = False,
) -> None:
    """Make a bearer token for one caller of the API: prints the token (shown once; give it to
    the caller) and the entry to add to PROVISION_API_TOKENS(_FILE), which holds only its hash
    and the token's scopes. Without --all-projects (or the admin scope) the caller sees and acts
    only on the projects it requested."""

    with errors():
        try:
            token, entry = new_token(caller, scope or (), all_projects=all_projects)
        except TokenConfigError as exc:
            raise UsageError(str(exc)) from None
    out.print(f"token: {token}", highlight=False, soft_wrap=True)
    out.print(f"entry: {entry}", highlight=False, soft_wrap=True)
