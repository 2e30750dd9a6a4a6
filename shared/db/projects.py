"""The project records: registration (of a request, of its removal), the fence, readiness,
the tombstone, the purge's record and the restore, enforced in SQL.

Each method is one transaction of a few statements whose SQL is the rule: the rules of one
record read best together, which is why the module runs a little over 400 lines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from shared.db.common import (
    SET_CLAUSES,
    STEP_COLUMNS,
    S,
    db_now,
    insert_steps,
    read_project,
    read_step,
    to_row,
    unavailable_as_error,
)
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.records import (
    ProjectRecord,
    Registration,
    RestoreRefusedError,
    StepRow,
    request_hash,
    restore_refusal,
)
from shared.domain.steps import PURGE_STEP, REVERSE_STEP_NAMES, REVERSE_STEPS, STEPS

_REMOVAL_STEP_NAMES = (*REVERSE_STEP_NAMES, PURGE_STEP.name)
"""The rows a deprovisioning adds: the reverse chain's (positions 8-14), then the purge's (15)."""

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
"""How long a deleted project's archive is kept, restorable, before it is purged."""


class ProjectStore:
    """The projects' records over one engine; ``retention_seconds`` how long a deleted project
    stays restorable. It is also the step handlers' ledger (readiness, tombstone, purge)."""

    def __init__(self, engine: Engine, *, retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        self.engine = engine
        self.retention_seconds = retention_seconds

    @unavailable_as_error
    def register_request(
        self,
        payload: ProvisionProjectPayload,
        correlation_id: uuid.UUID,
        *,
        requested_by: str | None = None,
        connection: Connection | None = None,
    ) -> tuple[Registration, ProjectRecord]:
        """Record a project and its seven pending steps, unless it is already known, with who
        asked (``requested_by``: None when only Kafka said; a known project keeps its own).

        Runs in ``connection``'s transaction when given (so the caller can add an outbox
        row atomically), else in its own.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.register_request(
                    payload, correlation_id, requested_by=requested_by, connection=conn
                )
        digest = request_hash(payload)
        inserted = connection.execute(
            text(
                """
                INSERT INTO projects (project_id, correlation_id, request, request_hash, requested_by)
                VALUES (:project_id, :correlation_id, CAST(:request AS jsonb), :hash, :requested_by)
                ON CONFLICT (project_id) DO UPDATE
                    SET correlation_id = EXCLUDED.correlation_id,
                        request = EXCLUDED.request,
                        request_hash = EXCLUDED.request_hash,
                        requested_by = EXCLUDED.requested_by
                    WHERE projects.request IS NULL AND projects.deprovision_requested_at IS NULL
                RETURNING project_id
                """
            ),
            {
                "project_id": payload.project_id,
                "correlation_id": correlation_id,
                "request": payload.model_dump_json(),
                "hash": digest,
                "requested_by": requested_by,
            },
        ).first()
        if inserted is not None:
            insert_steps(connection, payload.project_id)
            record = read_project(connection, payload.project_id)
            assert record is not None
            return Registration.NEW, record
        record = read_project(connection, payload.project_id, lock=True)
        assert record is not None
        if record.fenced:
            return Registration.REMOVED, record
        if record.request_hash == digest:
            return Registration.DUPLICATE, record
        return Registration.CONFLICT, record

    @unavailable_as_error
    def project(self, project_id: str) -> ProjectRecord | None:
        """The project's record, or None."""
        with self.engine.connect() as conn:
            return read_project(conn, project_id)

    @unavailable_as_error
    def requested_by(self, owner: str, project_ids: Iterable[str]) -> set[str]:
        """Those of ``project_ids`` that ``owner`` requested, in one query."""
        ids = sorted(set(project_ids))
        if not ids:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT project_id FROM projects WHERE project_id = ANY(:ids) AND requested_by = :owner"
                ),
                {"ids": ids, "owner": owner},
            )
            return {row[0] for row in rows}

    @unavailable_as_error
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

    @unavailable_as_error
    def register_deprovisioning(
        self,
        project_id: str,
        correlation_id: uuid.UUID,
        *,
        reason: str | None = None,
        create: bool = False,
        purge_now: bool = False,
        requested_by: str | None = None,
        only_requested_by: str | None = None,
        connection: Connection | None = None,
    ) -> tuple[Registration, ProjectRecord] | None:
        """Record that the project is to be removed, unless that is already recorded: set the
        fence, cancel its provisioning steps that are still ``pending`` and add the seven
        reverse steps and the purge step, in one transaction (``connection``'s when given).
        ``purge_now`` ends the retention window at once (asked again of a project already
        deleted, too), so the purge follows the reverse chain.

        ``NEW`` the first time, ``DUPLICATE`` afterwards (the record keeps the first
        request's id). None when the project is unknown, unless ``create`` records a bare one
        (for an orphan found by ``provision reconcile``: no request, only the name).

        ``requested_by`` is who asks (kept from the first request). With ``only_requested_by``
        a project requested by anyone else is unknown too (None, nothing written): an
        owner-scoped caller of the API removes only its own.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.register_deprovisioning(
                    project_id,
                    correlation_id,
                    reason=reason,
                    create=create,
                    purge_now=purge_now,
                    requested_by=requested_by,
                    only_requested_by=only_requested_by,
                    connection=conn,
                )
        if create:
            connection.execute(
                text("INSERT INTO projects (project_id) VALUES (:p) ON CONFLICT DO NOTHING"),
                {"p": project_id},
            )
        # Locked first: a request registering the project concurrently is either committed
        # (and fenced below) or not yet visible (and the project is unknown): never seen
        # unfenced after the fence was missed.
        locked = read_project(connection, project_id, lock=True)
        if locked is None:
            return None
        if only_requested_by is not None and locked.requested_by != only_requested_by:
            return None
        fenced = connection.execute(
            text(
                """
                UPDATE projects
                SET deprovision_correlation_id = :correlation_id,
                    deprovision_requested_at = now(), deprovision_reason = :reason,
                    deprovision_requested_by = :requested_by
                WHERE project_id = :p AND deprovision_correlation_id IS NULL
                RETURNING project_id
                """
            ),
            {
                "p": project_id,
                "correlation_id": correlation_id,
                "reason": reason,
                "requested_by": requested_by,
            },
        ).first()
        if fenced is not None:
            connection.execute(
                text(
                    f"""
                    UPDATE provisioning_steps
                    SET status = 'cancelled', updated_at = now(), {SET_CLAUSES[S.CANCELLED]}
                    WHERE project_id = :p AND position <= :last AND status = 'pending'
                    """
                ),
                {"p": project_id, "last": STEPS[-1].position},
            )
            insert_steps(connection, project_id, REVERSE_STEPS[0].position, _REMOVAL_STEP_NAMES)
        if purge_now:
            self._purge_now(connection, project_id)
        record = read_project(connection, project_id)
        if record is None:
            return None
        return (Registration.NEW if fenced is not None else Registration.DUPLICATE), record

    @unavailable_as_error
    def mark_deleted(self, project_id: str) -> datetime:
        """Set the project's tombstone (once) and the end of its retention window (once: the
        retention from now, unless a purge now was asked), and cancel whatever of its
        provisioning chain never finished (a step left ``running`` by a consumer that died, or
        ``pending`` after a retry): nothing of the old chain stays claimable. Returns when it
        was deleted."""
        with self.engine.begin() as conn:
            deleted_at = conn.execute(
                text(
                    "UPDATE projects SET deleted_at = coalesce(deleted_at, now()), "
                    "purge_after = coalesce(purge_after, now() + make_interval(secs => :retention)) "
                    "WHERE project_id = :p AND deprovision_requested_at IS NOT NULL RETURNING deleted_at"
                ),
                {"p": project_id, "retention": self.retention_seconds},
            ).scalar_one_or_none()
            if deleted_at is None:
                raise LookupError(f"project {project_id!r} has no deprovisioning request")
            conn.execute(
                text(
                    f"""
                    UPDATE provisioning_steps
                    SET status = 'cancelled', updated_at = now(), {SET_CLAUSES[S.CANCELLED]}
                    WHERE project_id = :p AND position <= :last AND status IN ('pending', 'running')
                    """
                ),
                {"p": project_id, "last": STEPS[-1].position},
            )
        assert isinstance(deleted_at, datetime)
        return deleted_at

    @unavailable_as_error
    def purge_now(self, project_id: str) -> ProjectRecord | None:
        """End the retention window of a project being (or already) deleted at once, so its
        purge is queued as soon as its reverse chain is done; None unless it is being removed
        and not purged yet. A purge already queued for a later time is queued again now."""
        with self.engine.begin() as conn:
            return self._purge_now(conn, project_id)

    def _purge_now(self, conn: Connection, project_id: str) -> ProjectRecord | None:
        moved = conn.execute(
            text(
                "UPDATE projects SET purge_after = least(coalesce(purge_after, now()), now()), "
                "purge_triggered_at = CASE WHEN purge_after > now() THEN NULL ELSE purge_triggered_at END "
                "WHERE project_id = :p AND deprovision_requested_at IS NOT NULL AND purged_at IS NULL "
                "RETURNING project_id"
            ),
            {"p": project_id},
        ).first()
        return read_project(conn, project_id) if moved is not None else None

    @unavailable_as_error
    def queue_due_purges(
        self,
        queue: Callable[[Connection, str, uuid.UUID], None],
        *,
        requeue_after_seconds: float,
        limit: int = 100,
    ) -> list[str]:
        """The deleted projects whose retention window has passed and whose purge is pending,
        not yet queued (or queued ``requeue_after_seconds`` ago with the purge still pending:
        its trigger was lost), each handed to ``queue`` (which writes the trigger to the outbox)
        and marked queued, in one transaction. Concurrent callers skip each other's rows."""
        with self.engine.begin() as conn:
            due = conn.execute(
                text(
                    """
                    SELECT p.project_id, p.deprovision_correlation_id FROM projects AS p
                    JOIN provisioning_steps AS s ON s.project_id = p.project_id AND s.step_name = :purge
                    WHERE p.deleted_at IS NOT NULL AND p.purged_at IS NULL AND p.purge_after <= now()
                      AND s.status = 'pending'
                      AND (p.purge_triggered_at IS NULL
                           OR p.purge_triggered_at < now() - make_interval(secs => :requeue))
                    ORDER BY p.purge_after LIMIT :limit
                    FOR UPDATE OF p SKIP LOCKED
                    """
                ),
                {"purge": PURGE_STEP.name, "requeue": requeue_after_seconds, "limit": limit},
            ).all()
            for project_id, correlation_id in due:
                queue(conn, str(project_id), correlation_id)
            if due:
                conn.execute(
                    text("UPDATE projects SET purge_triggered_at = now() WHERE project_id = ANY(:ids)"),
                    {"ids": [str(row[0]) for row in due]},
                )
        return [str(row[0]) for row in due]

    @unavailable_as_error
    def schedule_repair(
        self, project_id: str, step_names: Sequence[str], *, note: str, connection: Connection
    ) -> list[StepRow]:
        """Send done provisioning steps of a live project back to ``pending`` so that they run
        again (``success -> pending``, the one way a done step moves: a repair, when the work it
        recorded is missing), in ``connection``'s transaction, with a fresh attempt budget and
        ``note`` as the reason shown. A project being deprovisioned, or one without a request,
        is never touched; a step not ``success`` (already pending again: a repair under way) is
        left as it is. The rows moved, in step order (none: nothing to re-drive)."""
        record = read_project(connection, project_id, lock=True)
        if record is None or record.fenced or record.request is None:
            return []
        rows = connection.execute(
            text(
                f"""
                UPDATE provisioning_steps
                SET status = 'pending', updated_at = now(), attempt = 0, lease_owner = NULL,
                    lease_expires_at = NULL, error_message = :note,
                    error_details = CAST(:details AS jsonb)
                WHERE project_id = :p AND step_name = ANY(:names) AND status = 'success'
                  AND position <= :last
                RETURNING {STEP_COLUMNS}
                """
            ),
            {
                "p": project_id,
                "names": list(step_names),
                "note": note,
                "details": json.dumps({"type": "REPAIR", "reason": note}),
                "last": STEPS[-1].position,
            },
        ).mappings()
        return sorted((to_row(r) for r in rows), key=lambda r: r.position)

    @unavailable_as_error
    def mark_purged(self, project_id: str) -> datetime:
        """Record that the project's archive is gone (once); LookupError unless it is deleted."""
        with self.engine.begin() as conn:
            purged_at = conn.execute(
                text(
                    "UPDATE projects SET purged_at = coalesce(purged_at, now()) "
                    "WHERE project_id = :p AND deleted_at IS NOT NULL RETURNING purged_at"
                ),
                {"p": project_id},
            ).scalar_one_or_none()
        if purged_at is None:
            raise LookupError(f"project {project_id!r} is not deleted")
        assert isinstance(purged_at, datetime)
        return purged_at

    @unavailable_as_error
    def restore(
        self, project_id: str, correlation_id: uuid.UUID, *, connection: Connection | None = None
    ) -> ProjectRecord:
        """Bring a deleted project back within its retention window, in one transaction
        (``connection``'s when given): its provisioning steps ``pending`` again under the new
        request id ``correlation_id`` (the registered request unchanged), its reverse and purge
        rows removed (their history stays in ``step_transitions``), its tombstone and fence
        lifted. The provisioning chain then runs again: the database step renames the archive
        back, and every step makes new credentials where the deletion revoked them.

        RestoreRefusedError, in one line, when the project cannot be restored: unknown, not
        deleted (live, or its reverse chain still running), an orphan with no request, purged,
        being purged, or past its window.
        """
        if connection is None:
            with self.engine.begin() as conn:
                return self.restore(project_id, correlation_id, connection=conn)
        record = read_project(connection, project_id, lock=True)
        purge = read_step(connection, project_id, PURGE_STEP.name)
        refusal = restore_refusal(project_id, record, purge, now=db_now(connection))
        if refusal is not None:
            raise RestoreRefusedError(refusal)
        connection.execute(
            text("DELETE FROM provisioning_steps WHERE project_id = :p AND position > :last"),
            {"p": project_id, "last": STEPS[-1].position},
        )
        connection.execute(
            text(
                """
                UPDATE provisioning_steps
                SET status = 'pending', updated_at = now(), started_at = NULL, completed_at = NULL,
                    error_message = NULL, error_details = NULL, attempt = 0, replay_count = 0,
                    lease_owner = NULL, lease_expires_at = NULL, result = NULL
                WHERE project_id = :p AND position <= :last
                """
            ),
            {"p": project_id, "last": STEPS[-1].position},
        )
        connection.execute(
            text(
                """
                UPDATE projects
                SET correlation_id = :c, deprovision_correlation_id = NULL, deprovision_requested_at = NULL,
                    deprovision_reason = NULL, deprovision_requested_by = NULL, deleted_at = NULL,
                    purge_after = NULL, purge_triggered_at = NULL, restored_at = now(),
                    restore_count = restore_count + 1
                WHERE project_id = :p
                """
            ),
            {"p": project_id, "c": correlation_id},
        )
        restored = read_project(connection, project_id)
        assert restored is not None
        return restored
