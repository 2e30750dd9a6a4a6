"""The HTTP routes one by one, on a fake of the use-case layer: nothing connects."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.usecases.deadletters import Filters, Letter, Listing
from services.usecases.payloads import InvalidRequestError
from services.usecases.queries import ProjectDetail, ProjectList, ProjectSummary
from services.usecases.replay import ReplayDecision
from services.usecases.requests import (
    DeprovisionReceipt,
    RequestReceipt,
    RestoreReceipt,
    UnknownProjectError,
)
from services.web.app import build_api
from services.web.auth import TokenSet, entry_for, hash_token
from services.web.deps import WebState
from services.web.errors import install_error_handlers
from services.web.guard import ApiMetrics
from services.web.routes import deadletters, ops, projects, replays
from services.web.stream import StreamSlots, TransitionListener
from services.web.views import Durations
from shared.domain.events import DeadLettered
from shared.domain.records import ConflictingRequestError, ProjectRecord, RestoreRefusedError
from shared.domain.steps import DEADLETTER_TOPIC, REQUESTED_TOPIC, Stage

PID = "3f1c2a9e-7d41-4c8a-9a57-0c7f9a1b2c3d"
CORRELATION = uuid.UUID("11111111-2222-4333-8444-555555555555")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


LETTER = Letter(
    DEADLETTER_TOPIC,
    0,
    3,
    datetime(2026, 3, 1, tzinfo=UTC),
    DeadLettered(
        event_id=uuid.uuid4(),
        occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
        reason="oversized message: 300000 bytes > limit 262144",
        source_topic=REQUESTED_TOPIC,
        source_partition=1,
        source_offset=9,
        consumer_group="provisioning-database",
        key_b64=base64.b64encode(PID.encode()).decode(),
        value_b64=base64.b64encode(b'{"project_id": "%s"}' % PID.encode()).decode(),
        headers={"event_type": REQUESTED_TOPIC},
    ),
)


class FakeReadModels:
    """Read models with no step durations."""

    def median_step_seconds(self, *, sample: int) -> dict[str, float]:
        return {}


class FakeUseCases:
    """The use-case layer, answering from what a test sets and recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.known: set[str] = {PID}
        self.owners: dict[str, str | None] = {}
        """Who requested each known project (absent: None, only a Kafka client)."""
        self.fail: Exception | None = None
        self.requested_by: str | None = None
        self.owner_filter: str | None = "unset"
        self.duplicate = False
        self.database = True

    def _called(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail

    def _visible(self, project_id: str, owner: str | None) -> bool:
        return project_id in self.known and (owner is None or self.owners.get(project_id) == owner)

    def request_provisioning(self, payload: Any, *, requested_by: str | None) -> RequestReceipt:
        self._called("request_provisioning", payload)
        self.requested_by = requested_by
        status = "duplicate" if self.duplicate else "requested"
        first = self.owners.get(payload["project_id"], requested_by) if self.duplicate else requested_by
        return RequestReceipt(payload["project_id"], CORRELATION, status, published=True, requested_by=first)

    def request_deprovisioning(
        self, project_id: str, *, reason: str | None, requested_by: str | None, owner: str | None
    ) -> DeprovisionReceipt:
        self._called("request_deprovisioning", (project_id, reason))
        self.requested_by = requested_by
        if not self._visible(project_id, owner):
            raise UnknownProjectError(f"project {project_id!r} is not in the control plane")
        status = "duplicate" if self.duplicate else "requested"
        return DeprovisionReceipt(project_id, CORRELATION, status, True, cancelled_provisioning=False)

    def restore_project(self, project_id: str) -> RestoreReceipt:
        self._called("restore_project", project_id)
        return RestoreReceipt(project_id, CORRELATION, published=False)

    def list_projects(self, stage: str | None, *, limit: int, offset: int, owner: str | None) -> ProjectList:
        self._called("list_projects", (stage, limit, offset))
        self.owner_filter = owner
        summary = ProjectSummary(PID, Stage.COMPLETED, NOW, NOW, stuck=False)
        return ProjectList([summary] * min(limit, 2), {Stage.COMPLETED: 2})

    def project_detail(self, project_id: str) -> ProjectDetail | None:
        self._called("project_detail", project_id)
        if project_id not in self.known:
            return None
        record = ProjectRecord(
            project_id, CORRELATION, {}, "hash", NOW, NOW, requested_by=self.owners.get(project_id)
        )
        return ProjectDetail(
            project_id,
            Stage.COMPLETED,
            record,
            [],
            [],
            [],
            {"services": {}},
            restorable=False,
            last_event_id=7,
        )

    def project_visible(self, project_id: str, *, owner: str | None) -> bool:
        self.calls.append(("project_visible", project_id))  # a lookup, never made to fail
        return self._visible(project_id, owner)

    def replay(
        self,
        *,
        step_key: str | None,
        project_id: str | None,
        dry_run: bool,
        max_replays: int | None,
        owner: str | None,
    ) -> list[ReplayDecision]:
        self._called("replay", (step_key, project_id, dry_run, max_replays))
        self.owner_filter = owner
        return [ReplayDecision(PID, "create_tenant_database", "would replay", "failed")]

    def deadletters(self, filters: Filters, *, parked: bool, limit: int | None) -> Listing:
        self._called("deadletters", (filters, parked, limit))
        return Listing([LETTER], unreadable=1)

    def deadletter(self, letter_id: str, *, parked: bool) -> Letter | None:
        self._called("deadletter", (letter_id, parked))
        return LETTER if letter_id == LETTER.id else None

    def database_answers(self) -> bool:
        return self.database


def _state(calls: FakeUseCases, *, tokens: TokenSet | None = None) -> WebState:
    read_models = cast(Any, FakeReadModels())
    metrics = ApiMetrics()
    return WebState(
        usecases=calls,
        tokens=tokens,
        insecure_local=tokens is None,
        metrics=metrics,
        listener=TransitionListener("postgresql://unused@127.0.0.1:1/unused"),
        slots=StreamSlots(1, on_change=metrics.watchers.set),
        durations=Durations(read_models),
        read_models=read_models,
        keepalive=15.0,
        stream_max_seconds=60.0,
    )


@pytest.fixture
def calls() -> FakeUseCases:
    """A fresh fake of the use-case layer."""
    return FakeUseCases()


@pytest.fixture
def client(calls: FakeUseCases) -> TestClient:
    """A client of the whole API on the fake, without the lifespan (no listener runs)."""
    return TestClient(build_api(_state(calls)))


def _one_router(router: Any, calls: FakeUseCases) -> TestClient:
    api = FastAPI()
    api.state.web = _state(calls)
    api.include_router(router)
    install_error_handlers(api)
    return TestClient(api)


def test_a_projects_route_mounts_alone(calls: FakeUseCases) -> None:
    """The projects router answers on an app of its own, with nothing else assembled."""
    response = _one_router(projects.router, calls).get(f"/v1/projects/{PID}")
    assert response.status_code == 200
    assert response.json()["last_event_id"] == 7


def test_create_project_is_202_then_200_for_the_same_request(client: TestClient, calls: FakeUseCases) -> None:
    """POST /v1/projects answers 202 with the receipt and Location, 200 for a duplicate."""
    response = client.post("/v1/projects", json={"project_id": PID})
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/projects/{PID}"
    assert response.json()["correlation_id"] == str(CORRELATION)
    assert calls.calls == [("request_provisioning", {"project_id": PID})]
    calls.duplicate = True
    assert client.post("/v1/projects", json={"project_id": PID}).status_code == 200


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidRequestError("invalid request: region", field="region"), 422, "invalid_request"),
        (ConflictingRequestError("another payload"), 409, "conflict"),
    ],
)
def test_create_project_maps_the_use_case_errors(
    client: TestClient, calls: FakeUseCases, error: Exception, status: int, code: str
) -> None:
    """An invalid request is 422 with its field; a conflicting one is 409."""
    calls.fail = error
    response = client.post("/v1/projects", json={"project_id": PID})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_create_project_refuses_a_body_that_is_not_json(client: TestClient, calls: FakeUseCases) -> None:
    """A body that is not JSON is 422 before any use case is called."""
    response = client.post("/v1/projects", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "the request body is not JSON"
    assert calls.calls == []


def test_list_projects_pages_with_a_next_link(client: TestClient, calls: FakeUseCases) -> None:
    """GET /v1/projects passes the filters through and links the next page when full."""
    body = client.get("/v1/projects", params={"stage": "completed", "limit": 2}).json()
    assert calls.calls == [("list_projects", ("completed", 2, 0))]
    assert body["counts"] == {"COMPLETED": 2}
    assert body["next"] == "/v1/projects?limit=2&offset=2&stage=completed"


def test_list_projects_with_an_unknown_stage_is_422(client: TestClient, calls: FakeUseCases) -> None:
    """An unknown stage refused by the query is 422 on the stage field."""
    calls.fail = InvalidRequestError("unknown stage")
    error = client.get("/v1/projects", params={"stage": "nope"}).json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "stage")


