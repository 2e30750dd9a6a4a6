"""The test infrastructure itself: a real Kafka broker and a real PostgreSQL server."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import stat
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from confluent_kafka import Consumer, Message, Producer

# NewTopic's documented home; the package's typing re-exports it only implicitly.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from services.usecases.dbroles import APP, OWNER, TENANT_ADMIN
from shared.db import libpq_url
from shared.db.engine import make_engine
from shared.db.migrator import current_revision, migrate
from shared.local_env import local_env_path, read_local_env
from tooling.infra import InfraEnv, LocalInfra
from tooling.infra.cli import build_infra_app
from tooling.infra.postgres import LocalPostgres
from tooling.infra.topology import Topology, read_topology

if TYPE_CHECKING:
    from tests.conftest import InfraHandle

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_kafka_round_trip_with_key(infra_env: InfraEnv) -> None:
    """A keyed record produced to a fresh topic is consumed back with the same key and value."""
    topic = f"infra-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": infra_env.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    try:
        producer = Producer({"bootstrap.servers": infra_env.bootstrap_servers, "enable.idempotence": True})
        producer.produce(topic, key=b"tenant-42", value=b'{"step": "create-database"}')
        assert producer.flush(30) == 0, "the record was not delivered within 30 s"

        received = _consume_one(infra_env.bootstrap_servers, topic, timeout=30)
        assert received.key() == b"tenant-42"
        assert received.value() == b'{"step": "create-database"}'
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)


def test_postgres_answers_version(infra_env: InfraEnv) -> None:
    """psycopg connects to the session's database URL and `select version()` names PostgreSQL."""
    with psycopg.connect(infra_env.libpq_url, connect_timeout=10) as conn:
        row = conn.execute("select version()").fetchone()
    assert row is not None
    assert row[0].startswith("PostgreSQL ")


