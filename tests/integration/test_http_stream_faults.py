"""The live stream when things go wrong, on the real database: its LISTEN connection killed,
a quiet project, too many watchers."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from services.bootstrap import App
from services.usecases.seed import update_provisioning_step
from services.web.stream import LISTENER_NAME
from tests.api_server import RunningApi, free_port, serve_api
from tests.sse import SseEvent, read_events
from tests.support import REPO_ROOT, env_of, make_app, settings_env
from tooling.bench.sse_events import SseDecoder


def _request(client: httpx.Client, app: App) -> str:
    project_id = str(uuid.uuid4())
    response = client.post("/v1/projects", json={"project_id": project_id, "region": app.settings.regions[0]})
    assert response.status_code == 202
    return project_id


class Watcher:
    """One stream read on a thread: its events land in a queue."""

    def __init__(self, client: httpx.Client, project_id: str) -> None:
        self.events: queue.Queue[SseEvent] = queue.Queue()
        self.decoder = SseDecoder()
        self._client = client
        self._project_id = project_id
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        path = f"/v1/projects/{self._project_id}/events"
        try:
            with self._client.stream("GET", path, timeout=60) as response:
                for event in read_events(response.iter_bytes(), self.decoder):
                    self.events.put(event)
        except (httpx.HTTPError, RuntimeError):
            return  # the test closed its client: the stream ends with it

    def next(self, event: str, timeout: float = 15.0) -> SseEvent:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                found = self.events.get(timeout=left)
            except queue.Empty:
                break
            if found.event == event:
                return found
        raise AssertionError(f"no {event!r} event within {timeout} s")


@pytest.fixture(scope="module")
def api(app: App) -> Iterator[RunningApi]:
    """The API with a short keepalive, so a quiet stream shows it."""
    with serve_api(app, keepalive=0.5) as running:
        yield running


def test_stream_goes_on_after_its_listen_connection_is_killed(app: App, api: RunningApi) -> None:
    """Killing the API's LISTEN backend loses nothing: the listener reconnects, /healthz comes
    back, and a transition made after the kill still reaches the open stream."""
    with api.client() as client, api.client() as watcher_client:
        project_id = _request(client, app)
        watcher = Watcher(watcher_client, project_id)
        assert watcher.next("stage").data["stage"] == "INITIALIZING"
        with app.engine.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :n"
                ),
                {"n": LISTENER_NAME},
            ).scalar_one()
        assert killed == 1
        update_provisioning_step(project_id, "create_tenant_database", "running", app=app)
        event = watcher.next("step")
        assert (event.data["step"], event.data["status"]) == ("create_tenant_database", "running")
        deadline = time.monotonic() + 15
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the listener did not reconnect"
            time.sleep(0.2)


def test_a_quiet_stream_sends_keepalive_comments(app: App, api: RunningApi) -> None:
    """A project with nothing happening gets keepalive comments, which SSE clients ignore."""
    with api.client() as client, api.client() as watcher_client:
        watcher = Watcher(watcher_client, _request(client, app))
        watcher.next("stage")
        deadline = time.monotonic() + 10
        while watcher.decoder.comments == 0:
            assert time.monotonic() < deadline, "no keepalive within 10 s"
            time.sleep(0.1)


def test_streams_over_the_process_limit_get_503(app: App, tmp_path: Path) -> None:
    """Past PROVISION_API_MAX_STREAMS open streams, one more is 503 too_many_streams with Retry-After."""
    limited = make_app(env_of(app), tmp_path, api_max_streams=1)
    try:
        with serve_api(limited) as running, running.client() as client, running.client() as watcher_client:
            project_id = _request(client, limited)
            Watcher(watcher_client, project_id).next("stage")
            refused = client.get(f"/v1/projects/{project_id}/events")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert refused.headers["retry-after"] == "5"
    finally:
        limited.close()


def test_a_transition_committed_out_of_id_order_still_reaches_the_stream(app: App, api: RunningApi) -> None:
    """Two steps of one project changed in overlapping transactions, the lower id committing
    last: the open stream gets both (a cancel racing a step's end is such a case)."""
    with api.client() as client, api.client() as watcher_client:
        project_id = _request(client, app)
        watcher = Watcher(watcher_client, project_id)
        watcher.next("stage")
        change = text(
            "UPDATE provisioning_steps SET status = 'running' WHERE project_id = :p AND step_name = :s"
        )
        slow = app.engine.connect()
        try:
            slow_tx = slow.begin()
            slow.execute(change, {"p": project_id, "s": "create_tenant_database"})  # the lower id
            with app.engine.begin() as fast:
                fast.execute(change, {"p": project_id, "s": "create_tenant_schema"})
            first = watcher.next("step")
            slow_tx.commit()
        finally:
            slow.close()
        second = watcher.next("step")
    assert first.data["step"] == "create_tenant_schema"
    assert second.data["step"] == "create_tenant_database"
    assert int(second.data["id"]) < int(first.data["id"])


def test_a_watcher_resumes_across_a_killed_api_process(app: App, tmp_path: Path) -> None:
    """The API process SIGKILLed while a project moves on: a new process on the same port, asked
    with Last-Event-ID, sends exactly the transitions committed meanwhile, in order."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-c",
        "from services.cli import main; main()",
        "api",
        "--insecure-local",
        "--port",
        str(port),
    ]
    environment = {**os.environ, **settings_env(app.settings)}

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "api.log").open("ab") as log:
            proc = subprocess.Popen(command, env=environment, stdout=log, stderr=log, cwd=REPO_ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()[
                -2000:
            ]
            time.sleep(0.1)

    proc = start()
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            project_id = _request(client, app)
            with client.stream("GET", f"/v1/projects/{project_id}/events") as response:
                seen = []
                for event in read_events(response.iter_bytes()):
                    seen.append(event)
                    if event.event == "stage":
                        break
            last = max(int(e.id or 0) for e in seen if e.event == "step")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            update_provisioning_step(project_id, "create_tenant_database", "running", app=app)
            update_provisioning_step(project_id, "create_tenant_database", "success", app=app)
            proc = start()
            with client.stream(
                "GET", f"/v1/projects/{project_id}/events", headers={"Last-Event-ID": str(last)}
            ) as response:
                resumed = []
                for event in read_events(response.iter_bytes()):
                    resumed.append(event)
                    if event.event == "stage":
                        break
        steps = [(e.data["step"], e.data["status"]) for e in resumed if e.event == "step"]
        assert steps == [("create_tenant_database", "running"), ("create_tenant_database", "success")]
        assert resumed[-1].data["stage"] == "CREATING_SCHEMA"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_the_stream_cap_holds_under_concurrent_opens(app: App, tmp_path: Path) -> None:
    """Twenty streams asked for at once against a cap of three: three are served, the rest get
    503, and once the three end their slots are free again."""
    limited = make_app(env_of(app), tmp_path, api_max_streams=3)
    try:
        with serve_api(limited) as running, running.client() as client:
            project_id = _request(client, limited)
            start = threading.Barrier(20)
            statuses: queue.Queue[int] = queue.Queue()
            release = threading.Event()

            def open_one() -> None:
                with running.client() as own:
                    start.wait()
                    with own.stream("GET", f"/v1/projects/{project_id}/events", timeout=60) as response:
                        statuses.put(response.status_code)
                        release.wait(30)

            threads = [threading.Thread(target=open_one, daemon=True) for _ in range(20)]
            for thread in threads:
                thread.start()
            answered = [statuses.get(timeout=30) for _ in threads]
            release.set()
            for thread in threads:
                thread.join(30)
            assert sorted(answered) == [200] * 3 + [503] * 17
            deadline = time.monotonic() + 10
            while True:  # the slots come back as the server notices each client gone
                with client.stream("GET", f"/v1/projects/{project_id}/events", timeout=10) as again:
                    if again.status_code == 200:
                        break
                assert time.monotonic() < deadline, "the slots of ended streams were not given back"
                time.sleep(0.2)
    finally:
        limited.close()


def test_a_stream_ends_at_its_lifetime_and_the_client_resumes_with_last_event_id(
    app: App, tmp_path: Path
) -> None:
    """A stream open past PROVISION_API_STREAM_MAX_SECONDS ends with a comment saying so and gives
    its slot back; the client reconnects with Last-Event-ID and gets only what came after."""
    short = make_app(env_of(app), tmp_path, api_stream_max_seconds=1.5, api_max_streams=1)
    try:
        with serve_api(short, keepalive=0.5) as running, running.client() as client:
            project_id = _request(client, short)
            path = f"/v1/projects/{project_id}/events"
            decoder = SseDecoder()
            started = time.monotonic()
            with client.stream("GET", path, timeout=30) as response:
                assert response.status_code == 200
                body = b"".join(response.iter_bytes())
            lasted = time.monotonic() - started
            assert 1.4 < lasted < 10, lasted
            assert body.endswith(b"lifetime is over; reconnect with Last-Event-ID\n\n")
            first = list(read_events(iter([body]), decoder))
            last_id = max((int(e.id) for e in first if e.id), default=0)
            update_provisioning_step(project_id, "create_tenant_database", "running", app=short)
            with client.stream("GET", path, headers={"Last-Event-ID": str(last_id)}, timeout=30) as resumed:
                assert resumed.status_code == 200  # the one slot was given back
                steps = [e for e in read_events(resumed.iter_bytes(), SseDecoder()) if e.event == "step"]
            assert [(e.data["step"], e.data["status"]) for e in steps] == [
                ("create_tenant_database", "running")
            ]
    finally:
        short.close()


def test_a_client_gone_mid_body_is_a_4xx_not_a_500(app: App, api: RunningApi) -> None:
    """A POST whose client closes the connection half way through its body is counted and
    logged as 400 client_disconnected, never as a 500."""
    host, port = api.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/projects HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api.token}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"project_id": "half'
        )
        time.sleep(0.3)

    def posted_codes() -> list[str]:
        lines = httpx.get(f"{api.base_url}/metrics", timeout=5).text.splitlines()
        return [
            match.group(1)
            for line in lines
            if line.startswith("provisioning_api_requests_total{")
            and 'route="/v1/projects"' in line
            and 'method="POST"' in line
            and (match := re.search(r'status="(\d+)"', line))
        ]

    deadline = time.monotonic() + 10
    while True:
        codes = posted_codes()
        if "400" in codes:
            break
        assert time.monotonic() < deadline, f"no 400 counted for the broken POST: {codes}"
        time.sleep(0.2)
    assert "500" not in codes
