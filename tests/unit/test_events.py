"""The event contract: defaults, validation, merging results, JSON round trips."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from shared.domain.events import (
    completed_event_for,
    event_models,
    event_type_of,
    failed_event_for,
    retry_event_for,
)
from shared.domain.payloads import (
    ApiKeyInfo,
    DatabaseInfo,
    ErrorInfo,
    ProvisionProjectPayload,
    ProvisionProjectResult,
    ResultDatabase,
    ResultMetadata,
    ResultServices,
    ServiceRegistration,
    StepResults,
    StorageRegistration,
)
from shared.domain.rebuild import outcome_event_id
from shared.domain.steps import STEP_KEYS, all_topics
from tests.fakes import T0, make_payload, make_requested

BASE = {"project_id": "acme-app", "region": "us-east-1"}


def _payload(**fields: Any) -> ProvisionProjectPayload:
    return ProvisionProjectPayload.model_validate({**BASE, **fields})


def test_payload_defaults() -> None:
    """A minimal request gets postgresql, every service on, two 'pk' keys and no metadata."""
    payload = _payload()
    assert payload.database.engine == "postgresql"
    assert (payload.database.version, payload.database.size, payload.database.storage_gb) == (
        None,
        None,
        None,
    )
    assert (payload.services.auth, payload.services.realtime, payload.services.storage) == (
        True,
        True,
        True,
    )
    assert (payload.api_keys.count, payload.api_keys.prefix) == (2, "pk")
    assert (payload.owner_id, payload.organization_id, payload.metadata) == (None, None, {})


@pytest.mark.parametrize(
    "project_id",
    ["abc", "acme-app", "a1-b2-c3", "x" * 48, "app2", "550e8400-e29b-41d4-a716-446655440000", "1acme"],
)
def test_valid_project_ids(project_id: str) -> None:
    """Lower-case letters, digits and single hyphens, 3 to 48 characters, are accepted."""
    assert _payload(project_id=project_id).project_id == project_id


@pytest.mark.parametrize(
    "project_id",
    [
        "ab",
        "x" * 49,
        "Acme",
        "550E8400-E29B-41D4-A716-446655440000",  # the model takes the record's lower case only
        "-abc",
        "abc-",
        "a--b",
        "a_b",
        "a b",
        "\u0430bc",  # Cyrillic a
        "x'; DROP TABLE p; --",
        "",
    ],
)
def test_invalid_project_ids(project_id: str) -> None:
    """Project ids outside the pattern or length are refused."""
    with pytest.raises(ValidationError):
        _payload(project_id=project_id)


@pytest.mark.parametrize("region", ["us-east-1", "ap-southeast-1", "eu-central-2"])
def test_valid_regions(region: str) -> None:
    """Regions shaped like 'us-east-1' are accepted by the model."""
    assert _payload(region=region).region == region


@pytest.mark.parametrize(
    "region", ["mars-1", "US-EAST-1", "us-east", "useast1", "us-east-10", "u-east-1", ""]
)
def test_invalid_regions(region: str) -> None:
    """Regions not matching the pattern are refused."""
    with pytest.raises(ValidationError):
        _payload(region=region)


@pytest.mark.parametrize("count", [1, 2, 20, 2.0])
def test_api_key_count_in_range(count: int) -> None:
    """api_keys.count from 1 to 20 is accepted, an integral float (2.0) as the int it is."""
    got = _payload(api_keys={"count": count}).api_keys.count
    assert got == count
    assert type(got) is int


@pytest.mark.parametrize("count", [0, -1, 21, "3", 2.5, True, 21.0, float("nan")])
def test_api_key_count_out_of_range_or_not_int(count: Any) -> None:
    """api_keys.count must be an integer from 1 to 20 (strict: no strings, bools or fractions)."""
    with pytest.raises(ValidationError):
        _payload(api_keys={"count": count})


@pytest.mark.parametrize("prefix", ["", "1pk", "PK", "pk_", "a" * 17])
def test_api_key_prefix_rules(prefix: str) -> None:
    """An API key prefix is 1 to 16 lower-case letters and digits starting with a letter."""
    with pytest.raises(ValidationError):
        _payload(api_keys={"prefix": prefix})


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_engine_allowed_values(engine: str) -> None:
    """The model accepts engine postgresql and mysql (mysql is refused later by the step)."""
    assert _payload(database={"engine": engine}).database.engine == engine


@pytest.mark.parametrize("engine", ["oracle", "PostgreSQL", ""])
def test_engine_other_values_refused(engine: str) -> None:
    """Any other engine is refused by the model."""
    with pytest.raises(ValidationError):
        _payload(database={"engine": engine})


@pytest.mark.parametrize(
    "fields",
    [
        {"unknown": 1},
        {"services": {"email": True}},
        {"api_keys": {"secret": "x"}},
        {"database": {"host": "h"}},
    ],
)
def test_extra_fields_forbidden(fields: dict[str, Any]) -> None:
    """Unknown fields are refused at every level of the request."""
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        _payload(**fields)


def test_models_are_frozen() -> None:
    """Requests and events cannot be changed after creation."""
    payload = _payload()
    with pytest.raises(ValidationError, match="frozen"):
        payload.region = "eu-west-1"  # type: ignore[misc]
    event = make_requested()
    with pytest.raises(ValidationError, match="frozen"):
        event.attempt = 2  # type: ignore[misc]


def test_event_project_id_validated() -> None:
    """The envelope's project id follows the same rules as the request's."""
    event = make_requested()
    data = {**event.model_dump(), "project_id": "Bad_Id"}
    with pytest.raises(ValidationError):
        type(event).model_validate(data)


def _info(key_id: str = "key_1") -> ApiKeyInfo:
    return ApiKeyInfo(key_id=key_id, key_prefix="pk_abcdef", created_at=T0)


def _registration(service: str) -> ServiceRegistration:
    return ServiceRegistration(enabled=True, tenant_id="acme-app", endpoint=f"https://{service}/acme-app")


def _full_results() -> StepResults:
    return StepResults(
        database=DatabaseInfo(
            host="h", port=5432, database_name="tenant_acme_app", role_name="tenant_acme_app"
        ),
        schema_name="tenant_acme_app",
        auth=_registration("auth"),
        realtime=_registration("realtime"),
        storage=StorageRegistration(
            enabled=True,
            tenant_id="acme-app",
            endpoint="https://s/acme-app",
            bucket_name="tenant-acme-app",
        ),
        api_keys=(_info("key_1"), _info("key_2")),
    )


def test_results_merged_lays_set_fields_over() -> None:
    """merged keeps what the update does not set and takes what it sets."""
    base = StepResults(schema_name="tenant_acme_app", auth=_registration("auth"))
    merged = base.merged(StepResults(realtime=_registration("realtime")))
    assert merged.schema_name == "tenant_acme_app"
    assert merged.auth == _registration("auth")
    assert merged.realtime == _registration("realtime")
    assert base.realtime is None  # the original is unchanged


def test_results_merged_with_empty_update_is_unchanged() -> None:
    """Merging an update that sets nothing gives equal results."""
    base = _full_results()
    assert base.merged(StepResults()) == base


def test_results_merged_update_wins() -> None:
    """A field set in both takes the update's value."""
    merged = StepResults(schema_name="old").merged(StepResults(schema_name="new"))
    assert merged.schema_name == "new"


