"""The HTTP API on the real database and broker: every status code, its error bodies, its
limits and its tokens (the live stream with workers is in tests/e2e/test_http_stream.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.bootstrap import App
from services.usecases.requests import request_deprovisioning
from shared.domain.payloads import ProvisionProjectPayload
from tests.api_server import RunningApi, serve_api
from tests.integration.test_replay_reads import SCHEMA, fail_schema_step, publish_failure
from tests.support import REPO_ROOT, unique_project


@pytest.fixture(scope="module")
def api(app: App) -> Iterator[RunningApi]:
    """The API on a free port, with its admin token and two owner-scoped callers."""
    everything = ["read", "provision", "deprovision", "replay"]
    with serve_api(app, callers={"alice": everything, "bob": everything}) as running:
        yield running


@pytest.fixture
def client(api: RunningApi) -> Iterator[httpx.Client]:
    """A client that presents the API's token."""
    with api.client() as c:
        yield c


def _payload(app: App, **extra: Any) -> dict[str, Any]:
    return {"project_id": str(uuid.uuid4()), "region": app.settings.regions[0], **extra}


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def test_post_new_is_202_with_location_and_the_same_again_is_200(app: App, client: httpx.Client) -> None:
    """A new request is 202 with Location and its correlation id; the same payload again is 200, same body."""
    payload = _payload(app)
    first = client.post("/v1/projects", json=payload)
    assert first.status_code == 202, first.text
    assert first.headers["location"] == f"/v1/projects/{payload['project_id']}"
    body = first.json()
    assert body["project_id"] == payload["project_id"]
    uuid.UUID(body["correlation_id"])
    again = client.post("/v1/projects", json=payload)
    assert again.status_code == 200
    assert again.json() == body
    assert again.headers["location"] == first.headers["location"]


