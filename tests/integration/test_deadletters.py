"""``provision deadletters`` on the real broker: a poison request dead-lettered by a running
worker, listed and shown, redriven once after the fix, parked on a second failure, purged by age;
and the dead-letter topics' retention kept by ``provision topics``.

The poison is a request too large for the worker's PROVISION_MAX_MESSAGE_BYTES (a request may
take a quarter of it): the database worker started with 4 KiB refuses it, and the fix is the
operator's own, restarting the worker with the default limit. Nothing is patched in the worker.
"""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.cli.setup import letter_configs
from services.usecases.deadletters import (
    REDRIVEN_HEADER,
    Filters,
    Letter,
    list_letters,
    parse_duration,
    ports_for,
    purge,
    redrive,
)
from shared.clock import utcnow
from shared.domain.events import ProvisioningRequested
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.steps import DEADLETTER_TOPIC, PARKED_TOPIC, REQUESTED_TOPIC, StepStatus
from shared.kafka import encode, read_to_end
from shared.kafka.codec import header_map
from shared.kafka.topics import align_configs
from shared.tracing import new_trace
from tests.support import TEST_SECRET_KEY, WorkerGroup, unique_project, wait_for

SMALL_LIMIT = "4096"  # a request may take 1024 bytes of it; the poison's takes about 2000


