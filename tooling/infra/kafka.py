"""A local Apache Kafka node (KRaft, broker and controller in one JVM) run from plain jars.

One node makes a single-node cluster; three nodes, each listing all three as voters, make a
three-node quorum (see :class:`tooling.infra.local.LocalInfra`). Layout under a node's home
directory (``<state dir>/kafka`` for the single node)::

    pom.xml            copy of the packaged pom that Maven resolved (single node, or the node owning libs/)
    libs/              the broker classpath; libs/.pom.sha256 says which pom produced it
    cluster.id         KRaft cluster id, generated once (shared by every node of a quorum)
    server.properties  rewritten on every start from the configured ports
    data/              the log directory (topics, offsets, KRaft metadata)
    broker.pid         pid of the running broker
    broker.log         stdout/stderr of the current run; broker.log.1 holds the previous run

Its size (over 400 lines) is one object's: the node's life from jars to stop (resolve the
classpath, write the properties, format, launch, wait until ready, stop), each step reading
and writing the same files of the layout above. Split, each part would reach into the others'.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tooling.infra._common import (
    CONTROLLER_PORT_ENV,
    KAFKA_PORT_ENV,
    LOOPBACK,
    InfraError,
    Progress,
    ensure_port_free,
    live_process,
    port_accepts,
    private_dir,
    quiet,
    tail,
)
from tooling.infra.secure import ADMIN_USER, BrokerSecurity, internal_port, mtls_port

_HEAP = "-Xmx512m"
_MAVEN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0

# Brokers launched by this Python process, so stopping one can reap it (no zombie) and the
# Popen object is not collected while its child still runs (which warns).
_launched: dict[int, subprocess.Popen[bytes]] = {}


def _probe_logger() -> logging.Logger:
    """A logger that swallows librdkafka's messages.

    While the broker boots, every readiness probe logs "connection refused" and similar
    at error level; they are expected and would otherwise spill onto the user's terminal.
    """
    logger = logging.getLogger("tooling.infra.kafka.probe")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID as 22 characters of unpadded url-safe base64."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def wait_until_ready(
    bootstrap_servers: str,
    timeout: float,
    *,
    still_starting: Callable[[], str | None] | None = None,
    log_file: Path | None = None,
    node_id: int | None = None,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Block until a broker at ``bootstrap_servers`` answers a metadata request (as a client
    with the ``security`` keys of :func:`shared.kafka.security.client_security`, if given;
    plaintext otherwise).

    "Answers" means the metadata lists at least one broker (``node_id`` among them, if
    given): a KRaft broker only appears there once the controller has unfenced it, i.e.
    once it can host partitions.
    ``still_starting`` is polled between attempts; it returns a reason string when the
    broker can no longer come up (its process died), which is raised at once instead of
    waiting out the timeout. Raises InfraError on timeout, quoting the end of ``log_file``.
    """
    deadline = time.monotonic() + timeout
    host, _, port_text = bootstrap_servers.split(",", maxsplit=1)[0].rpartition(":")
    admin: AdminClient | None = None
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if still_starting is not None and (reason := still_starting()) is not None:
            raise InfraError(reason)
        # Creating the client before the port opens only produces reconnect noise.
        if admin is None and host in (LOOPBACK, "localhost") and not port_accepts(int(port_text)):
            time.sleep(0.1)
            continue
        if admin is None:
            admin = AdminClient(
                {
                    "bootstrap.servers": bootstrap_servers,
                    "socket.timeout.ms": 2000,
                    # The listener accepts connections before the broker serves requests; the
                    # default back-off (growing to 10 s) would notice a ready broker seconds late.
                    "reconnect.backoff.max.ms": 500,
                    **(security or {}),
                },
                logger=_probe_logger(),
            )
        try:
            metadata = admin.list_topics(timeout=2)
        except KafkaException as exc:
            last_error = str(exc.args[0]) if exc.args else repr(exc)
        else:
            if metadata.brokers and (node_id is None or node_id in metadata.brokers):
                return
            last_error = (
                "metadata lists no brokers yet" if not metadata.brokers else f"node {node_id} not listed yet"
            )
        time.sleep(0.2)
    log_tail = f"; log {log_file}: {tail(log_file)}" if log_file is not None else ""
    raise InfraError(
        f"kafka at {bootstrap_servers} did not answer a metadata request within "
        f"{timeout:.0f} s ({last_error}){log_tail}"
    )


@dataclass(frozen=True)
class Quorum:
    """The nodes of a multi-node KRaft cluster, for every node's configuration.

    ``voters`` are ``(node id, controller port)`` pairs; ``cluster_id_file`` is shared by all
    nodes (they must be formatted with one cluster id); ``libs`` is the one broker classpath.
    """

    voters: tuple[tuple[int, int], ...]
    cluster_id_file: Path
    libs: Path

    @property
    def replicas(self) -> int:
        """How many copies internal topics keep: one per node."""
        return len(self.voters)


