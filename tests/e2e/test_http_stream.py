"""The HTTP API's live stream against the seven workers on the real broker and database:
every transition of a live project in order, ending at its terminal stage, and resumable."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.bootstrap import App
from shared.domain.steps import STEPS
from tests.api_server import RunningApi, serve_api
from tests.sse import stream_until_end
from tests.support import WorkerGroup

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(app: App, running_workers: WorkerGroup) -> Iterator[RunningApi]:
    """The API, with the seven workers running."""
    with serve_api(app) as running:
        yield running


def test_stream_delivers_every_transition_in_order_and_resumes(app: App, api: RunningApi) -> None:
    """A live project's stream shows each of the seven steps running then succeeding, in step
    order, ends at COMPLETED, and resumed with Last-Event-ID gives exactly the rest."""
    project_id = str(uuid.uuid4())
    with api.client() as client:
        posted = client.post(
            "/v1/projects", json={"project_id": project_id, "region": app.settings.regions[0]}
        )
        assert posted.status_code == 202
        events = stream_until_end(client, project_id)

        steps = [e for e in events if e.event == "step"]
        ids = [int(e.id or 0) for e in steps]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert [e.data["id"] for e in steps] == ids
        successes = [e.data["step"] for e in steps if e.data["status"] == "success"]
        assert successes == [s.name for s in STEPS]
        for step in STEPS:
            statuses = [e.data["status"] for e in steps if e.data["step"] == step.name]
            assert statuses[-2:] == ["running", "success"], (step.name, statuses)
        assert events[-1].event == "end" and events[-1].data == {"stage": "COMPLETED"}
        stages = [e.data["stage"] for e in events if e.event == "stage"]
        assert stages[-1] == "COMPLETED"

        cut = next(e for e in steps if e.data["step"] == STEPS[3].name and e.data["status"] == "success")
        resumed = stream_until_end(client, project_id, last_event_id=cut.id)
        rest = [e for e in resumed if e.event == "step"]
        assert [e.id for e in rest] == [e.id for e in steps if int(e.id or 0) > int(cut.id or 0)]
        assert resumed[-1].event == "end"

        view = client.get(f"/v1/projects/{project_id}").json()
        assert view["stage"] == "COMPLETED"
        assert view["result"]["project_id"] == project_id
        assert "password" not in str(view["result"]).lower()
        assert view["eta_seconds"] is None
        assert all(s["duration_ms"] is not None and s["attempts"] >= 1 for s in view["steps"])


def test_a_watcher_connected_before_the_work_sees_it_live(app: App, api: RunningApi) -> None:
    """Two watchers of one project, one from the start and one resuming, agree on every event."""
    project_id = str(uuid.uuid4())
    with api.client() as client, api.client() as other:
        client.post("/v1/projects", json={"project_id": project_id, "region": app.settings.regions[0]})
        first = stream_until_end(client, project_id)
        second = stream_until_end(other, project_id, last_event_id="0")
    assert [(e.event, e.id) for e in first if e.event == "step"] == [
        (e.event, e.id) for e in second if e.event == "step"
    ]


def test_an_invalid_last_event_id_is_422(app: App, api: RunningApi) -> None:
    """A Last-Event-ID that is not an event id is refused with 422 naming the header."""
    project_id = str(uuid.uuid4())  # never requested: the header is judged first, and no
    # project is left in flight for a later test's workers to finish
    with api.client() as client:
        response = client.get(f"/v1/projects/{project_id}/events", headers={"Last-Event-ID": "abc"})
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "Last-Event-ID"
