"""`provision acls`: the broker's ACL set, shown, and with ``--apply`` created (idempotent).

The admin client connects as the administrator the settings name: ``KAFKA_BOOTSTRAP_SERVERS``
(or the client properties file's brokers) and the ``PROVISION_KAFKA_*`` security settings, as
every other client does (what ``provision infra env --principal provision-admin`` prints).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from confluent_kafka import KafkaError, KafkaException

from services.cli.common import BrokerTimeout, Failure, UsageError, errors, kafka_reason, out, read_settings
from shared.domain.acls import Grant, acl_table
from shared.kafka.acls import admin_client, apply_acls
from shared.kafka.clients import admin_config
from shared.kafka.security import resolve_security


def _row(grant: Grant) -> dict[str, str]:
    return {
        "principal": grant.principal,
        "resource_type": grant.resource_type.value,
        "name": grant.name,
        "pattern": grant.pattern.value,
        "operation": grant.operation.value,
        "why": grant.why,
    }


def acls(
    apply: Annotated[
        bool, typer.Option("--apply", help="Create the bindings the broker lacks (as the administrator).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """The ACL set (principal, resource type, name, pattern, operation); --apply creates what the
    broker lacks and says what was already there."""

    table = acl_table()
    created: set[tuple[str, str, str, str, str]] = set()
    with errors():
        if apply:
            settings = read_settings()
            security = resolve_security(settings)
            bootstrap = settings.kafka_bootstrap_servers or security.bootstrap_servers
            if not bootstrap:
                raise UsageError("KAFKA_BOOTSTRAP_SERVERS is not set; --apply needs the broker's address")
            config = admin_config(bootstrap, security=security.config())
            try:
                report = apply_acls(admin_client(config), table, timeout=timeout)
            except KafkaException as exc:
                raise Failure(f"the broker refused the ACLs ({_reason(exc)})") from None
            created = {g.binding for g in report.created}
    rows = [
        _row(g) | ({"state": "created" if g.binding in created else "present"} if apply else {})
        for g in table
    ]
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        columns = [
            "principal",
            "resource_type",
            "name",
            "pattern",
            "operation",
            *(["state"] if apply else []),
        ]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        for line in [{c: c for c in columns}, *rows]:
            typer.echo("  ".join(line[c].ljust(widths[c]) for c in columns).rstrip())
    if apply:  # on stderr with --json, so stdout stays one JSON document
        summary = (
            f"{len(table)} bindings: {len(created)} created, {len(table) - len(created)} already present"
        )
        typer.echo(summary, err=as_json)


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError._TIMED_OUT:
        return "no answer in time; is the broker up?"
    return kafka_reason(exc)
