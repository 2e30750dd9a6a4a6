"""The step table's state machine, enforced in SQL: the store the step flow runs on
(:class:`shared.domain.ports.StepStore`).

Every transition is one compare-and-set ``UPDATE ... WHERE status = ANY(:from)``: two
consumers racing on a step cannot both win, and nothing is decided on a stale read.
Over 400 lines: the claim's statement and the transitions' are one state machine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, text

from shared.db.common import (
    SET_CLAUSES,
    STEP_COLUMNS,
    S,
    insert_steps,
    read_snapshot,
    read_step,
    read_steps,
    step_columns,
    to_row,
    unavailable_as_error,
)
from shared.db.placement import Placements
from shared.db.projects import ProjectStore
from shared.domain.errors import InvalidTransitionError
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.records import ALLOWED_TRANSITIONS, Claim, ProjectRecord, Registration, Snapshot, StepRow
from shared.domain.steps import PLACING_STEP, Chain, StepStatus, chain_start, step_by_name

# Fragments of the claim statement (``s`` the step row, ``p`` its project).
_CLAIMABLE = (
    "(s.status = 'pending' OR (s.status = 'running' "
    "AND (s.lease_expires_at < now() OR s.lease_owner = :owner)))"
)
_EARLIER_DONE = (
    "NOT EXISTS (SELECT 1 FROM provisioning_steps AS e WHERE e.project_id = s.project_id "
    "AND e.position >= :first_position AND e.position < s.position "
    "AND e.status NOT IN ('success', 'skipped'))"
)
_SKIPS = (
    "(s.status = 'pending' AND CAST(:skip_service AS text) IS NOT NULL "
    "AND p.request -> 'services' ->> CAST(:skip_service AS text) = 'false')"
)
# A provisioning step: the project is registered under this request and not fenced by a
# deprovisioning. A reverse step: the deprovisioning is registered under this request, and its
# service's provisioning step is not running under a live lease (it may still be creating what
# this step would remove: the reverse step waits for it to end, then undoes it).
_CHAIN_CONDITION = {
    Chain.PROVISIONING: (
        "p.correlation_id = :correlation_id AND p.request IS NOT NULL AND p.deprovision_requested_at IS NULL"
    ),
    Chain.DEPROVISIONING: (
        "p.deprovision_correlation_id = :correlation_id AND NOT EXISTS ("
        "SELECT 1 FROM provisioning_steps AS f WHERE f.project_id = s.project_id "
        "AND f.step_name = :counterpart AND f.status = 'running' AND f.lease_expires_at >= now())"
    ),
    # The purge: the project is deleted under this deprovisioning, not purged, and its
    # retention window has passed (the record decides, whatever the trigger says).
    Chain.PURGE: (
        "p.deprovision_correlation_id = :correlation_id AND p.deleted_at IS NOT NULL "
        "AND p.purged_at IS NULL AND p.purge_after <= now()"
    ),
}


def _claim_sql(chain: Chain) -> str:
    return f"""
WITH claimed AS (
    UPDATE provisioning_steps AS s
    SET status = CASE WHEN {_SKIPS} THEN 'skipped' ELSE 'running' END,
        updated_at = now(),
        started_at = CASE WHEN {_SKIPS} THEN coalesce(s.started_at, now()) ELSE now() END,
        completed_at = CASE WHEN {_SKIPS} THEN now() END,
        result = CASE WHEN {_SKIPS} THEN CAST(:skip_result AS jsonb) ELSE s.result END,
        attempt = s.attempt
            + CASE WHEN {_SKIPS} OR (s.status = 'running' AND s.lease_owner = :owner) THEN 0 ELSE 1 END,
        retry_count = s.retry_count
            + CASE WHEN s.status = 'running' AND s.lease_owner IS DISTINCT FROM :owner THEN 1 ELSE 0 END,
        lease_owner = CASE WHEN {_SKIPS} THEN NULL ELSE CAST(:owner AS text) END,
        lease_expires_at = CASE WHEN {_SKIPS} THEN NULL
                                ELSE now() + make_interval(secs => :lease_seconds) END
    FROM projects AS p
    WHERE s.project_id = :p AND s.step_name = :s AND p.project_id = s.project_id
      AND {_CHAIN_CONDITION[chain]}
      AND {_CLAIMABLE} AND {_EARLIER_DONE}
    RETURNING {step_columns("s")}, coalesce(p.request, '{{}}'::jsonb) AS project_request
)
SELECT claimed.*,
       (SELECT coalesce(jsonb_agg(e.result ORDER BY e.position), '[]'::jsonb)
        FROM provisioning_steps AS e
        WHERE e.project_id = claimed.project_id AND e.position >= :first_position
          AND e.position < claimed.position AND e.result IS NOT NULL) AS earlier_results,
       (SELECT t.cluster FROM tenant_placements AS t WHERE t.project_id = claimed.project_id) AS placement
