"""A valid event of every type, for the tests that go over the whole catalogue."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from shared.domain.events import DeadLettered, Event, PurgeRequested, event_models
from shared.domain.payloads import ErrorInfo, ProvisionProjectResult
from tests.fakes import T0, make_deprovisioning_requested, make_payload, make_requested


def _result() -> ProvisionProjectResult:
    return ProvisionProjectResult.model_validate_json(
        json.dumps(
            {
                "project_id": "acme-app",
                "database": {
                    "host": "h",
                    "port": 5432,
                    "database_name": "d",
                    "schema_name": "s",
                    "connection_string": "postgresql://r@h:5432/d",
                },
                "services": {},
                "api_keys": [],
                "metadata": {"provisioned_at": T0.isoformat(), "region": "us-east-1"},
            }
        )
    )


def sample(event_type: str) -> Event:
    """A valid event of ``event_type``, with every kind of field its model has."""
    model = event_models()[event_type]
    fields = model.model_fields
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "occurred_at": T0,
        "project_id": "acme-app",
        "correlation_id": uuid.uuid4(),
        "causation_id": uuid.uuid4(),
    }
    if "request" in fields:
        values["request"] = make_payload(metadata={"team": "core"})
    if "step_status" in fields:
        values["step_status"] = "success"
    if "result" in fields:
        values["result"] = _result()
    if "error" in fields:
        values["error"] = ErrorInfo(type="Boom", message="it broke", retryable=False)
    if "not_before" in fields:
        values["not_before"] = T0
    if "input" in fields:
        if event_type.startswith("provisioning."):
            values["input"] = make_requested(correlation_id=values["correlation_id"])
        elif event_type.startswith("deprovisioning."):
            values["input"] = make_deprovisioning_requested(correlation_id=values["correlation_id"])
        else:
            values["input"] = PurgeRequested(
                event_id=uuid.uuid4(), occurred_at=T0, project_id="acme-app", correlation_id=uuid.uuid4()
            )
    event = model.model_validate(values)
    assert isinstance(event, Event)
    return event


def dead_letter_sample() -> DeadLettered:
    """A dead letter of a message refused by the database step's consumer."""
    return DeadLettered(
        event_id=uuid.uuid4(),
        occurred_at=T0,
        reason="not JSON",
        source_topic="provisioning.requested",
        source_partition=2,
        source_offset=7,
        consumer_group="provisioning-database",
        key_b64=base64.b64encode(b"acme-app").decode(),
        value_b64=base64.b64encode(b"{nope").decode(),
    )
