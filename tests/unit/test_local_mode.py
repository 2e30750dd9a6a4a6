"""Without KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL a command refuses; local mode must be asked for."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

import services.bootstrap
import services.cli
import services.cli.common
import services.cli.serve
import services.worker
import tooling.bench.suite
import tooling.demo
from services.bootstrap import ConfigurationError, build_app, worker_environment
from services.cli import app
from shared.domain.steps import STEP_KEYS, Chain, step_by_key
from shared.local_env import read_local_env
from shared.settings import Settings
from tooling.fleet import step_identities
from tooling.infra import LocalInfra, local_infra

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every command that connects to the broker or the database, with the arguments it needs.
CONNECTING = (
    ("worker", "database"),
    ("migrate",),
    ("topics",),
    ("status", "acme-app"),
    ("replay",),
    ("request", "acme-app", "--region", "us-east-1"),
    ("keys", "reveal", "acme-app"),
)

# Ports of no running server: local mode must only compute addresses from them.
PORTS = {
    "PROVISION_KAFKA_PORT": "23992",
    "PROVISION_KAFKA_CONTROLLER_PORT": "23993",
    "PROVISION_PG_PORT": "23932",
}


def _no_server(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("this must not connect to anything")


class _Stop(Exception):
    """Raised by a stand-in to end a command once it has shown what it was given."""


@pytest.fixture(autouse=True)
def unconfigured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No server addresses, no local mode, a private state dir; connecting fails the test."""
    monkeypatch.chdir(tmp_path)
    state_dir = tmp_path / "state"
    monkeypatch.setenv("PROVISION_STATE_DIR", str(state_dir))
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "TENANT_DATABASE_URL",
        "PROVISION_MIGRATION_DATABASE_URL",
        "PROVISION_LOCAL",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in PORTS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(services.bootstrap, "make_engine", _no_server)
    monkeypatch.setattr(psycopg, "connect", _no_server)
    # The real run_worker runs (it is where a worker refuses), but no worker or logging may start.
    monkeypatch.setattr(services.worker, "StepWorker", _no_server)
    monkeypatch.setattr(services.worker, "configure_logging", _no_server)
    return state_dir


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _record_local_servers() -> None:
    """What `provision infra up` records for local mode, without starting a server."""
    local_infra(Settings()).record()


@pytest.mark.parametrize("command", CONNECTING, ids=" ".join)
def test_connecting_command_refuses_without_configuration(command: tuple[str, ...]) -> None:
    """A connecting command with neither address set exits 2 with one line naming both and local mode."""
    result = _run(*command)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are not set" in lines[0]
    assert "PROVISION_LOCAL=1" in lines[0]
    assert "--local" in lines[0]


def test_refusal_names_only_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """With only DATABASE_URL set, the refusal names KAFKA_BOOTSTRAP_SERVERS alone."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    result = _run("worker", "database")
    assert result.exit_code == 2, result.output
    assert "KAFKA_BOOTSTRAP_SERVERS is not set" in result.output
    assert "DATABASE_URL" not in result.output


def test_refusal_creates_no_state(unconfigured: Path) -> None:
    """A refused command leaves no state directory or password file behind."""
    _run("migrate")
    assert not unconfigured.exists()


def test_worker_refusal_in_a_real_process_is_one_line_on_stderr(tmp_path: Path) -> None:
    """`provision worker database` unconfigured: exit 2, one line on stderr, nothing on stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "worker", "database"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are not set")