def test_get_project_shows_the_view_or_404(client: TestClient, calls: FakeUseCases) -> None:
    """GET /v1/projects/{id} renders the project's detail; an unknown one is 404."""
    body = client.get(f"/v1/projects/{PID}").json()
    assert (body["stage"], body["result"], body["restorable"]) == ("COMPLETED", {"services": {}}, False)
    other = str(uuid.uuid4())
    response = client.get(f"/v1/projects/{other}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "project_not_found"


def test_a_bad_project_id_is_422_before_any_use_case(client: TestClient, calls: FakeUseCases) -> None:
    """A malformed project id is 422 on project_id, and no use case is called."""
    response = client.get("/v1/projects/NOT%20AN%20ID")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "project_id"
    assert calls.calls == []


def test_events_of_an_unknown_project_is_404(client: TestClient, calls: FakeUseCases) -> None:
    """The live stream of a project the control plane does not know is 404, no slot held."""
    response = client.get(f"/v1/projects/{uuid.uuid4()}/events")
    assert response.status_code == 404


def test_events_with_a_bad_last_event_id_is_422(client: TestClient) -> None:
    """A Last-Event-ID that is not an event id is 422 on that header."""
    response = client.get(f"/v1/projects/{PID}/events", headers={"Last-Event-ID": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Last-Event-ID"


def test_delete_project_is_202_then_200_and_404_when_unknown(client: TestClient, calls: FakeUseCases) -> None:
    """DELETE passes the reason; 202 new, 200 duplicate, 404 for an unknown project."""
    response = client.delete(f"/v1/projects/{PID}", params={"reason": "done"})
    assert response.status_code == 202
    assert calls.calls == [("request_deprovisioning", (PID, "done"))]
    calls.duplicate = True
    assert client.delete(f"/v1/projects/{PID}").status_code == 200
    assert client.delete(f"/v1/projects/{uuid.uuid4()}").status_code == 404


def test_restore_is_202_409_or_404(client: TestClient, calls: FakeUseCases) -> None:
    """POST restore answers 202 with the receipt, 409 when refused, 404 for an unknown project."""
    response = client.post(f"/v1/projects/{PID}/restore")
    assert response.status_code == 202
    assert response.json()["published"] is False
    assert client.post(f"/v1/projects/{uuid.uuid4()}/restore").status_code == 404
    calls.fail = RestoreRefusedError("not deleted")
    response = client.post(f"/v1/projects/{PID}/restore")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "conflict")


def test_replays_resolve_the_step_and_pass_the_filters(calls: FakeUseCases) -> None:
    """POST /v1/replays resolves the step to its key and reports the decisions; an unknown step is 422."""
    client = _one_router(replays.router, calls)
    body = client.post("/v1/replays", json={"step": "create_tenant_database", "project_id": PID}).json()
    assert calls.calls == [("replay", ("database", PID, True, None))]
    assert body["replayed"] == 0
    assert body["decisions"][0]["action"] == "would replay"
    assert client.post("/v1/replays", json={"step": "nope"}).status_code == 422


def test_deadletters_list_passes_the_filters_and_refuses_a_bad_duration(calls: FakeUseCases) -> None:
    """GET /v1/deadletters parses the filters for the use case; an unreadable duration is 422 on its field."""
    client = _one_router(deadletters.router, calls)
    body = client.get("/v1/deadletters", params={"project_id": PID, "older_than": "2h", "limit": 5}).json()
    [(name, (filters, parked, limit))] = calls.calls
    assert (name, filters.project, filters.older_than, parked, limit) == (
        "deadletters",
        PID,
        timedelta(hours=2),
        False,
        5,
    )
    assert body["unreadable"] == 1
    assert (body["letters"][0]["id"], body["letters"][0]["subject"]) == ("0:3", PID)
    assert body["letters"][0]["original"] is None
    error = client.get("/v1/deadletters", params={"newer_than": "soon"}).json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", "newer_than")


def test_one_deadletter_is_shown_decoded_or_404_and_a_bad_id_is_422(calls: FakeUseCases) -> None:
    """GET /v1/deadletters/{id} shows the letter with its decoded original; unknown 404; not an id 422."""
    client = _one_router(deadletters.router, calls)
    body = client.get("/v1/deadletters/0:3").json()
    assert body["original"]["encoding"] == "json"
    assert body["headers"] == {"event_type": REQUESTED_TOPIC}
    assert client.get("/v1/deadletters/0:4").json()["error"]["code"] == "letter_not_found"
    assert client.get("/v1/deadletters/zero").status_code == 422


def test_the_api_has_no_deadletter_redrive(calls: FakeUseCases) -> None:
    """Redriving is the operator's: the API holds no write on the topics a redrive sends to."""
    client = _one_router(deadletters.router, calls)
    assert client.post("/v1/deadletters/redrive", json={}).status_code in (404, 405)


def test_healthz_is_503_while_the_listener_is_not_connected(calls: FakeUseCases) -> None:
    """/healthz says the database answers but is 503 until the listener connects."""
    client = _one_router(ops.router, calls)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": True, "listener": False}


def test_metrics_and_page_need_no_token(calls: FakeUseCases) -> None:
    """/metrics and / answer without a token, while a /v1 route wants one."""
    token = "secret-token"
    tokens = TokenSet.parse([f"ops={hash_token(token)}"], source="test")
    api = build_api(_state(calls, tokens=tokens))
    client = TestClient(api)
    assert client.get("/metrics").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get(f"/v1/projects/{PID}").status_code == 401
    authorized = client.get(f"/v1/projects/{PID}", headers={"Authorization": f"Bearer {token}"})
    assert authorized.status_code == 200


def test_v1_routes_carry_their_full_path_for_the_metrics_label() -> None:
    """Each /v1 route's own path is its full template: the guard labels requests by it, and
    FastAPI no longer folds an include's prefix into the route."""
    paths = [route.path for router in (projects.router, replays.router) for route in router.routes]
    assert paths
    assert all(path.startswith("/v1/") for path in paths), paths


# --- scopes and ownership ---------------------------------------------------------------------

OTHER = "7a2b9c1d-0e3f-4a5b-8c6d-9e0f1a2b3c4d"


def _scoped(calls: FakeUseCases, **grants: tuple[str, ...]) -> tuple[TestClient, dict[str, dict[str, str]]]:
    """A client of the whole API whose callers hold the scopes given (a caller named ``*_all``
    sees every project); and each caller's Authorization header."""
    entries, headers = [], {}
    for name, scopes in grants.items():
        token = f"token-of-{name}"
        entries.append(entry_for(name, scopes, hash_token(token), all_projects=name.endswith("_all")))
        headers[name] = {"Authorization": f"Bearer {token}"}
    return TestClient(build_api(_state(calls, tokens=TokenSet.parse(entries, source="test")))), headers


_ROUTES = [
    ("post", "/v1/projects", {"json": {"project_id": PID}}, "provision"),
    ("get", "/v1/projects", {}, "read"),
    ("get", f"/v1/projects/{PID}", {}, "read"),
    ("get", f"/v1/projects/{PID}/events", {}, "read"),
    ("delete", f"/v1/projects/{PID}", {}, "deprovision"),
    ("post", f"/v1/projects/{PID}/restore", {}, "provision"),
    ("post", "/v1/replays", {"json": {}}, "replay"),
    ("get", "/v1/deadletters", {}, "admin"),
    ("get", "/v1/deadletters/0:3", {}, "admin"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "scope"), _ROUTES)
def test_a_route_refuses_a_token_without_its_scope_with_403_naming_it(
    calls: FakeUseCases, method: str, path: str, kwargs: dict[str, Any], scope: str
) -> None:
    """Each /v1 route answers 403 forbidden naming the scope a token lacks, before any use case."""
    others = tuple(s for s in ("read", "provision", "deprovision", "replay") if s != scope)
    client, headers = _scoped(calls, lacking_all=others)
    response = getattr(client, method)(path, headers=headers["lacking_all"], **kwargs)
    assert response.status_code == 403
    assert response.json() == {
        "error": {"code": "forbidden", "message": f"this token lacks the '{scope}' scope"}
    }
    assert calls.calls == []


def test_delete_without_the_deprovision_scope_is_the_issues_403(calls: FakeUseCases) -> None:
    """A read+provision token cannot delete: 403 with the exact envelope, nothing asked of the use case."""
    client, headers = _scoped(calls, dashboard=("read", "provision"))
    response = client.delete(f"/v1/projects/{PID}", headers=headers["dashboard"])
    assert response.json() == {
        "error": {"code": "forbidden", "message": "this token lacks the 'deprovision' scope"}
    }
    assert calls.calls == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "scope"), [r for r in _ROUTES if not r[1].endswith("/events")]
)
def test_the_admin_scope_carries_every_scope(
    calls: FakeUseCases, method: str, path: str, kwargs: dict[str, Any], scope: str
) -> None:
    """A token with only admin passes every route's scope check (the stream's is the read one,
    checked above; opening it here would need a database)."""
    calls.known.add(PID)
    client, headers = _scoped(calls, root=("admin",))
    response = getattr(client, method)(path, headers=headers["root"], **kwargs)
    assert response.status_code not in (401, 403), response.text