def _result() -> ProvisionProjectResult:
    return ProvisionProjectResult(
        project_id="acme-app",
        database=ResultDatabase(
            host="h",
            port=5432,
            database_name="d",
            schema_name="s",
            connection_string="postgresql://r@h:5432/d",
        ),
        services=ResultServices(auth=_registration("auth")),
        api_keys=(_info(),),
        metadata=ResultMetadata(provisioned_at=T0, region="us-east-1", owner_id="u"),
    )


def _completed(step_key: str) -> Any:
    requested = make_requested(make_payload(metadata={"team": "core", "tags": ["a", 1, None]}))
    extra: dict[str, Any] = {"result": _result()} if step_key == "verify" else {}
    return completed_event_for(step_key)(
        event_id=outcome_event_id("acme-app", requested.correlation_id, step_key),
        occurred_at=T0,
        project_id="acme-app",
        correlation_id=requested.correlation_id,
        causation_id=requested.event_id,
        request=requested.request,
        results=_full_results(),
        step_status="skipped" if step_key in ("auth", "realtime") else "success",
        attempt=2,
        **extra,
    )


def _round_trip(event: BaseModel) -> None:
    again = type(event).model_validate_json(event.model_dump_json())
    assert again == event
    assert again.model_dump_json() == event.model_dump_json()


