"""Bad input on the real broker: poison messages, hostile ids and duplicate requests are
refused or dead-lettered while the workers (separate processes) keep going."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from services.bootstrap import App
from services.usecases.payloads import InvalidRequestError
from services.usecases.requests import request_provisioning
from shared.db import libpq_url
from shared.domain.events import DeadLettered
from shared.domain.records import ConflictingRequestError
from shared.domain.steps import (
    DEADLETTER_TOPIC,
    REQUESTED_TOPIC,
)
from tests.e2e.faults import assert_each_side_effect_once
from tests.e2e.kafka_tools import produce_raw, read_all
from tests.support import WorkerGroup, unique_project, wait_until_stage

pytestmark = pytest.mark.e2e

HOSTILE_IDS = [
    "x'; DROP TABLE projects; --",
    'quote"d',
    "semi;colon",
    "p\u0430yments",  # Cyrillic 'а', a look-alike of 'a'
    "a" * 200,
    "UPPER-case",
    "tenant_underscore",
]


def _raw_request(
    pid: str, *, correlation_id: str | None = None, region: str = "eu-west-1"
) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "provisioning.requested",
        "schema_version": 1,
        "occurred_at": "2026-11-22T10:00:00Z",
        "project_id": pid,
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "request": {"project_id": pid, "region": region},
    }


def _dead_letters(app: App) -> list[DeadLettered]:
    return [
        DeadLettered.model_validate_json(m.value() or b"")
        for m in read_all(app.bootstrap_servers, [DEADLETTER_TOPIC])
    ]


@pytest.fixture(scope="module")
def running_poison_workers(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    """Workers shared by the bad-input tests, which do not disturb them."""
    group = WorkerGroup(app.settings, tmp_path_factory.mktemp("poison-logs"))
    group.start()
    yield group
    group.stop()


def test_poison_messages_are_dead_lettered_and_good_ones_behind_them_flow(
    app: App, running_poison_workers: WorkerGroup
) -> None:
    """Every kind of poison message is dead-lettered with its reason; the consumer goes on."""
    good = unique_project("good")
    valid = _raw_request(unique_project("poison"))
    poison: dict[str, tuple[bytes | None, bytes]] = {
        "not JSON": (b"k", b"{not json"),
        "not a JSON object": (b"k", b"[1, 2, 3]"),
        "INVALID_REQUEST": (
            b"k",
            json.dumps({"event_type": "provisioning.requested", "project_id": "k"}).encode(),
        ),
        "unexpected event_type": (b"k", json.dumps({**valid, "event_type": "provisioning.bogus"}).encode()),
        "unsupported schema_version": (b"k", json.dumps({**valid, "schema_version": 99}).encode()),
        "oversized": (b"k", json.dumps({**valid, "padding": "x" * 300_000}).encode()),
        "no key": (None, json.dumps(valid).encode()),
    }
    for key, value in poison.values():
        produce_raw(app.bootstrap_servers, REQUESTED_TOPIC, key, value)
    produce_raw(
        app.bootstrap_servers, REQUESTED_TOPIC, good.encode(), json.dumps(_raw_request(good)).encode()
    )
    wait_until_stage(app, [good], timeout=60)

    # Keyed by the original's SHA-256: a large message is dead-lettered as a bounded prefix.
    letters = {d.value_sha256: d for d in _dead_letters(app)}
    for reason, (_, value) in poison.items():
        letter = letters.get(hashlib.sha256(value).hexdigest())
        assert letter is not None, f"{reason!r} message was not dead-lettered"
        assert reason in letter.reason
        assert letter.consumer_group == "provisioning-database"
        assert letter.value_size == len(value)
        kept = base64.b64decode(letter.value_b64 or "")
        assert value.startswith(kept)
        assert letter.truncated == (len(kept) < len(value))
    assert letters[hashlib.sha256(poison["oversized"][1]).hexdigest()].truncated


def test_hostile_project_ids_are_refused_and_never_reach_sql(
    app: App, running_poison_workers: WorkerGroup
) -> None:
    """Hostile ids are refused at request time, dead-lettered as INVALID_REQUEST when raw."""
    for hostile in HOSTILE_IDS:
        with pytest.raises(InvalidRequestError):
            request_provisioning({"project_id": hostile, "region": "eu-west-1"}, app=app)
        body = _raw_request("placeholder")
        body["project_id"] = hostile
        body["request"] = {"project_id": hostile, "region": "eu-west-1"}
        produce_raw(app.bootstrap_servers, REQUESTED_TOPIC, hostile.encode(), json.dumps(body).encode())
    marker = unique_project("after-hostile")
    produce_raw(
        app.bootstrap_servers, REQUESTED_TOPIC, marker.encode(), json.dumps(_raw_request(marker)).encode()
    )
    wait_until_stage(app, [marker], timeout=60)

    reasons = {
        base64.b64decode(d.key_b64 or "").decode("utf-8", "replace"): d.reason for d in _dead_letters(app)
    }
    for hostile in HOSTILE_IDS:
        assert reasons[hostile].startswith("INVALID_REQUEST")
        assert hostile not in reasons[hostile], "the reason never echoes the hostile input"
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        rows = admin.execute(
            "SELECT count(*) FROM projects WHERE project_id = ANY(%s)", (HOSTILE_IDS,)
        ).fetchone()
        tenants = admin.execute(r"SELECT count(*) FROM pg_database WHERE datname ~ '[;'' \"]'").fetchone()
    assert rows == (0,) and tenants == (0,)


def test_duplicate_requests_provision_once_and_a_conflicting_one_is_answered(
    app: App, running_poison_workers: WorkerGroup
) -> None:
    """The same request twice provisions once; a different payload gets a clear refusal."""
    pid = unique_project("dup")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    again = request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    assert again.status == "duplicate"
    with pytest.raises(ConflictingRequestError, match="different payload"):
        request_provisioning({"project_id": pid, "region": "us-east-1"}, app=app)
    # The same from a raw producer: a duplicate of the request and a conflicting one.
    record = app.projects.project(pid)
    assert record is not None
    produce_raw(
        app.bootstrap_servers,
        REQUESTED_TOPIC,
        pid.encode(),
        json.dumps(_raw_request(pid, correlation_id=str(record.correlation_id))).encode(),
    )
    produce_raw(
        app.bootstrap_servers,
        REQUESTED_TOPIC,
        pid.encode(),
        json.dumps(_raw_request(pid, region="us-east-1")).encode(),
    )
    wait_until_stage(app, [pid], timeout=60)
    time.sleep(2.0)  # let the duplicates pass through
    assert_each_side_effect_once(app, [pid])
    conflicts = [d for d in _dead_letters(app) if base64.b64decode(d.key_b64 or "") == pid.encode()]
    assert any("different payload" in d.reason for d in conflicts)