def test_another_callers_project_is_404_to_an_owner_scoped_caller(calls: FakeUseCases) -> None:
    """GET, events, DELETE and restore of a project another caller requested answer exactly as
    for an unknown project; its own project it sees."""
    calls.known |= {OTHER}
    calls.owners = {PID: "alice", OTHER: "bob"}
    client, headers = _scoped(calls, alice=("read", "provision", "deprovision"))
    alice = headers["alice"]
    unknown = str(uuid.uuid4())
    for method, suffix in (("get", ""), ("get", "/events"), ("delete", ""), ("post", "/restore")):
        theirs = getattr(client, method)(f"/v1/projects/{OTHER}{suffix}", headers=alice)
        nobodys = getattr(client, method)(f"/v1/projects/{unknown}{suffix}", headers=alice)
        assert theirs.status_code == nobodys.status_code == 404, (method, suffix)
        assert theirs.json()["error"]["code"] == "project_not_found"
        assert theirs.json()["error"]["message"].replace(OTHER, "X") == nobodys.json()["error"][
            "message"
        ].replace(unknown, "X")
    assert ("restore_project", OTHER) not in calls.calls
    mine = client.get(f"/v1/projects/{PID}", headers=alice)
    assert (mine.status_code, mine.json()["requested_by"]) == (200, "alice")