class KafkaBroker:
    """Start, stop and inspect one local broker whose files live under ``home``.

    Without ``quorum`` it is a single-node cluster (node id 1) owning its classpath and
    cluster id; with one it is node ``node_id`` of that quorum.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        controller_port: int,
        *,
        node_id: int = 1,
        quorum: Quorum | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.home = home
        self.security = security
        self.port = port
        self.controller_port = controller_port
        self.node_id = node_id
        self.quorum = quorum
        self.libs = quorum.libs if quorum is not None else home / "libs"
        self.data = home / "data"
        self.properties = home / "server.properties"
        self.pid_file = home / "broker.pid"
        self.log_file = home / "broker.log"
        self.cluster_id_file = quorum.cluster_id_file if quorum is not None else home / "cluster.id"
        self._spawned_at: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def mtls_bootstrap_servers(self) -> str:
        """In secure mode, the address of the listener that takes client certificates."""
        return f"{LOOPBACK}:{mtls_port(self.port)}"

    @property
    def probe_servers(self) -> str:
        """Where readiness is probed: the client port, or in secure mode the MTLS listener (as
        provision-admin by its certificate: the client listener's users are set only once the
        broker answers, see :meth:`_create_users`)."""
        return self.bootstrap_servers if self.security is None else self.mtls_bootstrap_servers

    @property
    def probe_security(self) -> dict[str, str]:
        """The probe's client settings: none, or in secure mode the administrator's certificate."""
        return {} if self.security is None else self.security.certificate_config(ADMIN_USER)

    @property
    def name(self) -> str:
        """How progress lines name this node: ``kafka``, or ``kafka-<index>`` in a quorum (node
        id ``index + 1``)."""
        return "kafka" if self.quorum is None else f"kafka-{self.node_id - 1}"

    # -- inspection ---------------------------------------------------------------------------

    def running_pid(self) -> int | None:
        """Pid of this home's broker if it is running, else None.

        The pid file alone is not trusted: the pid may have been reused by an unrelated
        process after a crash or reboot, so the process must also be a ``kafka.Kafka``
        JVM started with this home's server.properties.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        popen = _launched.get(pid)
        if popen is not None:
            if popen.poll() is None:
                # Our own unreaped child keeps its pid, so it is the broker; its command line is
                # not checked because it can read as empty for a moment after the exec.
                return pid
            del _launched[pid]  # our own child exited; poll() reaped it
            return None
        process = live_process(pid)
        if process is None:
            return None
        try:
            cmdline = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if "kafka.Kafka" in cmdline and str(self.properties) in cmdline:
            return pid
        return None

    def running_port(self) -> int | None:
        """The client port the running broker was started with (from its server.properties)."""
        try:
            lines = self.properties.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            if line.startswith("advertised.listeners="):
                return int(line.rpartition(":")[2])
        return None

    def status(self) -> str:
        """One line: ``running pid N on 127.0.0.1:P`` or ``stopped``."""
        pid = self.running_pid()
        if pid is None:
            return "stopped"
        return f"running pid {pid} on {LOOPBACK}:{self.running_port() or self.port}"

    # -- start ----------------------------------------------------------------------------------

    def start(self, progress: Progress = quiet, timeout: float = 60.0) -> None:
        """Start the broker if needed and return once it answers metadata requests."""
        if self.launch(progress):
            self.wait_ready(progress, timeout)

    def launch(self, progress: Progress = quiet) -> bool:
        """Start the broker process without waiting for it to be ready.

        Returns False (and says so) when this home's broker is already running. Split
        from :meth:`wait_ready` so PostgreSQL can start while the JVM boots.
        """
        pid = self.running_pid()
        if pid is not None:
            running_port = self.running_port()
            if running_port not in (None, self.port):
                raise InfraError(
                    f"{self.name} is already running on {LOOPBACK}:{running_port}, not port "
                    f"{self.port}; run `down` first to change {KAFKA_PORT_ENV}"
                )
            progress(f"{self.name} already running on {self.bootstrap_servers}")
            return False
        if self.pid_file.exists():
            self.pid_file.unlink()
            progress(f"{self.name}: removed a stale pid file (the broker it named is gone)")

        java = _java()
        ensure_port_free(self.port, KAFKA_PORT_ENV)
        ensure_port_free(self.controller_port, CONTROLLER_PORT_ENV)
        if self.security is not None:
            ensure_port_free(mtls_port(self.port), KAFKA_PORT_ENV)
            ensure_port_free(internal_port(self.port), KAFKA_PORT_ENV)
        # Owner-only: the topics hold tenant provisioning events.
        private_dir(self.home)
        private_dir(self.data)
        self.ensure_libs(progress)
        self._write_properties()
        self._ensure_formatted(java, progress)

        if self.log_file.exists():
            # Keep the previous run's log: after a crash it is the one worth reading.
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    java,
                    _HEAP,
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={_packaged('log4j2.yaml')}",
                    *(self.security.jvm_options() if self.security is not None else []),
                    "-cp",
                    f"{self.libs}{os.sep}*",
                    "kafka.Kafka",
                    str(self.properties),
                ],
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal that ran `up` must not reach it.
                start_new_session=True,
            )
        _launched[process.pid] = process
        self._spawned_at = time.monotonic()
        self.pid_file.write_text(f"{process.pid}\n")
        progress(f"{self.name} starting on {self.bootstrap_servers} (pid {process.pid})")
        return True

    def wait_ready(self, progress: Progress = quiet, timeout: float = 60.0) -> None:
        """Wait until the launched broker answers metadata requests, or raise InfraError.

        ``timeout`` counts from the launch, and so does the start-up time reported.
        """
        spawned_at = self._spawned_at if self._spawned_at is not None else time.monotonic()

        def still_starting() -> str | None:
            if self.running_pid() is None:
                return (
                    f"{self.name} broker exited during start-up (log {self.log_file}): {tail(self.log_file)}"
                )
            return None

        def remaining() -> float:
            return max(0.0, spawned_at + timeout - time.monotonic())

        try:
            wait_until_ready(
                self.probe_servers,
                remaining(),
                still_starting=still_starting,
                log_file=self.log_file,
                node_id=self.node_id if self.quorum is not None else None,
                security=self.probe_security,
            )
            if self.security is not None:
                self._create_users(self.security, progress, remaining)
        except InfraError:
            # A failed start leaves nothing behind: no half-started JVM holding the ports,
            # no pid file for the next run to puzzle over.
            self.stop(quiet, timeout=10.0)
            raise
        progress(
            f"{self.name} ready on {self.bootstrap_servers} in {time.monotonic() - spawned_at:.1f} s "
            f"(pid {self.running_pid()})"
        )

    def _create_users(
        self, security: BrokerSecurity, progress: Progress, remaining: Callable[[], float]
    ) -> None:
        """Secure mode: set the SCRAM users over mTLS, then wait until the client listener takes
        provision-admin's password (the broker applies the new credentials a moment after the
        controller commits them)."""
        count = security.create_users(self.mtls_bootstrap_servers, timeout=max(1.0, remaining()))
        wait_until_ready(
            self.bootstrap_servers,
            remaining(),
            log_file=self.log_file,
            security=security.client_config(self.bootstrap_servers, ADMIN_USER),
        )
        progress(f"{self.name}: {count} SCRAM users set as {ADMIN_USER} over mTLS")

    def ensure_libs(self, progress: Progress = quiet) -> None:
        """Resolve the broker classpath with Maven unless this pom's jars are already cached."""
        pom_text = _packaged("pom.xml").read_bytes()
        digest = hashlib.sha256(pom_text).hexdigest()
        marker = self.libs / ".pom.sha256"
        if marker.is_file() and marker.read_text().strip() == digest:
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError(
                "mvn not found on PATH; install Maven (Debian: apt-get install maven) "
                "to fetch the Kafka broker jars"
            )
        progress("kafka: fetching broker jars with Maven (first run only)")
        owner = self.libs.parent
        private_dir(owner)
        pom = owner / "pom.xml"
        pom.write_bytes(pom_text)
        # Resolve into a scratch directory and swap it in, so an interrupted download
        # never leaves a half-filled libs/ that looks complete.
        staging = owner / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            result = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-Dstyle.color=never",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging}",
                ],
                cwd=owner,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_MAVEN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(
                f"Maven did not finish fetching the Kafka jars within {_MAVEN_TIMEOUT_S:.0f} s"
            ) from exc
        if result.returncode != 0 or not any(staging.glob("kafka_*.jar")):
            output = " | ".join(
                line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()
            )
            raise InfraError(
                f"Maven could not fetch the Kafka jars (exit {result.returncode}): {output[-600:]}"
            )
        (staging / ".pom.sha256").write_text(f"{digest}\n")
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)

    def _write_properties(self) -> None:
        # Regenerated on every start so a port change takes effect; the data directory
        # carries the cluster's identity, not this file.
        voters = self.quorum.voters if self.quorum is not None else ((self.node_id, self.controller_port),)
        replicas = str(len(voters))
        # With three copies, a write acknowledged by all in-sync replicas survives one node's loss.
        min_isr = "2" if len(voters) >= 3 else "1"
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(f"{node}@{LOOPBACK}:{port}" for node, port in voters),
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": "1",
            # Internal topics keep one replica per node: one for a single broker, three for a quorum.
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # After a crash the restarted broker cannot register until the dead incarnation's
            # session expires (default 9 s); fault tests kill and restart the broker, so keep
            # that short. The broker heartbeats its own in-process controller over loopback.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "3000",
            # Consumers in tests join one at a time; do not hold the first rebalance back.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created explicitly by the product; a typo must fail, not create one.
            "auto.create.topics.enable": "false",
        }
        if self.quorum is not None:
            # Defaults for topics created without them (the product sets both explicitly); a
            # single broker keeps Kafka's own defaults, which are the same numbers.
            settings["default.replication.factor"] = replicas
            settings["min.insync.replicas"] = min_isr
        if self.security is not None:
            settings.update(self.security.properties(self.home, self.port, self.controller_port))
        self.properties.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    def cluster_id(self) -> str:
        """The KRaft cluster id, generated on first use; every node of a quorum shares the file,
        and the first to create it wins, so nodes formatted at once agree."""
        if not self.cluster_id_file.is_file():
            # Written aside and linked into place: the file never exists half-written, and a
            # link fails if another node's id got there first.
            draft = self.cluster_id_file.with_name(f".cluster.id.{os.getpid()}.{uuid.uuid4().hex}")
            draft.write_text(f"{new_cluster_id()}\n")
            with suppress(FileExistsError):
                os.link(draft, self.cluster_id_file)
            draft.unlink()
        return self.cluster_id_file.read_text().strip()

    def _ensure_formatted(self, java: str, progress: Progress) -> None:
        if (self.data / "meta.properties").is_file():
            return
        cluster_id = self.cluster_id()
        progress(f"{self.name}: formatting storage in {self.data} (cluster id {cluster_id})")
        result = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={_packaged('log4j2.yaml')}",
                "-cp",
                f"{self.libs}{os.sep}*",
                "kafka.tools.StorageTool",
                "format",
                # One argument: an id that starts with "-" (1 in 64) is otherwise an option.
                f"--cluster-id={cluster_id}",
                f"--config={self.properties}",
            ],
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FORMAT_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            output = " | ".join(line.strip() for line in (result.stdout + result.stderr).splitlines() if line)
            raise InfraError(f"formatting kafka storage failed: {output[-600:]}")

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, progress: Progress = quiet, *, force: bool = False, timeout: float = 30.0) -> None:
        """Stop the broker: SIGTERM (controlled shutdown), then SIGKILL after ``timeout``.

        ``force`` sends SIGKILL straight away, simulating a crash. Not running is not an error.
        """
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            progress(f"{self.name} is not running")
            return
        stopped_at = time.monotonic()
        if force:
            _signal(pid, signal.SIGKILL)
            _wait_exit(pid, timeout)
            how = "killed"
        else:
            _signal(pid, signal.SIGTERM)
            if _wait_exit(pid, timeout):
                how = "stopped"
            else:
                progress(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM; killing it")
                _signal(pid, signal.SIGKILL)
                _wait_exit(pid, 10.0)
                how = "killed"
        self.pid_file.unlink(missing_ok=True)
        progress(f"{self.name} {how} (pid {pid}) in {time.monotonic() - stopped_at:.1f} s")

    def wipe(self) -> None:
        """Delete the broker's data, cluster id and logs, keeping the cached jars."""
        if self.running_pid() is not None:
            raise InfraError(f"{self.name} is running; stop it before wiping its data")
        shutil.rmtree(self.data, ignore_errors=True)
        for path in (
            self.cluster_id_file,
            self.properties,
            self.pid_file,
            self.log_file,
            self.log_file.with_name(self.log_file.name + ".1"),
        ):
            path.unlink(missing_ok=True)


def _packaged(name: str) -> Path:
    """Path of a data file shipped in this package (pom.xml, log4j2.yaml)."""
    path = Path(str(resources.files("tooling.infra").joinpath(name)))
    if not path.is_file():
        raise InfraError(f"packaged file {name} is missing from tooling.infra; reinstall it")
    return path


def _java() -> str:
    """The java executable: $JAVA_HOME/bin/java if set, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (candidate := Path(java_home) / "bin" / "java").is_file():
        return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise InfraError(
            "java not found on PATH or in JAVA_HOME; install Java 17+ "
            "(Debian: apt-get install openjdk-17-jre-headless) to run the local Kafka broker"
        )
    return java


def _signal(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # it may have exited on its own meanwhile
        os.kill(pid, signum)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit, reaping it if this process started it. True if it exited."""
    popen = _launched.get(pid)
    if popen is not None:
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        del _launched[pid]
        return True
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True
