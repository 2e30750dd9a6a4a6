"""The local servers' connection settings as `provision infra up` records them in the state
directory: a plain data contract between the tooling, which writes the file, and the product's
local mode, which reads it (the product never imports the tooling)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from shared.settings import ConfigurationError

LOCAL_ENV_FILE = "local-env.json"
LOCAL_PROTOCOL = "PROVISION_KAFKA_SECURITY_PROTOCOL"
"""Recorded only for a secure local broker (SASL_SSL), with the mechanism and the CA."""
LOCAL_PASSWORDS = "PROVISION_KAFKA_SASL_PASSWORD_FILE"
"""Where a secure local broker's users' passwords are (JSON, user to password, mode 0600)."""
LOCAL_SUPERUSER_ENV_FILE = "local-superuser-env.json"
"""The same settings with the superuser's URLs: what `provision db-roles --local` connects with."""

TENANT_DATABASE_URL_ENV = "TENANT_DATABASE_URL"
MIGRATION_DATABASE_URL_ENV = "PROVISION_MIGRATION_DATABASE_URL"
"""Recorded beside ``DATABASE_URL`` when the local servers have the least-privileged roles: the
one tenant cluster's admin URL (``provision_tenant_admin``) and the owner's, for migrations."""


def local_env_path(state_dir: Path, *, superuser: bool = False) -> Path:
    """Where the local servers' connection settings are recorded under ``state_dir`` (with
    ``superuser``, those with the superuser's URLs)."""
    return Path(state_dir) / (LOCAL_SUPERUSER_ENV_FILE if superuser else LOCAL_ENV_FILE)


def write_local_env(
    state_dir: Path, env: Mapping[str, str], superuser_env: Mapping[str, str] | None = None
) -> Path:
    """Record ``env`` (variable name to value; it holds passwords) in the state directory,
    readable by the owner only, replacing what was there in one step; ``superuser_env``, the
    same with the superuser's URLs, beside it (``env`` itself when not given)."""
    path = local_env_path(state_dir)
    _write_private(local_env_path(state_dir, superuser=True), env if superuser_env is None else superuser_env)
    _write_private(path, env)
    return path


def _write_private(path: Path, env: Mapping[str, str]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(dict(env), file, indent=2, sort_keys=True)
    os.replace(partial, path)


def read_local_env(state_dir: Path, *, superuser: bool = False) -> dict[str, str]:
    """The recorded connection settings (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL as
    ``provision_app`` where the local servers have the roles, and then TENANT_DATABASE_URL or,
    with several nodes, the tenant clusters, PROVISION_MIGRATION_DATABASE_URL, the topic
    settings); with ``superuser``, the superuser's URLs instead (a state directory recorded before
    there were two records has only the one, the superuser's). ConfigurationError when none are
    recorded."""
    path = local_env_path(state_dir, superuser=superuser)
    if superuser and not path.exists():
        path = local_env_path(state_dir)
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"local mode: no local servers recorded in {state_dir}; start them with `provision infra up`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"local mode: cannot read {path}: {exc}") from None
    if not isinstance(recorded, dict):
        raise ConfigurationError(f"local mode: {path} holds no settings; run `provision infra up` again")
    return {str(name): str(value) for name, value in recorded.items()}


def local_kafka_password(local: Mapping[str, str], user: str) -> str:
    """The password `provision infra up --secure` generated for ``user``, from the file the
    recorded settings ``local`` point at; ConfigurationError naming the known users otherwise."""
    recorded = local.get(LOCAL_PASSWORDS)
    if recorded is None:
        raise ConfigurationError(
            "local mode: the secure broker recorded no passwords; run `provision infra up`"
        )
    path = Path(recorded)
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"local mode: cannot read the broker's passwords ({path}): {exc}") from None
    if not isinstance(passwords, dict) or not isinstance(passwords.get(user), str):
        known = ", ".join(sorted(passwords)) if isinstance(passwords, dict) else "none"
        raise ConfigurationError(
            f"local mode: the local broker has no user {user!r} (PROVISION_KAFKA_SASL_USERNAME); "
            f"its users: {known}"
        )
    return str(passwords[user])