def test_login_role_needs_its_password_over_tcp(infra_env: InfraEnv) -> None:
    """A login role with a password connects over TCP with it and is refused with a wrong one."""
    role = f"infra_test_{uuid.uuid4().hex[:12]}"
    password = secrets.token_urlsafe(18)
    host = str(conninfo_to_dict(infra_env.libpq_url).get("host", ""))
    assert host, "the database URL must name a host"
    assert not host.startswith("/"), f"the database URL must be TCP, not a socket: {host}"
    with psycopg.connect(infra_env.libpq_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        # The control-plane migration revokes CONNECT from PUBLIC on this database.
        admin.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(str(conninfo_to_dict(infra_env.libpq_url).get("dbname", "postgres"))),
                sql.Identifier(role),
            )
        )
    try:
        with psycopg.connect(_as_role(infra_env, role, password)) as conn:
            assert conn.execute("select current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(_as_role(infra_env, role, f"not-{password}"))
    finally:
        with psycopg.connect(infra_env.libpq_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_local_up_again_is_a_no_op(infra_handle: InfraHandle, local_infra: LocalInfra) -> None:
    """A second LocalInfra.up() leaves the running servers alone, says they already run and that
    the roles are in place, and returns the roles' settings again."""
    infra = local_infra
    before = infra.status()
    assert all(state.startswith("running pid ") for state in before.values()), before

    lines: list[str] = []
    assert infra.up(progress=lines.append) == infra.env()

    assert lines == [
        f"kafka already running on {infra_handle.env.bootstrap_servers}",
        f"postgres already running on 127.0.0.1:{infra.postgres.port}",
        "postgres: roles provision_owner and provision_app on the control plane, "
        "provision_tenant_admin on 1 cluster",
    ]
    assert infra.status() == before
    assert infra_handle.env == infra.env(superuser=True), "the suite's own session is the superuser"


def test_local_up_records_one_cluster_and_one_broker(local_infra: LocalInfra) -> None:
    """The default `up` records one cluster and one broker in topology.json, keeps today's layout
    and status names, and writes no tenant cluster map."""
    assert read_topology(local_infra.state_dir) == Topology()
    assert list(local_infra.status()) == ["kafka", "postgres"]
    assert (local_infra.kafka.home.name, local_infra.postgres.home.name) == ("kafka", "postgres")
    assert not local_infra.clusters_file.exists()
    assert set(local_infra.env().as_env()) == {
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "TENANT_DATABASE_URL",
        "PROVISION_MIGRATION_DATABASE_URL",
    }
    assert set(local_infra.env(superuser=True).as_env()) == {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}


def test_local_up_records_what_local_mode_reads(local_infra: LocalInfra) -> None:
    """`up` records the connection settings it prints (0600) in the state dir, and local mode
    reads them back: the same addresses and roles' URLs; the superuser's, with its password, beside."""
    for superuser in (False, True):
        recorded = local_env_path(local_infra.state_dir, superuser=superuser)
        assert stat.S_IMODE(recorded.stat().st_mode) == 0o600
        assert (
            read_local_env(local_infra.state_dir, superuser=superuser)
            == local_infra.env(superuser=superuser).as_env()
        )
    password = local_infra.password_file.read_text().strip()
    assert f"postgres:{password}@" in read_local_env(local_infra.state_dir, superuser=True)["DATABASE_URL"]
    assert make_url(read_local_env(local_infra.state_dir)["DATABASE_URL"]).username == APP


def test_local_postgres_superuser_needs_the_password_from_the_file(local_infra: LocalInfra) -> None:
    """The local superuser is refused over TCP without a password or with a wrong one, and let in
    with the one kept in the state directory."""
    port = local_infra.postgres.port
    no_password = make_conninfo(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", passfile=os.devnull, connect_timeout=10
    )
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(no_password)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo(no_password, password="postgres"))
    password = local_infra.password_file.read_text().strip()
    with psycopg.connect(make_conninfo(no_password, password=password)) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    assert f":{password}@" in local_infra.env(superuser=True).database_url


def test_local_state_is_private(local_infra: LocalInfra) -> None:
    """The state dir, the Kafka and PostgreSQL dirs are 0700 (the state dir owned by the server's
    user when root runs postgres as another user) and the password file is 0600."""
    state = local_infra.state_dir.stat()
    assert stat.S_IMODE(state.st_mode) == 0o700
    owner = local_infra.postgres.server_owner()
    assert (state.st_uid, state.st_gid) == (owner if owner is not None else (os.geteuid(), state.st_gid))
    for directory in (
        local_infra.kafka.home,
        local_infra.kafka.data,
        local_infra.postgres.home,
        local_infra.postgres.pgdata,
    ):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(local_infra.password_file.stat().st_mode) == 0o600
    assert "trust" not in (local_infra.postgres.pgdata / "pg_hba.conf").read_text().replace("# ", "")


def test_cluster_trusting_its_superuser_is_made_to_require_the_password(local_infra: LocalInfra) -> None:
    """Starting a cluster whose pg_hba.conf still trusts the superuser (an earlier version's) sets the
    password and replaces the rules: afterwards a password-less connection is refused."""
    home = local_infra.state_dir / "legacy-test" / "postgres"
    postgres = LocalPostgres(home, local_infra.postgres.port + 7)
    bare = make_conninfo(
        f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres", passfile=os.devnull, connect_timeout=10
    )
    try:
        postgres.start()
        postgres.stop()
        (postgres.pgdata / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        lines: list[str] = []
        postgres.start(progress=lines.append)
        assert "postgres: requiring passwords for every role, the superuser included" in lines
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(bare)
        with psycopg.connect(make_conninfo(bare, password=postgres.password())) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        postgres.stop()
        shutil.rmtree(home.parent, ignore_errors=True)


def _infra_env_cli(infra: LocalInfra, *args: str) -> dict[str, str]:
    """What `provision infra env` prints for ``infra``, as a dict."""
    result = CliRunner().invoke(build_infra_app(lambda: infra), ["env", *args])
    assert result.exit_code == 0, result.output
    return {
        name: shlex.split(value)[0]
        for name, _, value in (line.partition("=") for line in result.output.splitlines())
    }


def _who(url: str) -> tuple[str, bool]:
    """The role a URL logs in as and whether it is a superuser, asked of the server."""
    with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row is not None
    return str(row[0]), bool(row[1])


def test_infra_env_prints_the_roles_urls(local_infra: LocalInfra) -> None:
    """`infra env` prints DATABASE_URL as provision_app, TENANT_DATABASE_URL as provision_tenant_admin
    and PROVISION_MIGRATION_DATABASE_URL as provision_owner, none a superuser; `--superuser` the
    superuser's DATABASE_URL alone."""
    env = _infra_env_cli(local_infra)
    assert _who(env["DATABASE_URL"]) == (APP, False)
    assert _who(env["TENANT_DATABASE_URL"]) == (TENANT_ADMIN, False)
    assert _who(env["PROVISION_MIGRATION_DATABASE_URL"]) == (OWNER, False)
    superuser = _infra_env_cli(local_infra, "--superuser")
    assert _who(superuser["DATABASE_URL"]) == ("postgres", True)
    assert not {"TENANT_DATABASE_URL", "PROVISION_MIGRATION_DATABASE_URL"} & set(superuser)


def test_a_second_up_keeps_the_roles_passwords(local_infra: LocalInfra) -> None:
    """Another `up` keeps postgres.roles (0600) and the URLs, and sets a role's kept password again
    when someone changed it."""
    kept = local_infra.roles.passwords_file.read_text()
    before = local_infra.env()
    with psycopg.connect(local_infra.env(superuser=True).libpq_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} PASSWORD 'changed-by-hand'").format(sql.Identifier(APP)))
    local_infra.up()
    assert local_infra.roles.passwords_file.read_text() == kept
    assert stat.S_IMODE(local_infra.roles.passwords_file.stat().st_mode) == 0o600
    assert local_infra.env() == before
    assert _who(before.database_url) == (APP, False)


def test_the_app_role_cannot_create_a_table_and_the_owner_migrates(local_infra: LocalInfra) -> None:
    """As `infra env`'s DATABASE_URL no table can be made; as its migration URL the migrations run
    and leave every control-plane table the owner's, which the app role then reads."""
    local_infra.up()  # hands what the suite migrated as the superuser to the owner
    env = local_infra.env()
    with (
        psycopg.connect(libpq_url(env.database_url), autocommit=True, connect_timeout=10) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CREATE TABLE app_was_here (id int)")
    assert env.migration_database_url is not None
    engine = make_engine(env.migration_database_url)
    try:
        migrate(engine)
        assert current_revision(engine) is not None
    finally:
        engine.dispose()
    with psycopg.connect(local_infra.env(superuser=True).libpq_url, connect_timeout=10) as admin:
        owners = admin.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        ).fetchall()
    assert owners == [(OWNER,)]
    with psycopg.connect(libpq_url(env.database_url), connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) >= 0 FROM provisioning_steps").fetchone() == (True,)


def _as_role(infra_env: InfraEnv, role: str, password: str) -> str:
    """The session's database URL with another role and password (same host, port, database)."""
    return make_conninfo(infra_env.libpq_url, user=role, password=password, connect_timeout=10)


def _consume_one(bootstrap_servers: str, topic: str, timeout: float) -> Message:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"infra-test-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            return message
    finally:
        consumer.close()
    pytest.fail(f"no record arrived on {topic} within {timeout:.0f} s")