def test_build_app_refuses_without_configuration() -> None:
    """build_app with no addresses and local mode off raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="PROVISION_LOCAL=1"):
        build_app(Settings())


def test_provision_local_turns_local_mode_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """PROVISION_LOCAL=1 in the environment reads as Settings.local."""
    monkeypatch.setenv("PROVISION_LOCAL", "1")
    assert Settings().local is True


def test_local_mode_uses_the_local_servers_and_the_password_file(unconfigured: Path) -> None:
    """In local mode the app points at the local servers `infra up` recorded, as provision_app on the
    control plane, provision_tenant_admin on the tenant cluster and provision_owner for migrations,
    with the passwords kept in the state dir (files 0600, dir private), and connects to nothing while
    being built."""
    _record_local_servers()
    for name in ("local-env.json", "local-superuser-env.json"):
        assert stat.S_IMODE((unconfigured / name).stat().st_mode) == 0o600
    a = build_app(Settings(local=True))
    password_file = unconfigured / "postgres.password"
    roles = json.loads((unconfigured / "postgres.roles").read_text())
    url = "postgresql://{}:{}@127.0.0.1:23932/postgres"
    assert a.bootstrap_servers == "127.0.0.1:23992"
    assert a.database_url == url.format("provision_app", roles["provision_app"])
    assert a.tenant_database_url == url.format("provision_tenant_admin", roles["provision_tenant_admin"])
    assert a.migration_database_url == url.format("provision_owner", roles["provision_owner"])
    assert stat.S_IMODE((unconfigured / "postgres.roles").stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert read_local_env(unconfigured, superuser=True)["DATABASE_URL"] == url.format("postgres", password)
    assert len(password) >= 24
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(unconfigured.stat().st_mode) & 0o067 == 0, "only the owner (and a traversing group)"
    assert build_app(Settings(local=True)).database_url == a.database_url, "the password is made once"


def test_local_mode_without_recorded_servers_refuses_in_one_line(unconfigured: Path) -> None:
    """Local mode with no servers recorded in the state dir is a one-line ConfigurationError
    naming `provision infra up`."""
    with pytest.raises(ConfigurationError) as caught:
        build_app(Settings(local=True))
    assert str(caught.value) == (
        f"local mode: no local servers recorded in {unconfigured}; start them with `provision infra up`"
    )


def test_explicit_addresses_win_over_local_mode() -> None:
    """In local mode an explicit DATABASE_URL is kept and only the missing broker address is local."""
    url = "postgresql://app:secret@db.example:5432/control"
    _record_local_servers()
    a = build_app(Settings(local=True, database_url=url))
    assert a.database_url == url
    assert a.bootstrap_servers == "127.0.0.1:23992"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_worker_honours_local_mode(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """`worker database --local` (or PROVISION_LOCAL=1) starts the worker with local mode on."""
    seen: list[tuple[str, Settings, Collection[Chain]]] = []

    def fake_run_worker(step_key: str, settings: Settings, *, chains: Collection[Chain]) -> None:
        seen.append((step_key, settings, chains))

    monkeypatch.setattr(services.cli.serve, "run_worker", fake_run_worker)
    _record_local_servers()
    if how == "env":
        monkeypatch.setenv("PROVISION_LOCAL", "1")
    result = _run("worker", "database", *(["--local"] if how == "flag" else []))
    assert result.exit_code == 0, result.output
    [(step_key, settings, chains)] = seen
    assert step_key == "database"
    assert set(chains) == set(Chain), "both chains' consumers by default"
    assert settings.local is True
    assert build_app(settings).bootstrap_servers == "127.0.0.1:23992"


@pytest.mark.parametrize("command", [c for c in CONNECTING if c[0] != "worker"], ids=" ".join)
def test_connecting_commands_accept_local(monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]) -> None:
    """Every connecting command takes --local and gets past the configuration check with it."""
    built: list[Settings] = []

    def fake_build_app(settings: Settings, **_: Any) -> Any:
        built.append(settings)
        raise _Stop

    monkeypatch.setattr(services.cli.common, "build_app", fake_build_app)
    result = _run(*command, "--local")
    assert isinstance(result.exception, _Stop), result.output
    assert [s.local for s in built] == [True]


def test_infra_env_needs_no_configuration(unconfigured: Path) -> None:
    """`infra env` works unconfigured and prints the local provision_app URL with its kept password."""
    result = _run("infra", "env")
    assert result.exit_code == 0, result.output
    password = json.loads((unconfigured / "postgres.roles").read_text())["provision_app"]
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:23992" in result.output
    assert f"DATABASE_URL=postgresql://provision_app:{password}@127.0.0.1:23932/postgres" in result.output


def test_demo_is_local_without_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """`demo` unconfigured starts the local servers and builds its app in local mode."""
    built: list[Settings] = []

    class FakeInfra:
        def status(self) -> dict[str, str]:
            return {"kafka": "running", "postgres": "running"}

        def up(self, progress: Any) -> None:
            pass

    def fake_build_app(settings: Settings, **_: Any) -> Any:
        built.append(settings)
        raise _Stop

    monkeypatch.setattr(tooling.demo, "local_infra", lambda settings: FakeInfra())
    monkeypatch.setattr(tooling.demo, "build_app", fake_build_app)
    result = _run("demo")
    assert isinstance(result.exception, _Stop), result.output
    assert [s.local for s in built] == [True]


def test_bench_is_local_without_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench latency` unconfigured runs with local mode on."""
    given: list[Settings] = []

    class FakeRun:
        def __init__(self, plan: Any, settings: Settings, out: Any, err: Any) -> None:
            given.append(settings)

        def execute(self) -> dict[str, Any]:
            raise _Stop

    monkeypatch.setattr(tooling.bench.suite, "SuiteRun", FakeRun)
    result = _run("bench", "latency")
    assert isinstance(result.exception, _Stop), result.output
    assert [s.local for s in given] == [True]


