"""``infra`` commands: start, stop and locate the local Kafka broker(s) and PostgreSQL server(s).

``provision`` mounts :data:`infra_app` from its ``provision.commands`` entry point: the infra
of the settings' state directory and ports, with the local servers' secret key in ``env``.

Progress and errors go to stderr so that ``eval "$(provision infra env)"`` only sees the
variable assignments on stdout.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated

import typer

from services import secret_key
from shared.settings import ConfigurationError, Settings
from tooling.infra._common import InfraError
from tooling.infra.local import local_infra
from tooling.infra.secure import ADMIN_USER, USERS
from tooling.output import UsageError, settings

if TYPE_CHECKING:
    from tooling.infra.local import LocalInfra


def _progress(line: str) -> None:
    typer.echo(line, err=True)


def _fail(error: InfraError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


def build_infra_app(
    make_infra: Callable[[], LocalInfra], extra_env: Callable[[], Mapping[str, str]] = dict
) -> typer.Typer:
    """Build the ``infra`` command group around ``make_infra``.

    ``make_infra`` is called once per command, so settings (ports, state directory) are
    read when the command runs; it may raise InfraError for bad settings. ``extra_env`` adds
    to what ``env`` prints (the local servers' secret key).
    """
    infra_app = typer.Typer(
        rich_markup_mode=None,
        help="Run a local Kafka broker and PostgreSQL server (no Docker needed).",
        no_args_is_help=True,
    )

    @infra_app.command()
    def up(
        ctx: typer.Context,
        *,
        clusters: Annotated[
            int | None,
            typer.Option(
                "--clusters",
                help="PostgreSQL clusters to run (cluster 0 is the control plane); default: as the "
                "last `up`, else 1.",
            ),
        ] = None,
        brokers: Annotated[
            int | None,
            typer.Option(
                "--brokers",
                help="Kafka nodes: 1, or 3 (a KRaft quorum; topics get replication 3, min ISR 2); "
                "default: as the last `up`, else 1.",
            ),
        ] = None,
        cluster_region: Annotated[
            list[str] | None,
            typer.Option(
                "--cluster-region",
                help="Region of the next cluster in clusters.toml (repeatable; the last one repeats "
                "for the rest; default eu-west-1).",
            ),
        ] = None,
        cluster_capacity: Annotated[
            int | None,
            typer.Option(
                "--cluster-capacity",
                envvar="PROVISION_MAX_TENANTS_PER_CLUSTER",
                help="Tenants per cluster in clusters.toml (default 1000).",
            ),
        ] = None,
        secure: Annotated[
            bool | None,
            typer.Option(
                "--secure/--no-secure",
                help="Kafka's client listener SASL_SSL (SCRAM-SHA-512 users, the local CA) with the "
                "ACL set applied; default: as the last `up`, else plaintext.",
            ),
        ] = None,
    ) -> None:
        """Start Kafka and PostgreSQL (fetching the broker jars on first use); idempotent."""
        try:
            infra = make_infra().with_topology(
                clusters=clusters,
                brokers=brokers,
                cluster_regions=cluster_region or (),
                cluster_capacity=cluster_capacity,
                secure=secure,
            )
            infra.up(_progress)
        except InfraError as exc:
            raise _fail(exc) from exc
        group = ctx.parent.command_path if ctx.parent is not None else "infra"
        _progress(f'ready; load the settings with: eval "$({group} env --export)"')

    @infra_app.command()
    def down() -> None:
        """Stop every Kafka node and PostgreSQL cluster; their data is kept for the next `up`."""
        try:
            make_infra().down(_progress)
        except InfraError as exc:
            raise _fail(exc) from exc

    @infra_app.command()
    def env(
        export: Annotated[
            bool,
            typer.Option("--export", "-e", help="Prefix lines with `export `."),
        ] = False,
        principal: Annotated[
            str | None,
            typer.Option(
                "--principal",
                help="With a secure broker: connect as this user (provision-database ... provision-admin); "
                "default provision-admin.",
            ),
        ] = None,
        mtls: Annotated[
            bool,
            typer.Option("--mtls", help="With a secure broker: a client certificate instead of a password."),
        ] = False,
        superuser: Annotated[
            bool,
            typer.Option(
                "--superuser",
                help="The PostgreSQL superuser's URLs instead of the least-privileged roles' (for "
                "`provision db-roles --apply` and debugging).",
            ),
        ] = False,
    ) -> None:
        """Print KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL as provision_app, the tenant cluster's
        URL as provision_tenant_admin (TENANT_DATABASE_URL; in multi-node mode each cluster's,
        PROVISION_CLUSTERS_FILE and the topic replication), the owner's for migrations
        (PROVISION_MIGRATION_DATABASE_URL), and what the caller adds (the local servers'
        PROVISION_SECRET_KEY), as shell assignments."""
        try:
            infra = make_infra()
            settings = {
                **infra.env(superuser=superuser).as_env(),
                **kafka_identity(infra, principal, mtls=mtls),
                **extra_env(),
            }
        except InfraError as exc:
            raise _fail(exc) from exc
        prefix = "export " if export else ""
        for name, value in settings.items():
            typer.echo(f"{prefix}{name}={shlex.quote(value)}")

    @infra_app.command()
    def status() -> None:
        """Show whether each Kafka node and PostgreSQL cluster is running, with pid and address."""
        try:
            states = make_infra().status()
        except InfraError as exc:
            raise _fail(exc) from exc
        for name, state in states.items():
            typer.echo(f"{name}: {state}")

    return infra_app


def kafka_identity(infra: LocalInfra, principal: str | None, *, mtls: bool = False) -> dict[str, str]:
    """The client settings naming who connects to a secure broker (InfraError on a plaintext
    one when a principal or --mtls is asked for): a SCRAM user and its password, or with
    ``mtls`` the mTLS listener and a client certificate whose CN is the user."""
    if not infra.topology.secure:
        if principal is not None or mtls:
            raise InfraError("--principal and --mtls need a secure broker: `infra up --secure`")
        return {}
    user = principal.removeprefix("User:") if principal is not None else ADMIN_USER
    security = infra.security
    if mtls:
        if user not in USERS:
            raise InfraError(f"no principal {user!r}; expected one of {', '.join(USERS)}")
        cert, key = security.client_certificate(user)
        return {
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka.mtls_bootstrap_servers,
            "PROVISION_KAFKA_SECURITY_PROTOCOL": "SSL",
            "PROVISION_KAFKA_SSL_CERTIFICATE_LOCATION": str(cert),
            "PROVISION_KAFKA_SSL_KEY_LOCATION": str(key),
        }
    return {"PROVISION_KAFKA_SASL_USERNAME": user, "PROVISION_KAFKA_SASL_PASSWORD": security.password(user)}


def _configured_infra() -> LocalInfra:
    """The local infra of the settings in the environment."""
    return local_infra(_settings())


def _settings() -> Settings:
    try:
        return settings()
    except UsageError as exc:
        raise InfraError(str(exc)) from None


def _local_key_env() -> dict[str, str]:
    """The local servers' key, for `infra env`: the shell it sets up then has explicit servers,
    which never make a key up."""
    try:
        keys = secret_key.load_keys(_settings(), local=True)
    except ConfigurationError as exc:
        raise InfraError(str(exc)) from None
    return {"PROVISION_SECRET_KEY": ",".join(keys)}


infra_app = build_infra_app(_configured_infra, _local_key_env)