def test_a_project_only_kafka_requested_is_hidden_from_an_owner_scoped_caller(calls: FakeUseCases) -> None:
    """A project with no recorded requester (only a Kafka client asked) is 404 to an owner-scoped
    caller and visible, requested_by null, to an all-projects one."""
    client, headers = _scoped(calls, alice=("read",), ops_all=("read",))
    assert client.get(f"/v1/projects/{PID}", headers=headers["alice"]).status_code == 404
    shown = client.get(f"/v1/projects/{PID}", headers=headers["ops_all"])
    assert (shown.status_code, shown.json()["requested_by"]) == (200, None)


def test_the_list_and_replays_are_filtered_to_the_owner_unless_admin_or_all(calls: FakeUseCases) -> None:
    """An owner-scoped caller's list and replays pass its name as the owner filter; admin and an
    all-projects token pass none."""
    client, headers = _scoped(calls, alice=("read", "replay"), root=("admin",), ops_all=("read", "replay"))
    for name, expected in (("alice", "alice"), ("root", None), ("ops_all", None)):
        calls.owner_filter = "unset"
        assert client.get("/v1/projects", headers=headers[name]).status_code == 200
        assert calls.owner_filter == expected, name
        calls.owner_filter = "unset"
        assert client.post("/v1/replays", json={}, headers=headers[name]).status_code == 200
        assert calls.owner_filter == expected, name