@pytest.mark.parametrize("step_key", STEP_KEYS)
def test_completed_event_json_round_trip(step_key: str) -> None:
    """Every completed event type survives a JSON round trip unchanged."""
    event = _completed(step_key)
    assert event.event_type == f"provisioning.{step_key}.completed"
    _round_trip(event)


@pytest.mark.parametrize("step_key", STEP_KEYS)
def test_failed_and_retry_events_json_round_trip(step_key: str) -> None:
    """Every failed and retry event type (with its input) survives a JSON round trip."""
    requested = make_requested()
    error = ErrorInfo(type="NETWORK_ERROR", message="down", details={"attempt": 1}, retryable=True)
    common: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "occurred_at": T0,
        "project_id": "acme-app",
        "correlation_id": requested.correlation_id,
        "request": requested.request,
        "input": requested,
        "error": error,
    }
    _round_trip(failed_event_for(step_key)(**common))
    _round_trip(retry_event_for(step_key)(**common, not_before=T0, replayed=True))


def test_requested_event_json_round_trip() -> None:
    """A provisioning.requested event survives a JSON round trip unchanged."""
    _round_trip(make_requested(owner_id="me", api_keys={"count": 5, "prefix": "live"}))


def test_event_models_cover_every_topic() -> None:
    """There is one event model per topic, and its event_type is the topic's name."""
    models = event_models()
    assert set(models) == set(all_topics())
    for topic, model in models.items():
        assert event_type_of(model) == topic


def test_outcome_event_id_is_deterministic() -> None:
    """A step's outcome id depends on the project, the request's correlation and the step
    alone: the same on every redelivery, different for another project with the same ids."""
    correlation = uuid.uuid4()
    assert outcome_event_id("acme", correlation, "schema") == outcome_event_id("acme", correlation, "schema")
    assert outcome_event_id("acme", correlation, "schema") != outcome_event_id("acme", correlation, "auth")
    assert outcome_event_id("acme", correlation, "schema") != outcome_event_id("other", correlation, "schema")
    assert outcome_event_id("acme", correlation, "schema") != outcome_event_id("acme", uuid.uuid4(), "schema")


def test_the_result_has_seed_004s_shape() -> None:
    """A disabled service is absent (not null), only storage carries bucket_name, and unset
    optional metadata is absent."""
    result = _result().model_copy(
        update={
            "services": ResultServices(
                realtime=_registration("realtime"),
                storage=StorageRegistration(
                    enabled=True, tenant_id="t", endpoint="e", bucket_name="tenant-acme-app"
                ),
            ),
            "metadata": ResultMetadata(provisioned_at=T0, region="eu-west-1"),
        }
    )
    body = json.loads(result.model_dump_json())
    assert set(body["services"]) == {"realtime", "storage"}
    assert set(body["services"]["realtime"]) == {"enabled", "tenant_id", "endpoint"}
    assert body["services"]["storage"]["bucket_name"] == "tenant-acme-app"
    assert set(body["metadata"]) == {"provisioned_at", "region"}
    assert ProvisionProjectResult.model_validate_json(result.model_dump_json()) == result


def test_a_registration_recorded_with_a_null_bucket_still_reads() -> None:
    """A record written before storage had its own model ("bucket_name": null) reads back."""
    old = {"enabled": True, "tenant_id": "t", "endpoint": "e", "bucket_name": None}
    assert ServiceRegistration.model_validate(old) == ServiceRegistration(
        enabled=True, tenant_id="t", endpoint="e"
    )