def test_worker_environment_does_not_pass_local_mode() -> None:
    """Workers started by demo or bench get explicit addresses, so PROVISION_LOCAL is not passed on."""
    env = worker_environment(Settings(local=True), bootstrap_servers="b:1", database_url="postgresql://d")
    assert "PROVISION_LOCAL" not in env
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "b:1"


def _record_secure_local_servers(state_dir: Path) -> LocalInfra:
    """What `provision infra up --secure` records for local mode (its CA and users' passwords
    made), without starting a server."""
    infra = LocalInfra(state_dir, 23992, 23993, 23932, secure=True)
    infra.security.ca.ensure()
    infra.security.passwords()
    infra.record()
    return infra


def test_local_mode_on_a_secure_broker_connects_as_the_entry_points_principal(unconfigured: Path) -> None:
    """On the secure local broker the app takes SASL_SSL, the CA and its principal's generated password."""
    infra = _record_secure_local_servers(unconfigured)
    a = build_app(Settings(local=True), principal="provision-schema")
    config = a.kafka_config
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "provision-schema"
    assert config["sasl.password"] == infra.security.password("provision-schema")
    assert config["ssl.ca.location"] == str(infra.security.ca.cert)
    assert infra.security.password("provision-schema") not in (unconfigured / "local-env.json").read_text()