def test_admin_sees_and_deletes_another_callers_project(calls: FakeUseCases) -> None:
    """An admin token reads and deletes a project another caller requested."""
    calls.owners = {PID: "bob"}
    client, headers = _scoped(calls, root=("admin",))
    assert client.get(f"/v1/projects/{PID}", headers=headers["root"]).json()["requested_by"] == "bob"
    assert client.delete(f"/v1/projects/{PID}", headers=headers["root"]).status_code == 202
    assert calls.requested_by == "root"


def test_requests_record_the_callers_name(calls: FakeUseCases) -> None:
    """A request and a deprovisioning pass the token's caller name as who asked."""
    calls.owners = {PID: "alice"}
    client, headers = _scoped(calls, alice=("provision", "deprovision"))
    assert client.post("/v1/projects", json={"project_id": PID}, headers=headers["alice"]).status_code == 202
    assert calls.requested_by == "alice"
    assert client.delete(f"/v1/projects/{PID}", headers=headers["alice"]).status_code == 202
    assert calls.requested_by == "alice"


def test_a_duplicate_of_another_callers_request_is_a_conflict_without_its_receipt(
    calls: FakeUseCases,
) -> None:
    """The same payload again from an owner-scoped caller who did not request it is 409, with no
    correlation id; from its requester it is the 200 with the receipt."""
    calls.owners = {PID: "bob"}
    calls.duplicate = True
    client, headers = _scoped(calls, alice=("provision",), bob=("provision",))
    refused = client.post("/v1/projects", json={"project_id": PID}, headers=headers["alice"])
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "conflict")
    assert str(CORRELATION) not in refused.text
    again = client.post("/v1/projects", json={"project_id": PID}, headers=headers["bob"])
    assert again.status_code == 200


def test_insecure_local_may_do_everything(client: TestClient, calls: FakeUseCases) -> None:
    """Without tokens (--insecure-local) every route is open to the local caller, over every project."""
    calls.owners = {PID: "bob"}
    assert client.get(f"/v1/projects/{PID}").status_code == 200
    assert client.delete(f"/v1/projects/{PID}").status_code == 202
    assert calls.requested_by == "local"