FROM claimed
"""


# Placement: the least filled cluster of the region with room (fill = live tenants / capacity,
# ties in map order). Placements of one region are serialised by an advisory lock held to the
# end of the claim's transaction, so two claims never both take a cluster's last slot. A
_CLAIM = {chain: _claim_sql(chain) for chain in Chain}


class StepRepository:
    """The steps of the projects over one engine: claims, transitions, leases. The chain's
    first step registers its request through ``projects``; the database step's claim places
    the project through ``placements`` (both made over the same engine when not given)."""

    def __init__(
        self,
        engine: Engine,
        *,
        projects: ProjectStore | None = None,
        placements: Placements | None = None,
    ) -> None:
        self.engine = engine
        self.projects = projects or ProjectStore(engine)
        self.placements = placements or Placements(engine)

    def register_request(
        self, payload: ProvisionProjectPayload, correlation_id: uuid.UUID
    ) -> tuple[Registration, ProjectRecord]:
        """The provisioning chain's first step registers its request
        (:meth:`ProjectStore.register_request`)."""
        return self.projects.register_request(payload, correlation_id)

    def register_deprovisioning(
        self, project_id: str, correlation_id: uuid.UUID, *, reason: str | None = None
    ) -> tuple[Registration, ProjectRecord] | None:
        """The reverse chain's first step registers the removal
        (:meth:`ProjectStore.register_deprovisioning`)."""
        return self.projects.register_deprovisioning(project_id, correlation_id, reason=reason)

    @unavailable_as_error
    def initialize(self, project_id: str) -> list[StepRow]:
        """Seven pending rows in the seed's order, creating a bare project record if needed.

        Idempotent: rows that exist are left as they are.
        """
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO projects (project_id) VALUES (:p) ON CONFLICT DO NOTHING"),
                {"p": project_id},
            )
            insert_steps(conn, project_id)
        return self.steps(project_id)

    @unavailable_as_error
    def steps(self, project_id: str) -> list[StepRow]:
        """The project's steps in step order (empty if it has none)."""
        with self.engine.connect() as conn:
            return read_steps(conn, project_id)

    @unavailable_as_error
    def step(self, project_id: str, step_name: str) -> StepRow | None:
        """One step's row, or None."""
        with self.engine.connect() as conn:
            return read_step(conn, project_id, step_name)

    @unavailable_as_error
    def claim(
        self,
        project_id: str,
        step_name: str,
        *,
        correlation_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        skip_service: str | None = None,
        skip_result: Mapping[str, Any] | None = None,
    ) -> Claim | None:
        """Claim a step for the request ``correlation_id`` in one statement, if the record
        allows it: the project is registered under that request (its provisioning request,
        not fenced by a deprovisioning; or, for a reverse step, its deprovisioning request,
        with the service's provisioning step not running under a live lease), every earlier
        step of the chain is ``success`` or ``skipped``, and the step is ``pending`` (or
        ``running`` under an expired lease, or our own). The step goes ``running``, or
        ``skipped`` when ``skip_service`` is turned off in the registered request.

        Returns the row with the registered request and the earlier steps' stored results,
        or None when the record refuses (read a :meth:`snapshot` to learn why). The
        predecessor check and the reads ride on the claim: no extra round trip.
        """
        step = step_by_name(step_name)
        first = chain_start(step.chain)
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    text(_CLAIM[step.chain]),
                    {
                        "p": project_id,
                        "s": step_name,
                        "first_position": first.position,
                        "counterpart": step.counterpart.name,
                        "correlation_id": correlation_id,
                        "owner": owner,
                        "lease_seconds": lease_seconds,
                        "skip_service": skip_service,
                        "skip_result": json.dumps(skip_result or {}),
                    },
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            placement = row["placement"]
            if step is PLACING_STEP and row["status"] == S.RUNNING.value and placement is None:
                placement = self.placements.place(conn, project_id, row["project_request"].get("region"))
        return Claim(
            to_row(row), dict(row["project_request"]), list(row["earlier_results"]), placement=placement
        )

    def mark_redriven(self, project_id: str, step_name: str, attempt: int, *, connection: Connection) -> bool:
        """Record, in ``connection``'s transaction, that a stranded step's input is being sent
        again: its change time now (so it is not stranded while the message travels) and one
        more replay (the loop guard counts it). False when the step moved meanwhile (no longer
        ``pending`` at ``attempt``): then nothing is to be sent."""
        moved = connection.execute(
            text(
                "UPDATE provisioning_steps SET updated_at = now(), replay_count = replay_count + 1 "
                "WHERE project_id = :p AND step_name = :s AND status = 'pending' AND attempt = :a "
                "RETURNING 1"
            ),
            {"p": project_id, "s": step_name, "a": attempt},
        ).first()
        return moved is not None

    @unavailable_as_error
    def snapshot(self, project_id: str, *, connection: Connection | None = None) -> Snapshot:
        """The project's record and all its step rows, read in one transaction
        (``connection``'s when given)."""
        if connection is None:
            with self.engine.begin() as conn:
                return read_snapshot(conn, project_id)
        return read_snapshot(connection, project_id)

    @unavailable_as_error
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
                SET status = :to, updated_at = now(), {SET_CLAUSES[target]}
                WHERE project_id = :p AND step_name = :s AND {condition}
                RETURNING {STEP_COLUMNS}
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
            return to_row(row)
        current = read_step(connection, project_id, step_name)
        raise InvalidTransitionError(
            project_id, step_name, current.status.value if current else None, target.value
        )

    @unavailable_as_error
    def renew_lease(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        lease_seconds: float,
        cancel_if_fenced: bool = True,
    ) -> bool:
        """Extend ``owner``'s live lease on a running step: True when it still holds the step.
        False when the lease ran out (the step may be another's, or its reverse step may have
        gone ahead). Before the work (``cancel_if_fenced``), a provisioning step of a project
        being deprovisioned is not renewed either but recorded ``cancelled``, so it never acts
        and its reverse step need not wait; during the work the lease is kept, so the reverse
        step waits for the work to end and then undoes it."""
        forward = cancel_if_fenced and step_by_name(step_name).chain is Chain.PROVISIONING
        params = {"p": project_id, "s": step_name, "owner": owner, "lease_seconds": lease_seconds}
        ours = "s.status = 'running' AND s.lease_owner = :owner AND s.project_id = :p AND s.step_name = :s"
        with self.engine.begin() as conn:
            if forward:
                conn.execute(
                    text(
                        f"""
                        UPDATE provisioning_steps AS s
                        SET status = 'cancelled', updated_at = now(), {SET_CLAUSES[S.CANCELLED]}
                        FROM projects AS p
                        WHERE {ours} AND p.project_id = s.project_id
                          AND p.deprovision_requested_at IS NOT NULL
                        """
                    ),
                    params,
                )
            renewed = conn.execute(
                text(
                    f"""
                    UPDATE provisioning_steps AS s
                    SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
                    WHERE {ours} AND s.lease_expires_at >= now()
                    RETURNING s.id
                    """
                ),
                params,
            ).first()
        return renewed is not None

    @unavailable_as_error
    def record_attempt_failure(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        error_message: str,
        error_details: Mapping[str, Any],
        final: bool,
    ) -> StepRow | None:
        """Record a failed attempt of a step ``owner`` holds: ``running -> failed``, then
        ``failed -> pending`` unless final, in one transaction.

        None when ``owner`` no longer holds the step (its lease was taken over, or the step
        moved on): the failure is superseded and nothing is written.
        """
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    text(
                        f"""
                        UPDATE provisioning_steps
                        SET status = 'failed', updated_at = now(), {SET_CLAUSES[S.FAILED]}
                        WHERE project_id = :p AND step_name = :s AND status = 'running'
                          AND lease_owner = :owner
                        RETURNING {STEP_COLUMNS}
                        """
                    ),
                    {
                        "p": project_id,
                        "s": step_name,
                        "owner": owner,
                        "error_message": error_message,
                        "error_details": json.dumps(error_details),
                    },
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            if final:
                return to_row(row)
            return self.transition(project_id, step_name, S.PENDING, connection=conn)
