"""`provision keys`, `credentials` and `secret-key`: a project's secrets, shown once, and the
control plane's key."""

from __future__ import annotations

from typing import Annotated

import typer

from services import secret_key
from services.cli.common import Failure, LocalFlag, command_app, err, errors, keyed_app, out
from services.keys.adapters import NothingToRevealError
from services.usecases.credentials import CredentialsError, reveal_credentials, rotate_credentials
from shared.domain.naming import normalize_project_id


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        add_completion=False,
    )


keys = _group("API keys of a project.")
credentials = _group("The tenant's own database credentials.")
secret_key_group = _group("The control plane's secret key: its fingerprint, its rotation.")


@keys.command("reveal")
def keys_reveal(
    project_id: Annotated[str, typer.Argument(help="The project id.")], local: LocalFlag = False
) -> None:
    """Show the project's API key secrets, once: they are erased as they are shown."""

    with errors():
        a = keyed_app(local=local)
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


@credentials.command("reveal")
def credentials_reveal(
    project_id: Annotated[str, typer.Argument(help="The project id.")], local: LocalFlag = False
) -> None:
    """Show the tenant's database connection string with its password, once."""

    with errors():
        try:
            credentials = reveal_credentials(project_id, app=keyed_app(local=local))
        except CredentialsError as exc:
            raise Failure(str(exc)) from None
    out.print(credentials.connection_string, highlight=False, soft_wrap=True)
    err.print("shown once; `provision credentials rotate` sets a new password to show")


@credentials.command("rotate")
def credentials_rotate(
    project_id: Annotated[str, typer.Argument(help="The project id.")], local: LocalFlag = False
) -> None:
    """Give the tenant's role a new password (then shown once by `credentials reveal`).
    Safe to run again after any failure: it finishes the same rotation."""

    with errors():
        try:
            role = rotate_credentials(project_id, app=keyed_app(local=local))
        except CredentialsError as exc:
            raise Failure(str(exc)) from None
    out.print(f"{project_id}: new password set on role {role}; `provision credentials reveal` shows it once")


@secret_key_group.command("fingerprint")
def secret_key_fingerprint(local: LocalFlag = False) -> None:
    """Show the fingerprints of the configured keys (newest first) and the one the control
    plane recorded; exit 1 when they disagree. Records nothing."""

    with errors():
        a = command_app(local=local)
        recorded = secret_key.recorded_fingerprint(a.engine)
        out.print(f"recorded:   {recorded or 'none yet (the first process that uses a key records it)'}")
        keys = a.secret_keys
        out.print(f"configured: {', '.join(secret_key.fingerprint(k) for k in keys)}")
        if recorded is not None and recorded not in {secret_key.fingerprint(k) for k in keys}:
            raise Failure("the configured keys do not include the control plane's key")


@secret_key_group.command("rotate")
def secret_key_rotate(
    local: LocalFlag = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows re-encrypted per transaction.")] = 100,
) -> None:
    """Re-encrypt every stored secret under the newest key of PROVISION_SECRET_KEY (newest
    first, the old key after it), then record the newest key's fingerprint. Safe to run again."""

    with errors():
        a = keyed_app(local=local)
        newest = a.secret_keys[0]

        def progress(step: secret_key.Progress) -> None:
            err.print(f"{step.table}: {step.done}/{step.total} secrets re-encrypted", highlight=False)

        count = secret_key.rotate(a.engine, a.box, newest, batch_size=batch_size, on_progress=progress)
    out.print(
        f"{count} secrets re-encrypted under {secret_key.fingerprint(newest)}, now the recorded key; "
        "drop the old key from PROVISION_SECRET_KEY once no process encrypts with it"
    )
