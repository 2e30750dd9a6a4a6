"""Run one step's consumer: the wiring of ``provision worker <step>`` and ``python -m services.<step>``."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from services.bootstrap import ConfigurationError, build_app
from shared.kafka import StepWorker, relay_outbox
from shared.kafka.runtime import CommittedOffsets
from shared.logging import configure_logging
from shared.observability import Health, Metrics, serve_http
from shared.settings import Settings
from shared.steps import step_by_key


def run_worker(step_key: str, settings: Settings | None = None) -> None:
    """Consume the step's input and retry topics until SIGTERM/SIGINT.

    Raises ConfigurationError when KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL is missing and local
    mode (``PROVISION_LOCAL``) is off.
    """
    settings = settings or Settings()
    step = step_by_key(step_key)
    # First, so a worker without its addresses refuses (ConfigurationError) before anything else.
    app = build_app(settings)
    configure_logging(settings.log_level, settings.log_format)
    metrics, health = Metrics(), Health()
    server = serve_http(settings.metrics_port, metrics, health) if settings.metrics_port else None
    # The first step also relays the request outbox, so a request whose publish failed at
    # request time still goes out.
    relay = (lambda: relay_outbox(app.engine, app.publisher)) if step_key == "database" else None
    committed = CommittedOffsets()
    worker = StepWorker(
        app.specs[step.key],
        consumer=app.consumer(step.consumer_group, on_commit=committed.on_commit),
        publisher=app.publisher,
        store=app.repository,
        options=app.worker_options(),
        metrics=metrics,
        health=health,
        outbox_relay=relay,
        committed=committed,
    )
    worker.install_signal_handlers()
    try:
        worker.run()
    finally:
        if server is not None:
            server.shutdown()
        app.close()


def main(step_key: str) -> None:
    """``python -m services.<step>``: run the worker; bad configuration is one line on
    stderr and exit code 2, never a traceback."""
    try:
        settings = Settings()
        run_worker(step_key, settings)
    except ConfigurationError as exc:
        _refuse(str(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        _refuse(f"invalid setting {where}: {first['msg']}")


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
