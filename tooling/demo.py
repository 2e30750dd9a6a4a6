"""``provision demo``: everything end to end on the local defaults. It starts the local servers
it lacks, migrates, creates the topics, starts the seven workers as separate processes, requests
one project, shows its progress live, prints the result and stops exactly what it started."""

from __future__ import annotations

import json
import signal
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from services.bootstrap import App, build_app, worker_environment
from services.cli.follow import follow
from services.usecases.queries import project_result
from services.usecases.requests import request_provisioning
from shared.db.migrator import migrate as run_migrations
from shared.domain.acls import ADMIN, user_name
from shared.domain.naming import validate_project_id
from shared.domain.steps import all_topics
from shared.kafka import ensure_topics
from shared.settings import Settings
from tooling.fleet import WorkerFleet, step_identities
from tooling.infra import LocalInfra, local_infra, uses_local_servers
from tooling.output import Failure, UsageError, err, errors, local_settings, out


def demo(
    project_id: Annotated[str | None, typer.Option(help="Project id (default: demo-<random>).")] = None,
    region: Annotated[str, typer.Option(help="Region.")] = "eu-west-1",
    keep_infra: Annotated[
        bool, typer.Option("--keep-infra", help="Leave Kafka and PostgreSQL running.")
    ] = False,
) -> None:
    """Everything end to end on the local defaults: infra up, migrate, topics, the seven
    workers as separate processes, one request, live progress, the result, shutdown."""

    started = time.monotonic()
    with errors():
        # Every argument and setting is checked before anything starts.
        settings = local_settings()  # local by nature: it starts the servers it lacks
        pid = validate_project_id(project_id) if project_id else f"demo-{uuid.uuid4().hex[:6]}"
        if region not in settings.regions:
            raise UsageError(f"region {region!r} is not one of {', '.join(sorted(settings.regions))}")
        # SIGTERM unwinds like Ctrl-C, so everything started below is stopped again.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        with ExitStack() as cleanup:
            _demo(settings, pid, region, keep_infra=keep_infra, cleanup=cleanup)
    err.print(f"demo finished in {time.monotonic() - started:.1f} s")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _demo(settings: Settings, pid: str, region: str, *, keep_infra: bool, cleanup: ExitStack) -> None:
    """The demo's work; each thing it starts registers its own stop on ``cleanup`` first,
    so any exit (an error, a port taken, Ctrl-C, SIGTERM) stops exactly what it started."""
    infra = local_infra(settings)
    local = uses_local_servers(settings)
    if local:
        before = infra.status()
        if not keep_infra:
            cleanup.callback(_stop_started, infra, before)
        infra.up(_infra_progress)
    a = build_app(settings, principal=user_name(ADMIN))  # it creates the topics
    cleanup.callback(a.close)
    applied = run_migrations(a.migration_engine)  # as the tables' owner, where the servers have one
    err.print(f"migrations: {', '.join(applied) if applied else 'up to date'}")
    _ = a.box  # the key checked (recorded the first time) before any worker starts
    ensure_topics(
        a.bootstrap_servers,
        all_topics(),
        partitions=a.settings.topic_partitions,
        replication=a.settings.topic_replication,
        min_insync_replicas=a.settings.topic_min_insync_replicas,
        security=a.kafka_config,
    )
    err.print(f"topics: {len(all_topics())} ready")
    log_dir = Path(settings.state_dir) / "logs"
    env = {
        **(infra.env().worker_env() if local else {}),  # the local tenant clusters' URLs
        **worker_environment(a.settings, bootstrap_servers=a.bootstrap_servers, database_url=a.database_url),
        **a.secret_key_env(),  # in local mode the state directory's key: the workers never make one up
    }
    fleet = WorkerFleet(env, log_dir, identities=step_identities(infra) if local else {})
    cleanup.callback(_stop_workers, fleet)
    fleet.start()
    err.print(f"workers: {len(fleet.procs)} started (logs in {log_dir}/)")
    receipt = request_provisioning({"project_id": pid, "region": region}, app=a)
    out.print(f"requested {pid} (correlation_id {receipt.correlation_id})")
    follow(a, pid, timeout=180)
    out.print()
    out.print_json(json.dumps(_final_result(a, pid)))


def _stop_workers(fleet: WorkerFleet) -> None:
    codes = fleet.stop(30)
    if codes:
        err.print(f"workers: stopped ({', '.join(str(code) for code in codes.values())})")


def _infra_progress(line: str) -> None:
    err.print(f"[dim]infra:[/dim] {line}", highlight=False)


def _stop_started(infra: LocalInfra, before: dict[str, str]) -> None:
    """Stop the servers that were not running before the demo (a partial start included)."""
    if not before["kafka"].startswith("running"):
        infra.stop_kafka(_infra_progress)
    if not before["postgres"].startswith("running"):
        infra.stop_postgres(_infra_progress)


def _final_result(a: App, project_id: str) -> dict[str, Any]:
    """The result the verify step published, read back from its stored outcome."""
    result = project_result(project_id, app=a)
    if result is None:
        raise Failure(f"{project_id} has no result")
    return result