@pytest.fixture
def cli_env(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the command line at the session's servers."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", app.bootstrap_servers)
    monkeypatch.setenv("DATABASE_URL", app.database_url)
    monkeypatch.setenv("PROVISION_SECRET_KEY", TEST_SECRET_KEY)


@pytest.fixture
def small_database_worker(workers: WorkerGroup) -> WorkerGroup:
    """The database worker alone, refusing requests over a quarter of 4 KiB (stopped by ``workers``)."""
    workers.start(["database"], PROVISION_MAX_MESSAGE_BYTES=SMALL_LIMIT)
    return workers


def produce_poison(app: App, project_id: str) -> None:
    """A raw provisioning.requested whose request (~2 KB of metadata) a 4 KiB worker refuses."""
    request = ProvisionProjectPayload(
        project_id=project_id, region="eu-west-1", metadata={f"note{i}": "x" * 200 for i in range(8)}
    )
    event = ProvisioningRequested(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=project_id,
        correlation_id=uuid.uuid4(),
        request=request,
    )
    app.publisher.produce(REQUESTED_TOPIC, *encode(event, new_trace()))
    app.publisher.flush()


def letters_of(app: App, project_id: str) -> list[Letter]:
    """The letters on the dead-letter topic of that project, oldest first."""
    return list_letters(ports_for(app), Filters(project=project_id)).letters


def wait_letters(app: App, project_id: str, count: int) -> list[Letter]:
    """Wait until the project has ``count`` letters; return them."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (found := letters_of(app, project_id)) and len(found) >= count and found,
        timeout=60,
        message=lambda: f"{project_id}: {len(letters_of(app, project_id))} letter(s), expected {count}",
    )


def assert_listed_and_shown(first: Letter, project_id: str) -> None:
    """`deadletters list --json` has the letter's line; `show` decodes its original as JSON."""
    listed = CliRunner().invoke(cli, ["deadletters", "list", "--project", project_id, "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)["letters"]
    assert (row["id"], row["origin"], row["subject"], row["state"]) == (
        first.id,
        REQUESTED_TOPIC,
        project_id,
        "new",
    )
    shown = CliRunner().invoke(cli, ["deadletters", "show", first.id, "--json"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.output)
    assert body["original"]["encoding"] == "json"
    assert json.loads(body["original"]["text"])["request"]["project_id"] == project_id
    text = CliRunner().invoke(cli, ["deadletters", "show", first.id])
    assert "original (json):" in text.output
    assert f'"project_id": "{project_id}"' in text.output


def test_a_poison_is_listed_shown_redriven_once_after_the_fix_and_a_second_failure_parked(
    app: App, small_database_worker: WorkerGroup, cli_env: None
) -> None:
    """Dead-lettered by the worker; shown decoded; redriven unfixed it fails again and is parked;
    fixed (the worker's limit raised) it is redriven once and provisioned; purge takes the letters."""
    fixed, doomed = unique_project("dl-fixed"), unique_project("dl-doomed")
    produce_poison(app, fixed)
    produce_poison(app, doomed)
    [first] = wait_letters(app, fixed, 1)
    [doomed_first] = wait_letters(app, doomed, 1)
    assert first.origin == REQUESTED_TOPIC
    assert "over the limit of 1024 bytes" in first.letter.reason
    assert first.state == "new"

    assert_listed_and_shown(first, fixed)

    # The doomed one redriven without a fix: it fails again, with the redrive header kept.
    dry = CliRunner().invoke(cli, ["deadletters", "redrive", "--project", doomed])
    assert dry.exit_code == 0, dry.output
    assert "would redrive" in dry.output and "dry run" in dry.output
    ports = ports_for(app)
    [sent] = redrive(ports, Filters(project=doomed), dry_run=False)
    assert (sent.letter_id, sent.action) == (doomed_first.id, "redriven")
    again = wait_letters(app, doomed, 2)[1]
    assert (again.redriven_from, again.state) == (doomed_first.id, "failed again")
    decisions = redrive(ports, Filters(project=doomed), dry_run=False)
    assert [(d.letter_id, d.action) for d in decisions] == [
        (doomed_first.id, "skipped"),
        (again.id, "parked"),
    ]
    [parked] = list_letters(ports, Filters(project=doomed), parked=True).letters
    assert parked.parked is not None
    assert (parked.parked.letter_id, parked.parked.redriven_from) == (again.id, doomed_first.id)
    assert [d.action for d in redrive(ports, Filters(project=doomed), dry_run=False)] == [
        "skipped",
        "skipped",
    ]

    # The fix: the worker restarted with the default limit; the letter redriven, once.
    small_database_worker.stop()
    small_database_worker.start(["database"])
    applied = CliRunner().invoke(cli, ["deadletters", "redrive", "--project", fixed, "--apply", "--max", "1"])
    assert applied.exit_code == 0, applied.output
    assert f"redriven  {first.id} {REQUESTED_TOPIC} {fixed}" in applied.output
    wait_for(
        lambda: (
            (snap := app.repository.snapshot(fixed).step("create_tenant_database"))
            and snap.status is StepStatus.SUCCESS
        ),
        timeout=90,
        message=lambda: small_database_worker.logs("database")[-800:],
    )
    assert [d.action for d in redrive(ports, Filters(project=fixed), dry_run=False)] == ["skipped"]
    copies = [
        m
        for m in read_to_end(app.bootstrap_servers, [REQUESTED_TOPIC], security=app.kafka_config)
        if header_map(m.headers()).get(REDRIVEN_HEADER) == first.id
    ]
    assert len(copies) == 1
    assert len(letters_of(app, fixed)) == 1  # it did not fail again

    # Purge by age: nothing is a day old; everything before now goes.
    assert purge(ports, parse_duration("1d"), dry_run=True).count == 0
    purged = CliRunner().invoke(cli, ["deadletters", "purge", "--older-than", "0s", "--yes"])
    assert purged.exit_code == 0, purged.output
    assert "deleted" in purged.output
    assert letters_of(app, fixed) == letters_of(app, doomed) == []
    report = purge(ports, parse_duration("0s"), dry_run=True, parked=True)
    assert (report.topic, report.count >= 1) == (PARKED_TOPIC, True)


def test_provision_topics_gives_an_existing_dead_letter_topic_its_bounded_retention(
    app: App, cli_env: None
) -> None:
    """A dead-letter topic of another retention is altered by `provision topics`; again, nothing changes."""
    admin = AdminClient({"bootstrap.servers": app.bootstrap_servers, **app.kafka_config})
    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        DEADLETTER_TOPIC,
        incremental_configs=[ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([change])[change].result(timeout=10)
    first = CliRunner().invoke(cli, ["topics"])
    assert first.exit_code == 0, first.output
    assert f"{DEADLETTER_TOPIC}: retention set to 14 days" in first.output
    resource = ConfigResource(ConfigResource.Type.TOPIC, DEADLETTER_TOPIC)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    assert entries["retention.ms"].value == str(14 * 86400 * 1000)
    again = align_configs(app.bootstrap_servers, letter_configs(app.settings), security=app.kafka_config)
    assert again == {DEADLETTER_TOPIC: "unchanged", PARKED_TOPIC: "unchanged"}
