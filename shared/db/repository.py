"""The step table's state machine and the project records, enforced in SQL.

Every transition is one compare-and-set ``UPDATE ... WHERE status = ANY(:from)``: two
consumers racing on a step cannot both win, and nothing is decided on a stale read.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, text

from shared.errors import InvalidTransitionError
from shared.events import ProvisionProjectPayload
from shared.steps import STEP_NAMES, StepStatus

S = StepStatus

# target -> the statuses it may be reached from (running -> running needs an expired lease).
ALLOWED_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    S.RUNNING: frozenset({S.PENDING}),
    S.SUCCESS: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.RUNNING}),
    S.PENDING: frozenset({S.FAILED}),
    S.SKIPPED: frozenset({S.PENDING}),
}

_SET_CLAUSES: Mapping[StepStatus, str] = {
    S.RUNNING: """
        started_at = now(), completed_at = NULL,
        retry_count = retry_count + CASE WHEN status = 'running' THEN 1 ELSE 0 END,
        lease_owner = :owner,
        lease_expires_at = now() + make_interval(secs => :lease_seconds)""",
    S.SUCCESS: """
        completed_at = now(), result = CAST(:result AS jsonb),
        lease_owner = NULL, lease_expires_at = NULL""",
    S.FAILED: """
        completed_at = now(), error_message = :error_message,
        error_details = CAST(:error_details AS jsonb),
        lease_owner = NULL, lease_expires_at = NULL""",
    S.PENDING: """
        retry_count = retry_count + 1, replay_count = replay_count + :replay,
        started_at = NULL, completed_at = NULL""",
    S.SKIPPED: """
        started_at = coalesce(started_at, now()), completed_at = now(),
        result = CAST(:result AS jsonb)""",
}


def _step_columns(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    names = [
        "id",
        "project_id",
        "step_name",
        "position",
        "status",
        "started_at",
        "completed_at",
        "error_message",
        "error_details",
        "retry_count",
        "replay_count",
        "lease_owner",
        "lease_expires_at",
        "result",
        "created_at",
        "updated_at",
    ]
    return ", ".join(p + n for n in names) + f", ({p}lease_expires_at < now()) AS lease_expired"


_STEP_COLUMNS = _step_columns()


@dataclass(frozen=True, slots=True)
class StepRow:
    """One row of ``provisioning_steps``."""

    id: uuid.UUID
    project_id: str
    step_name: str
    position: int
    status: StepStatus
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    error_details: dict[str, Any] | None
    retry_count: int
    replay_count: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    lease_expired: bool = False

    @property
    def done(self) -> bool:
        return self.status in (S.SUCCESS, S.SKIPPED)


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """A row of ``projects``."""

    project_id: str
    correlation_id: uuid.UUID | None
    request: dict[str, Any] | None
    request_hash: str | None
    created_at: datetime
    ready_at: datetime | None


class Registration(StrEnum):
    """What registering a request found."""

    NEW = "new"  # first time the control plane hears of the project
    DUPLICATE = "duplicate"  # the same request again
    CONFLICT = "conflict"  # the project exists with a different request


class ConflictingRequestError(Exception):
    """A project was requested again with a different payload."""


def request_hash(payload: ProvisionProjectPayload) -> str:
    """A stable digest of a request, to tell a duplicate from a conflicting request."""
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _row(mapping: RowMapping) -> StepRow:
    values = dict(mapping)
    values["status"] = StepStatus(values["status"])
    values["lease_expired"] = bool(values.get("lease_expired"))
    return StepRow(**values)


class StepRepository:
    """Projects and their steps, over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- projects -------------------------------------------------------------------------

    def register_request(
        self,
        payload: ProvisionProjectPayload,
        correlation_id: uuid.UUID,
        *,
        connection: Connection | None = None,
    ) -> tuple[Registration, ProjectRecord]:
        """Record a project and its seven pending steps, unless it is already known.

        Runs in ``connection``'s transaction when given (so the caller can add an outbox
        row atomically), else in its own.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.register_request(payload, correlation_id, connection=conn)
        digest = request_hash(payload)
        inserted = connection.execute(
            text(
                """
                INSERT INTO projects (project_id, correlation_id, request, request_hash)
                VALUES (:project_id, :correlation_id, CAST(:request AS jsonb), :hash)
                ON CONFLICT (project_id) DO UPDATE
                    SET correlation_id = EXCLUDED.correlation_id,
                        request = EXCLUDED.request,
                        request_hash = EXCLUDED.request_hash
                    WHERE projects.request IS NULL
                RETURNING project_id
                """
            ),
            {
                "project_id": payload.project_id,
                "correlation_id": correlation_id,
                "request": payload.model_dump_json(),
                "hash": digest,
            },
        ).first()
        if inserted is not None:
            self._initialize(connection, payload.project_id)
            record = self._project(connection, payload.project_id)
            assert record is not None
            return Registration.NEW, record
        record = self._project(connection, payload.project_id, lock=True)
        assert record is not None
        if record.request_hash == digest:
            return Registration.DUPLICATE, record
        return Registration.CONFLICT, record

    def project(self, project_id: str) -> ProjectRecord | None:
        """The project's record, or None."""
        with self.engine.connect() as conn:
            return self._project(conn, project_id)

    def _project(self, conn: Connection, project_id: str, *, lock: bool = False) -> ProjectRecord | None:
        row = (
            conn.execute(
                text(
                    "SELECT project_id, correlation_id, request, request_hash, created_at, ready_at "
                    "FROM projects WHERE project_id = :p" + (" FOR UPDATE" if lock else "")
                ),
                {"p": project_id},
            )
            .mappings()
            .first()
        )
        return ProjectRecord(**row) if row is not None else None

    def mark_ready(self, project_id: str) -> datetime:
        """Mark the project ready (once); returns when it became ready."""
        with self.engine.begin() as conn:
            ready_at = conn.execute(
                text(
                    "UPDATE projects SET ready_at = coalesce(ready_at, now()) "
                    "WHERE project_id = :p RETURNING ready_at"
                ),
                {"p": project_id},
            ).scalar_one_or_none()
        if ready_at is None:
            raise LookupError(f"project {project_id!r} not found")
        assert isinstance(ready_at, datetime)
        return ready_at

    # --- steps ----------------------------------------------------------------------------

    def initialize(self, project_id: str) -> list[StepRow]:
        """Seven pending rows in the seed's order, creating a bare project record if needed.

        Idempotent: rows that exist are left as they are.
        """
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO projects (project_id) VALUES (:p) ON CONFLICT DO NOTHING"),
                {"p": project_id},
            )
            self._initialize(conn, project_id)
        return self.steps(project_id)

    def _initialize(self, conn: Connection, project_id: str) -> None:
        conn.execute(
            text(
                """
                INSERT INTO provisioning_steps (project_id, step_name, position)
                SELECT :p, name, position FROM unnest(CAST(:names AS text[]))
                    WITH ORDINALITY AS s(name, position)
                ON CONFLICT (project_id, step_name) DO NOTHING
                """
            ),
            {"p": project_id, "names": list(STEP_NAMES)},
        )

    def steps(self, project_id: str) -> list[StepRow]:
        """The project's steps in step order (empty if it has none)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    f"SELECT {_STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p ORDER BY position"
                ),
                {"p": project_id},
            ).mappings()
            return [_row(r) for r in rows]

    def step(self, project_id: str, step_name: str) -> StepRow | None:
        """One step's row, or None."""
        with self.engine.connect() as conn:
            return self._step(conn, project_id, step_name)

    def _step(self, conn: Connection, project_id: str, step_name: str) -> StepRow | None:
        row = (
            conn.execute(
                text(
                    f"SELECT {_STEP_COLUMNS} FROM provisioning_steps WHERE project_id = :p AND step_name = :s"
                ),
                {"p": project_id, "s": step_name},
            )
            .mappings()
            .first()
        )
        return _row(row) if row is not None else None

    def claim(
        self,
        project_id: str,
        step_name: str,
        *,
        correlation_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
    ) -> StepRow | None:
        """Claim a step for the request ``correlation_id`` in one statement: ``pending ->
        running``, or a take-over of an expired (or our own) lease. None when the step is
        not claimable (done, failed, held by a live lease, gone, or of another request);
        the caller then reads the row to learn which.

        The hot path of every step: one round trip instead of read, read, update.
        """
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    text(
                        f"""
                    UPDATE provisioning_steps AS s
                    SET status = 'running', updated_at = now(), {_SET_CLAUSES[S.RUNNING]}
                    FROM projects AS p
                    WHERE s.project_id = :p AND s.step_name = :s AND p.project_id = s.project_id
                      AND (p.correlation_id IS NULL OR p.correlation_id = :correlation_id)
                      AND (s.status = 'pending' OR (s.status = 'running'
                           AND (s.lease_expires_at < now() OR s.lease_owner = :owner)))
                    RETURNING {_step_columns("s")}
                    """
                    ),
                    {
                        "p": project_id,
                        "s": step_name,
                        "correlation_id": correlation_id,
                        "owner": owner,
                        "lease_seconds": lease_seconds,
                    },
                )
                .mappings()
                .first()
            )
        return _row(row) if row is not None else None

    def transition(
        self,
        project_id: str,
        step_name: str,
        to: StepStatus | str,
        *,
        error_message: str | None = None,
        error_details: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
        owner: str | None = None,
        expected_owner: str | None = None,
        lease_seconds: float = 300.0,
        replay: bool = False,
        connection: Connection | None = None,
    ) -> StepRow:
        """Move a step to ``to`` by compare-and-set, or raise InvalidTransitionError.

        ``expected_owner`` makes success/failed conditional on still holding the lease,
        so a consumer whose lease was taken over cannot overwrite its successor's work.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.transition(
                    project_id,
                    step_name,
                    to,
                    error_message=error_message,
                    error_details=error_details,
                    result=result,
                    owner=owner,
                    expected_owner=expected_owner,
                    lease_seconds=lease_seconds,
                    replay=replay,
                    connection=conn,
                )
        target = StepStatus(to)
        sources = [s.value for s in ALLOWED_TRANSITIONS[target]]
        condition = "status = ANY(:sources)"
        if target is S.RUNNING:
            # Take-over: the holder died (lease expired), or it is ourselves again after a
            # failure we could not record while the database was unreachable.
            condition = (
                "(status = ANY(:sources) OR (status = 'running' "
                "AND (lease_expires_at < now() OR lease_owner = :owner)))"
            )
        if expected_owner is not None:
            condition += " AND lease_owner = :expected_owner"
        row = (
            connection.execute(
                text(
                    f"""
                UPDATE provisioning_steps
                SET status = :to, updated_at = now(), {_SET_CLAUSES[target]}
                WHERE project_id = :p AND step_name = :s AND {condition}
                RETURNING {_STEP_COLUMNS}
                """
                ),
                {
                    "to": target.value,
                    "p": project_id,
                    "s": step_name,
                    "sources": sources,
                    "owner": owner,
                    "expected_owner": expected_owner,
                    "lease_seconds": lease_seconds,
                    "result": json.dumps(result) if result is not None else None,
                    "error_message": error_message,
                    "error_details": json.dumps(error_details) if error_details is not None else None,
                    "replay": 1 if replay else 0,
                },
            )
            .mappings()
            .first()
        )
        if row is not None:
            return _row(row)
        current = self._step(connection, project_id, step_name)
        raise InvalidTransitionError(
            project_id, step_name, current.status.value if current else None, target.value
        )

    def record_attempt_failure(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        error_message: str,
        error_details: Mapping[str, Any],
        final: bool,
        lease_seconds: float = 300.0,
    ) -> StepRow | None:
        """Record a failed attempt: ``running -> failed``, then ``failed -> pending`` unless final.

        A step still pending (the attempt failed before it could be claimed, e.g. with the
        database unreachable) is claimed first, so every failure passes through the state
        machine. Returns the row as left, or None when the project has no such step. A step
        that is done, or held by another live consumer, is left untouched and returned.
        """
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    text(
                        f"SELECT {_STEP_COLUMNS} FROM provisioning_steps "
                        "WHERE project_id = :p AND step_name = :s FOR UPDATE"
                    ),
                    {"p": project_id, "s": step_name},
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            current = _row(row)
            held_elsewhere = (
                current.status is S.RUNNING and current.lease_owner != owner and not current.lease_expired
            )
            if current.done or current.status is S.FAILED or held_elsewhere:
                return current
            if current.status is not S.RUNNING or current.lease_owner != owner:
                self.transition(
                    project_id,
                    step_name,
                    S.RUNNING,
                    owner=owner,
                    lease_seconds=lease_seconds,
                    connection=conn,
                )
            failed = self.transition(
                project_id,
                step_name,
                S.FAILED,
                error_message=error_message,
                error_details=error_details,
                connection=conn,
            )
            if final:
                return failed
            return self.transition(project_id, step_name, S.PENDING, connection=conn)
