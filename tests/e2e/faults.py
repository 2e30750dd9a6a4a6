"""Helpers of the fault tests: side-effect counts read straight from PostgreSQL, and a real
HTTP stand-in for the platform services."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

from services.bootstrap import App
from shared.db import libpq_url
from shared.domain.naming import TenantNames
from shared.settings import Settings
from tests.support import env_of, make_app


@dataclass(frozen=True)
class SideEffects:
    """How many of each artefact exist for a set of projects."""

    databases: int
    roles: int
    registrations: dict[tuple[str, str], int]
    keys: dict[str, int]


def side_effects(app: App, project_ids: Sequence[str]) -> SideEffects:
    """Count tenant databases, roles, registrations and keys of ``project_ids``."""
    names = [TenantNames.for_project(p).database for p in project_ids]
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        databases = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", (names,)
        ).fetchone()
        roles = admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchone()
        registrations = admin.execute(
            "SELECT project_id, service, count(*) FROM service_registrations "
            "WHERE project_id = ANY(%s) GROUP BY 1, 2",
            (list(project_ids),),
        ).fetchall()
        keys = admin.execute(
            "SELECT project_id, count(*) FROM api_keys WHERE project_id = ANY(%s) GROUP BY 1",
            (list(project_ids),),
        ).fetchall()
    assert databases is not None and roles is not None
    return SideEffects(
        databases=int(databases[0]),
        roles=int(roles[0]),
        registrations={(p, s): int(n) for p, s, n in registrations},
        keys={p: int(n) for p, n in keys},
    )


def assert_each_side_effect_once(app: App, project_ids: Sequence[str], *, keys: int = 2) -> None:
    """One database, one role, one registration per service and exactly ``keys`` keys each."""
    found = side_effects(app, project_ids)
    assert found.databases == len(project_ids)
    assert found.roles == len(project_ids)
    assert found.registrations == {(p, s): 1 for p in project_ids for s in ("auth", "realtime", "storage")}
    assert found.keys == {p: keys for p in project_ids}


@dataclass
class ServiceStandIn:
    """A platform service's tenant API: ``PUT``/``GET``/``DELETE /<service>/tenants/<id>`` and
    ``GET /<service>/tenants`` (a JSON array of the service's tenant ids).

    ``reject`` holds services answering 400 to registrations, to make a permanent failure;
    ``unavailable`` holds tenant ids answered with 503 (to PUT and DELETE), a retryable one;
    ``delete_status`` forces the status of a DELETE by tenant id; ``unlistable`` forces the
    status of ``GET /<service>/tenants`` by service.
    """

    port: int = 0
    reject: set[str] = field(default_factory=set)
    unavailable: set[str] = field(default_factory=set)
    tenants: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    puts: int = 0
    put_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    """Registration calls per (service, tenant): what no database constraint would show."""
    delete_status: dict[str, int] = field(default_factory=dict)
    unlistable: dict[str, int] = field(default_factory=dict)
    listed_only: dict[str, set[str]] = field(default_factory=dict)
    """A service whose tenant list shows only these ids (none: ``[]``, as one restarted empty
    may answer), whatever it holds."""
    deletes: list[tuple[str, str, int]] = field(default_factory=list)
    """Every DELETE as (service, tenant, status answered)."""

    def base_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port}/{service}"

    def settings_for(self, app: App, state_dir: Path, **overrides: Any) -> Settings:
        """Worker settings that register through this stand-in with the ``http`` adapter."""
        urls = {f"{s}_url": self.base_url(s) for s in ("auth", "realtime", "storage")}
        return make_app(env_of(app), state_dir, service_adapter="http", **urls, **overrides).settings


@contextmanager
def service_stand_in() -> Iterator[ServiceStandIn]:
    """Run a ServiceStandIn on a free loopback port for the block."""
    state = ServiceStandIn()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _parts(self) -> tuple[str, str] | None:
            parts = self.path.strip("/").split("/")
            return (parts[0], parts[2]) if len(parts) == 3 and parts[1] == "tenants" else None

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            parts = self._parts()
            length = int(self.headers.get("Content-Length", "0"))
            spec = json.loads(self.rfile.read(length) or b"{}")
            if parts is None:
                self._reply(404, {"error": "no such route"})
                return
            service, tenant = parts
            with lock:
                state.puts += 1
                state.put_counts[(service, tenant)] = state.put_counts.get((service, tenant), 0) + 1
                if service in state.reject:
                    self._reply(400, {"error": f"{service} refuses tenant {tenant}"})
                    return
                if tenant in state.unavailable:
                    self._reply(503, {"error": "try again later"})
                    return
                body = {
                    "endpoint": f"{state.base_url(service)}/{tenant}",
                    "bucket_name": spec.get("bucket_name"),
                }
                state.tenants[(service, tenant)] = body
            self._reply(200, body)

        def do_GET(self) -> None:
            listed = self.path.strip("/").split("/")
            if len(listed) == 2 and listed[1] == "tenants":
                self._list(listed[0])
                return
            parts = self._parts()
            with lock:
                body = state.tenants.get(parts) if parts else None
            self._reply(200, body) if body is not None else self._reply(404, {"error": "unknown tenant"})

        def _list(self, service: str) -> None:
            with lock:
                status = state.unlistable.get(service)
                ids = sorted(t for s, t in state.tenants if s == service)
                if service in state.listed_only:
                    ids = [t for t in ids if t in state.listed_only[service]]
            if status is not None:
                self._reply(status, {"error": f"{service} cannot list its tenants"})
                return
            self._reply(200, ids)

        def do_DELETE(self) -> None:
            parts = self._parts()
            if parts is None:
                self._reply(404, {"error": "no such route"})
                return
            service, tenant = parts
            with lock:
                status = state.delete_status.get(tenant) or (503 if tenant in state.unavailable else None)
                if status is None:
                    status = 204 if state.tenants.pop(parts, None) is not None else 404
                state.deletes.append((service, tenant, status))
            if status == 204:
                self.send_response(204)
                self.end_headers()
                return
            self._reply(status, {"error": "unknown tenant"} if status == 404 else {"error": "refused"})

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
