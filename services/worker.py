"""Run one step service's consumers: the wiring of ``provision worker <step>`` and
``python -m services.<step>``.

A step service takes part in every chain it has a step in: its provisioning step, its
deprovisioning (reverse) step and, for the database service, the purge, each with its own
consumer group, input and retry topics. By default one process runs them all, each consumer on
its own thread; ``chains`` narrows it down.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Collection
from types import FrameType

import structlog
from confluent_kafka import Consumer
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from services.bootstrap import App, ConfigurationError, build_app
from services.specs import SECRET_STEPS
from shared.domain.acls import user_name
from shared.domain.errors import StoreUnavailableError
from shared.domain.steps import ALL_STEPS, PLACING_STEP, PURGE_STEP, Chain, Step, resolve_step
from shared.kafka import Duty, Probe, StepWorker, queue_due_purges, relay_outbox
from shared.kafka.runtime import CommittedOffsets
from shared.logging import configure_logging
from shared.observability import Health, Metrics, serve_http
from shared.settings import Settings
from shared.tracing import install_exporter

log = structlog.get_logger("provision.worker")


def steps_of(service_or_step: str, chains: Collection[Chain] = tuple(Chain)) -> list[Step]:
    """The steps a worker runs: a service's step in each of ``chains``; a reverse step named
    on its own (``deprovision-keys``, ``revoke_api_keys``) alone. ValueError if unknown."""
    named = resolve_step(service_or_step)
    if named.chain is not Chain.PROVISIONING:
        return [named]
    return [s for s in ALL_STEPS if s.service == named.service and s.chain in chains]


def _check_secret_key(app: App) -> bool:
    """Check the secret key against the control plane's before consuming anything: a missing
    key, or another than the control plane's, refuses (ConfigurationError). While the control
    plane cannot be reached the check waits for it (0.5 s to 10 s apart), as a running worker
    would; False when SIGTERM/SIGINT came meanwhile."""
    stopped = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    delay = 0.5
    try:
        while True:
            try:
                _ = app.box
                return True
            except (StoreUnavailableError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning(
                    "control_plane_unavailable", error=message, retry_in_s=delay, during="secret_key_check"
                )
            if stopped.wait(delay):
                return False
            delay = min(delay * 2, 10.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_worker(
    step_key: str,
    settings: Settings,
    *,
    chains: Collection[Chain] = tuple(Chain),
    probe: Probe | None = None,
) -> None:
    """Consume the service's input and retry topics (of each chain) until SIGTERM/SIGINT.
    ``probe`` is handed to every step worker (``WorkerOptions.probe``); None, as in production,
    calls nothing.

    Raises ConfigurationError when KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL is missing and local
    mode (``PROVISION_LOCAL``) is off, and, for a step that uses secrets, when the secret key
    is missing or is not the control plane's.
    """
    steps = steps_of(step_key, chains)
    if not steps:
        wanted = ", ".join(chain.value for chain in chains)
        raise ConfigurationError(f"the {step_key} service has no step in the {wanted} chain")
    # First, so a worker without its addresses refuses (ConfigurationError) before anything else.
    app = build_app(settings, principal=user_name(steps[0].service))  # on a secure local broker
    configure_logging(settings.log_level, settings.log_format)
    if any(step.key in SECRET_STEPS for step in steps) and not _check_secret_key(app):
        app.close()  # stopped while the control plane was away: nothing was consumed
        return
    metrics, health = Metrics(), Health()
    server = None
    if settings.metrics_port:
        try:
            server = serve_http(settings.metrics_port, metrics, health)
        except OSError as exc:
            app.close()
            raise ConfigurationError(
                f"cannot serve metrics on port {settings.metrics_port}: {exc.strerror or exc}; "
                "set PROVISION_METRICS_PORT to a free port (unset: no metrics server)"
            ) from None
    # OTLP export when the standard OTEL_* variables ask for it; flushed once the workers end.
    stop_tracing = install_exporter(steps[0].service)
    workers = [_worker(app, step, metrics, health, probe) for step in steps]
    stop = _Stop(workers)
    signal.signal(signal.SIGTERM, stop.on_signal)
    signal.signal(signal.SIGINT, stop.on_signal)
    # The database service tops the clusters' warm pools up, on a thread of its own.
    refiller = app.pool_refiller().start() if PLACING_STEP in steps else None
    try:
        _run_all(workers, stop)
    finally:
        if refiller is not None:
            refiller.stop()
        if server is not None:
            server.shutdown()
        app.close()
        if stop_tracing is not None:
            stop_tracing()


def duties_of(app: App, step: Step) -> list[Duty]:
    """What a step's worker runs besides its messages. The chains' first step (the database
    service's provisioning step) relays the outbox, so a request whose publish failed at
    request time, or a purge the control plane queued, still goes out; the purge step queues
    the purges whose retention window has passed."""
    s = app.settings
    duties: list[Duty] = []
    if step is PLACING_STEP:
        duties.append(
            Duty("outbox_relay", s.outbox_interval_seconds, lambda: relay_outbox(app.engine, app.publisher))
        )
    if step is PURGE_STEP:
        # A trigger left unanswered past the stranded threshold (lost, or dead-lettered by a
        # bug) is queued again: the purge never waits on a message that will not come.
        requeue = max(s.lease_seconds, 120.0)
        duties.append(
            Duty(
                "purge_sweep",
                s.purge_sweep_seconds,
                lambda: queue_due_purges(app.projects, requeue_after_seconds=requeue),
            )
        )
    return duties


def _worker(app: App, step: Step, metrics: Metrics, health: Health, probe: Probe | None) -> StepWorker:
    committed = CommittedOffsets()

    def new_consumer() -> Consumer:
        return app.consumer(step.consumer_group, on_commit=committed.on_commit)

    return StepWorker(
        app.spec(step.key),
        consumer=new_consumer(),
        new_consumer=new_consumer,
        security=app.kafka_config,
        publisher=app.publisher,
        store=app.repository,
        # Options of its own, so each step's consumer holds its leases under an owner of its own.
        options=dataclasses.replace(app.worker_options(), probe=probe),
        metrics=metrics,
        health=health,
        duties=duties_of(app, step),
        committed=committed,
    )


class _Stop:
    """Stops every worker of the process: on a signal, or when one of them ends."""

    def __init__(self, workers: list[StepWorker]) -> None:
        self.workers = workers

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.all()

    def all(self) -> None:
        for worker in self.workers:
            worker.stop()


def _run_all(workers: list[StepWorker], stop: _Stop) -> None:
    """Run each worker on a thread of its own until all have ended; the first error ends
    them all and is raised once they have closed (committing what they stored)."""
    if len(workers) == 1:
        workers[0].run()
        return
    errors: list[BaseException] = []

    def run(worker: StepWorker) -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.all()

    threads = [threading.Thread(target=run, args=(w,), name=w.step.key, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.2)  # short joins: the main thread must stay free for signals
    if errors:
        raise errors[0]


def main(step_key: str, *, probe: Probe | None = None) -> None:
    """``python -m services.<step>``: run the worker; bad configuration is one line on
    stderr and exit code 2, never a traceback. ``probe`` as for :func:`run_worker`."""
    try:
        settings = Settings()
        run_worker(step_key, settings, probe=probe)
    except ConfigurationError as exc:
        _refuse(str(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        _refuse(f"invalid setting {where}: {first['msg']}")


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