def test_post_with_another_payload_for_a_known_id_is_409(app: App, client: httpx.Client) -> None:
    """A different payload for a known project id is 409 conflict."""
    payload = _payload(app)
    assert client.post("/v1/projects", json=payload).status_code == 202
    other = client.post("/v1/projects", json={**payload, "services": {"realtime": False}})
    assert other.status_code == 409
    assert _error(other)["code"] == "conflict"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"project_id": "Not An Id!", "region": "us-east-1"}, "project_id"),
        ({"project_id": str(uuid.uuid4()), "region": "mars-1"}, "region"),
        ({"project_id": str(uuid.uuid4())}, "region"),
        (
            {"project_id": str(uuid.uuid4()), "region": "us-east-1", "database": {"engine": "mysql"}},
            "database.engine",
        ),
        ({"project_id": str(uuid.uuid4()), "region": "us-east-1", "surprise": 1}, "surprise"),
    ],
)
def test_post_invalid_is_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    """An invalid payload is 422 invalid_request with the field and a one-line reason."""
    response = client.post("/v1/projects", json=body)
    assert response.status_code == 422, response.text
    error = _error(response)
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert "\n" not in error["message"]


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b'{"project_id": NaN}', b"null", b'"text"'])
def test_post_not_a_json_object_is_422(client: httpx.Client, raw: bytes) -> None:
    """A body that is not a JSON object (broken, an array, not UTF-8, NaN) is 422, never 500."""
    response = client.post("/v1/projects", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert _error(response)["code"] == "invalid_request"


def test_body_over_the_limit_is_413_declared_or_streamed(app: App, client: httpx.Client) -> None:
    """A body over the limit is 413, whether its length is declared or it arrives in chunks."""
    big = b'{"project_id": "' + b"a" * (app.settings.api_max_body_bytes + 10) + b'"}'
    declared = client.post("/v1/projects", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert _error(declared)["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    streamed = client.post("/v1/projects", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert _error(streamed)["code"] == "payload_too_large"


@pytest.mark.parametrize("token", ["", "ptk_wrong", "Basic dXNlcjpwdw=="])
def test_v1_without_a_valid_token_is_401(api: RunningApi, token: str) -> None:
    """Every /v1 route refuses a missing or wrong token with 401 and WWW-Authenticate."""
    with api.client(token=token) as c:
        for method, path in [
            ("GET", "/v1/projects"),
            ("POST", "/v1/projects"),
            ("GET", "/v1/projects/x/events"),
        ]:
            response = c.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert _error(response)["code"] == "unauthorized"


def test_get_project_shows_stage_and_seven_steps(app: App, client: httpx.Client) -> None:
    """GET of a requested project shows its stage, seven pending steps, no result, no reverse steps."""
    payload = _payload(app)
    client.post("/v1/projects", json=payload)
    response = client.get(f"/v1/projects/{payload['project_id']}")
    assert response.status_code == 200
    view = response.json()
    assert view["stage"] == "INITIALIZING"
    assert [s["name"] for s in view["steps"]][:2] == ["create_tenant_database", "create_tenant_schema"]
    assert len(view["steps"]) == 7
    assert {s["status"] for s in view["steps"]} == {"pending"}
    assert view["deprovisioning"] == []
    assert view["result"] is None
    assert view["last_event_id"] > 0


def test_unknown_project_is_404_and_a_malformed_id_422(client: httpx.Client) -> None:
    """An unknown project is 404 project_not_found on GET, events and DELETE; a malformed id is 422."""
    unknown = str(uuid.uuid4())
    for method, path in [("GET", ""), ("GET", "/events"), ("DELETE", "")]:
        response = client.request(method, f"/v1/projects/{unknown}{path}")
        assert response.status_code == 404, (method, path)
        assert _error(response)["code"] == "project_not_found"
    malformed = client.get("/v1/projects/%00bad")
    assert malformed.status_code == 422
    assert _error(malformed)["field"] == "project_id"


def test_delete_is_202_then_200_with_the_same_correlation(app: App, client: httpx.Client) -> None:
    """DELETE starts the reverse chain (202); asking again is 200 with the same correlation id."""
    payload = _payload(app)
    client.post("/v1/projects", json=payload)
    first = client.delete(f"/v1/projects/{payload['project_id']}", params={"reason": "tests"})
    assert first.status_code == 202
    again = client.delete(f"/v1/projects/{payload['project_id']}")
    assert again.status_code == 200
    assert again.json()["correlation_id"] == first.json()["correlation_id"]
    view = client.get(f"/v1/projects/{payload['project_id']}").json()
    assert len(view["deprovisioning"]) == 7


def test_list_filters_by_stage_and_pages(app: App, client: httpx.Client) -> None:
    """The list filters by stage, pages with limit/offset and a next link; a bad stage is 422."""
    for _ in range(3):
        client.post("/v1/projects", json=_payload(app))
    page = client.get("/v1/projects", params={"stage": "initializing", "limit": 2})
    assert page.status_code == 200
    body = page.json()
    assert len(body["projects"]) == 2
    assert {p["stage"] for p in body["projects"]} == {"INITIALIZING"}
    assert body["counts"]["INITIALIZING"] >= 3
    following = client.get(body["next"])
    assert following.status_code == 200
    seen = {p["project_id"] for p in body["projects"]}
    assert not seen & {p["project_id"] for p in following.json()["projects"]}
    bad = client.get("/v1/projects", params={"stage": "nowhere"})
    assert bad.status_code == 422
    assert _error(bad)["field"] == "stage"
    assert client.get("/v1/projects", params={"limit": 0}).status_code == 422


def test_replay_dry_run_and_an_unknown_step(client: httpx.Client) -> None:
    """POST /v1/replays with dry_run answers the decisions; an unknown step is 422."""
    response = client.post("/v1/replays", json={"project_id": str(uuid.uuid4()), "dry_run": True})
    assert response.status_code == 200, response.text
    assert response.json() == {"decisions": [], "replayed": 0}
    unknown = client.post("/v1/replays", json={"step": "teleport", "dry_run": True})
    assert unknown.status_code == 422
    assert _error(unknown)["field"] == "step"


def test_replay_with_an_empty_body_is_a_dry_run(app: App, client: httpx.Client) -> None:
    """POST /v1/replays with `{}` only says what it would replay: the failed step stays failed."""
    project_id = unique_project("replay")
    app.repository.register_request(
        ProvisionProjectPayload(project_id=project_id, region="eu-west-1"), uuid.uuid4()
    )
    fail_schema_step(app, project_id)
    publish_failure(app, project_id)
    before = app.repository.step(project_id, SCHEMA.name)
    response = client.post("/v1/replays", json={})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["replayed"] == 0
    assert {d["action"] for d in body["decisions"]} <= {"would replay", "would redrive", "skipped"}
    mine = [d for d in body["decisions"] if d["project_id"] == project_id]
    assert [(d["step"], d["action"]) for d in mine] == [("schema", "would replay")]
    assert app.repository.step(project_id, SCHEMA.name) == before


def test_the_served_openapi_document_is_the_committed_one(api: RunningApi) -> None:
    """/openapi.json, open to all, is exactly schemas/openapi.json."""
    with api.client(token="") as c:
        served = c.get("/openapi.json").json()
    assert served == json.loads((REPO_ROOT / "schemas" / "openapi.json").read_text())


def test_open_routes_health_metrics_page_and_json_404_405(api: RunningApi) -> None:
    """/healthz, /metrics and / need no token; an unknown route is a JSON 404, a wrong method a JSON 405."""
    with api.client(token="") as c:
        assert c.get("/healthz").json() == {"status": "ok", "database": True, "listener": True}
        assert "provisioning_api_requests_total" in c.get("/metrics").text
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        missing = c.get("/v2/nothing")
        assert missing.status_code == 404
        assert _error(missing)["code"] == "not_found"
        wrong = c.put("/healthz")
        assert wrong.status_code == 405
        assert _error(wrong)["code"] == "method_not_allowed"


def _deleted(app: App, client: httpx.Client, *, purge_now: bool = False) -> str:
    """A project requested, deprovisioned and marked deleted (what the reverse chain ends with)."""
    payload = _payload(app)
    assert client.post("/v1/projects", json=payload).status_code == 202
    request_deprovisioning(payload["project_id"], app=app, purge_now=purge_now)
    app.projects.mark_deleted(payload["project_id"])
    return str(payload["project_id"])


def test_restore_of_a_deleted_project_is_202_and_its_view_says_restorable(
    app: App, client: httpx.Client
) -> None:
    """A deleted project's view shows its window and restorable; POST restore is 202 with the
    receipt and the provisioning chain pending again; asked again it is 409 with the reason."""
    project_id = _deleted(app, client)
    view = client.get(f"/v1/projects/{project_id}").json()
    assert view["deleted_at"] is not None and view["purge_after"] is not None
    assert (view["purged_at"], view["restorable"]) == (None, True)
    response = client.post(f"/v1/projects/{project_id}/restore")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["project_id"] == project_id
    assert body["location"] == response.headers["location"] == f"/v1/projects/{project_id}"
    uuid.UUID(body["correlation_id"])
    after = client.get(f"/v1/projects/{project_id}").json()
    assert (after["deleted_at"], after["restorable"], after["deprovisioning"]) == (None, False, [])
    assert {s["status"] for s in after["steps"]} == {"pending"}
    again = client.post(f"/v1/projects/{project_id}/restore")
    assert again.status_code == 409
    assert _error(again)["code"] == "conflict"
    assert "not deleted" in _error(again)["message"] and "\n" not in _error(again)["message"]


def test_restore_refused_past_the_window_is_409_and_unknown_404(app: App, client: httpx.Client) -> None:
    """A project past its window is 409 naming it, not restorable; an unknown one 404; a live one 409."""
    project_id = _deleted(app, client, purge_now=True)
    assert client.get(f"/v1/projects/{project_id}").json()["restorable"] is False
    refused = client.post(f"/v1/projects/{project_id}/restore")
    assert refused.status_code == 409
    assert "retention window" in _error(refused)["message"]
    unknown = client.post(f"/v1/projects/{uuid.uuid4()}/restore")
    assert unknown.status_code == 404
    assert _error(unknown)["code"] == "project_not_found"
    live = _payload(app)
    client.post("/v1/projects", json=live)
    assert client.post(f"/v1/projects/{live['project_id']}/restore").status_code == 409


# --- owners ------------------------------------------------------------------------------------


def test_a_caller_cannot_delete_another_callers_project(app: App, api: RunningApi) -> None:
    """The issue's attack: bob's token, with every scope but admin, cannot delete the project alice
    requested (404, as for an unknown one), nor see it, list it, restore it or stream it; the
    project is untouched and alice still removes it herself."""
    payload = _payload(app)
    pid = payload["project_id"]
    with api.client(token=api.tokens["alice"]) as alice, api.client(token=api.tokens["bob"]) as bob:
        assert alice.post("/v1/projects", json=payload).status_code == 202
        unknown = str(uuid.uuid4())
        attack = bob.delete(f"/v1/projects/{pid}", params={"reason": "mine now"})
        assert attack.status_code == 404
        assert _error(attack)["code"] == "project_not_found"
        assert _error(attack)["message"] == _error(bob.delete(f"/v1/projects/{unknown}"))["message"].replace(
            unknown, pid
        )
        record = app.projects.project(pid)
        assert record is not None
        assert (record.deprovision_requested_at, record.deprovision_requested_by) == (None, None)
        for path in (f"/v1/projects/{pid}", f"/v1/projects/{pid}/events"):
            assert bob.get(path).status_code == 404, path
        assert bob.post(f"/v1/projects/{pid}/restore").status_code == 404
        listed = bob.get("/v1/projects", params={"limit": 200}).json()["projects"]
        assert pid not in {p["project_id"] for p in listed}
        own = alice.get("/v1/projects", params={"limit": 200}).json()["projects"]
        assert pid in {p["project_id"] for p in own}
        assert bob.post("/v1/projects", json=payload).status_code == 409  # no receipt of alice's
        mine = alice.delete(f"/v1/projects/{pid}", params={"reason": "done"})
        assert mine.status_code == 202, mine.text
    record = app.projects.project(pid)
    assert record is not None and record.deprovision_requested_by == "alice"


def test_requested_by_is_recorded_and_shown_in_the_project_view(
    app: App, api: RunningApi, client: httpx.Client
) -> None:
    """Who requested a project and its removal is recorded from the token's caller and shown in
    its view; the admin token sees the project alice requested, and its removal is the admin's."""
    payload = _payload(app)
    pid = payload["project_id"]
    with api.client(token=api.tokens["alice"]) as alice:
        assert alice.post("/v1/projects", json=payload).status_code == 202
        shown = alice.get(f"/v1/projects/{pid}").json()
    assert (shown["requested_by"], shown["deprovision_requested_by"]) == ("alice", None)
    assert client.delete(f"/v1/projects/{pid}").status_code == 202
    shown = client.get(f"/v1/projects/{pid}").json()
    assert (shown["requested_by"], shown["deprovision_requested_by"]) == ("alice", "tests")


def test_replays_name_only_the_callers_own_projects(app: App, api: RunningApi) -> None:
    """A dry-run replay by an owner-scoped caller considers only its own failed projects; admin sees them."""
    project_id = unique_project("replay-own")
    app.projects.register_request(
        ProvisionProjectPayload(project_id=project_id, region="eu-west-1"), uuid.uuid4(), requested_by="alice"
    )
    fail_schema_step(app, project_id)
    publish_failure(app, project_id)
    for name, sees in (("alice", True), ("bob", False)):
        with api.client(token=api.tokens[name]) as c:
            decisions = c.post("/v1/replays", json={"dry_run": True}).json()["decisions"]
        assert (project_id in {d["project_id"] for d in decisions}) is sees, name
    with api.client() as admin:
        decisions = admin.post("/v1/replays", json={"project_id": project_id}).json()["decisions"]
    assert [d["action"] for d in decisions] == ["would replay"]