def test_local_mode_on_a_secure_broker_takes_the_named_user_first(
    unconfigured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROVISION_KAFKA_SASL_USERNAME wins over the entry point's principal; its password is the file's."""
    infra = _record_secure_local_servers(unconfigured)
    monkeypatch.setenv("PROVISION_KAFKA_SASL_USERNAME", "provision-operator")
    config = build_app(Settings(local=True), principal="provision-requester").kafka_config
    assert config["sasl.username"] == "provision-operator"
    assert config["sasl.password"] == infra.security.password("provision-operator")


def test_local_mode_on_a_secure_broker_refuses_nobody_or_a_stranger_in_one_line(unconfigured: Path) -> None:
    """No principal, or a user the local broker does not have, is one ConfigurationError line."""
    _record_secure_local_servers(unconfigured)
    with pytest.raises(ConfigurationError, match="PROVISION_KAFKA_SASL_USERNAME") as nobody:
        build_app(Settings(local=True))
    assert "\n" not in str(nobody.value)
    with pytest.raises(ConfigurationError, match="no user 'mallory'") as stranger:
        build_app(Settings(local=True, kafka_sasl_username="mallory"))
    assert "provision-admin" in str(stranger.value)  # it lists the users there are


def test_explicit_kafka_security_wins_over_the_secure_local_broker(unconfigured: Path) -> None:
    """A protocol given explicitly is kept as it is: the state directory adds no identity to it."""
    _record_secure_local_servers(unconfigured)
    a = build_app(Settings(local=True, kafka_security_protocol="PLAINTEXT"), principal="provision-schema")
    assert "sasl.username" not in a.kafka_config


def test_local_mode_on_a_plaintext_broker_adds_no_identity(unconfigured: Path) -> None:
    """On the plaintext local broker the principal is ignored: no SASL settings at all."""
    _record_local_servers()
    assert "sasl.username" not in build_app(Settings(local=True), principal="provision-schema").kafka_config


def test_every_entry_point_names_its_own_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker is its service's principal, `request` the requester, `replay` the operator, `topics` admin."""
    principals: list[str | None] = []

    def fake_build_app(settings: Settings, *, principal: str | None = None) -> Any:
        principals.append(principal)
        raise _Stop

    monkeypatch.setattr(services.cli.common, "build_app", fake_build_app)
    monkeypatch.setattr(services.worker, "build_app", fake_build_app)
    for command in (("request", "acme-app", "--region", "us-east-1"), ("replay",), ("topics",)):
        assert isinstance(_run(*command, "--local").exception, _Stop)
    with pytest.raises(_Stop):
        services.worker.run_worker("schema", Settings(local=True))
    assert principals == ["provision-requester", "provision-operator", "provision-admin", "provision-schema"]


def test_the_fleet_gives_each_step_its_services_principal_on_a_secure_broker(unconfigured: Path) -> None:
    """Spawned by the demo or the bench, each worker is provision-<service>; plaintext adds nothing."""
    assert step_identities(LocalInfra(unconfigured, 23992, 23993, 23932)) == {}
    infra = _record_secure_local_servers(unconfigured)
    identities = step_identities(infra)
    assert sorted(identities) == sorted(STEP_KEYS)
    for step, identity in identities.items():
        user = f"provision-{step_by_key(step).service}"
        assert identity["PROVISION_KAFKA_SASL_USERNAME"] == user
        assert identity["PROVISION_KAFKA_SASL_PASSWORD"] == infra.security.password(user)


def test_worker_environment_does_not_pass_the_owners_url() -> None:
    """A worker never migrates: PROVISION_MIGRATION_DATABASE_URL is not passed on to it."""
    settings = Settings(migration_database_url="postgresql://provision_owner:secret@h/d")
    env = worker_environment(settings, bootstrap_servers="b:1", database_url="postgresql://d")
    assert "PROVISION_MIGRATION_DATABASE_URL" not in env
    assert not any("secret" in value for value in env.values())


def test_migrations_use_the_migration_url_else_database_url() -> None:
    """The app's migration URL is PROVISION_MIGRATION_DATABASE_URL, else none (DATABASE_URL's engine)."""
    base = {"kafka_bootstrap_servers": "b:1", "database_url": "postgresql://app@h/d"}
    owner = "postgresql://owner@h/d"
    assert build_app(Settings(**base, migration_database_url=owner)).migration_database_url == owner
    assert build_app(Settings(**base)).migration_database_url is None


def test_an_explicit_database_url_takes_no_local_role_url(unconfigured: Path) -> None:
    """In local mode with DATABASE_URL set, the local TENANT_DATABASE_URL and owner's URL are not taken."""
    _record_local_servers()
    explicit = "postgresql://me:pw@db.example:5432/plane"
    a = build_app(Settings(local=True, database_url=explicit))
    assert (a.database_url, a.tenant_database_url, a.migration_database_url) == (explicit, explicit, None)
